"""The embedder as LangChain `Embeddings` and the knowledge store as a LangChain `VectorStore`.

Both are thin faces over the code the app itself runs (knowledge/embedding.py, knowledge/store.py), so a LangChain
chain reads and writes the same PostgreSQL tables, vectors and BM25 statistics as `ragtune ingest` and the chat.

In the vector store a LangChain id is a document's `source`: `add_texts` stores each text as it is (one chunk)
under its id, adding an id again replaces it, and `delete`/`get_by_ids` take ids. Files that `ragtune ingest`
chunked are searchable too; their hits carry the file's source as id, so hits from one file share it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from knowledge.embedding import DEFAULT_EMBEDDER, Backend, Embedder, Quantization, get_embedder
from knowledge.search_modes import SEARCH_MODES, SearchMode
from knowledge.store import KnowledgeStore, SearchHit, TextRecord


class KnowledgeEmbeddings(Embeddings):
    """ragtune's embedder as LangChain `Embeddings`: normalised vectors (cosine is a dot product), the very ones the
    store holds. The async methods are LangChain's, which run these in a worker thread."""

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        model: str = DEFAULT_EMBEDDER,
        device: str = "cpu",
        backend: Backend = "torch",
        quantize: Quantization = "none",
    ) -> None:
        """Wrap `embedder`, or the process's shared one for `model` (loading takes seconds, so it is shared)."""
        self.embedder = (
            embedder if embedder is not None else get_embedder(model, device, backend=backend, quantize=quantize)
        )

    @property
    def model(self) -> str:
        return self.embedder.name

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed_documents(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed_query(text).tolist()


class KnowledgeVectorStore(VectorStore):
    """One collection of a `KnowledgeStore` as a LangChain `VectorStore`.

    `mode` is how `similarity_search` ranks: "dense" (cosine over the HNSW index, LangChain's usual meaning) by
    default, or "hybrid"/"keyword" as the chat searches. Scores are cosine similarities in [0, 1] (keyword mode:
    BM25 over the best it could be), higher is better, so they are also the relevance scores.
    """

    def __init__(self, store: KnowledgeStore, collection: str = "default", *, mode: SearchMode = "dense") -> None:
        if mode not in SEARCH_MODES:
            raise ValueError(f"mode must be one of {', '.join(SEARCH_MODES)}, not {mode!r}")
        self.store = store
        self.collection = collection
        self.mode: SearchMode = mode

    @property
    def embeddings(self) -> KnowledgeEmbeddings:
        return KnowledgeEmbeddings(self.store.embedder)

    # --------------------------------------------------------------- writing
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Store each text whole under its id (a new UUID where none is given); an existing id is replaced."""
        texts = list(texts)
        if kwargs:
            raise TypeError(f"KnowledgeVectorStore.add_texts: unknown arguments {sorted(kwargs)}")
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(metadatas)} metadatas")
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(ids)} ids")
        keys = [str(i) if i is not None else str(uuid.uuid4()) for i in (ids or [None] * len(texts))]
        records = [
            TextRecord(key=key, text=text, metadata=dict(metadatas[n]) if metadatas else {})
            for n, (key, text) in enumerate(zip(keys, texts, strict=True))
        ]
        self.store.put_texts(self.collection, records)
        return keys

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete these ids (unknown ones are no error); no ids deletes every document of the collection."""
        if kwargs:
            raise TypeError(f"KnowledgeVectorStore.delete: unknown arguments {sorted(kwargs)}")
        self.store.delete_sources(self.collection, None if ids is None else [str(i) for i in ids])
        return True

    # --------------------------------------------------------------- reading
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents stored under these ids, in their order (an ingested file: one Document per chunk)."""
        chunks = self.store.texts_by_source(self.collection, [str(i) for i in ids])
        return [Document(page_content=c.text, metadata=c.metadata, id=c.source) for c in chunks]

    def similarity_search(self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any) -> list[Document]:
        return [document for document, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Top-k with cosine similarity; `filter` is the store's (source, title, page or metadata values)."""
        mode = kwargs.pop("mode", self.mode)
        if kwargs:
            raise TypeError(f"KnowledgeVectorStore search: unknown arguments {sorted(kwargs)}")
        hits = self.store.search(query, collection=self.collection, k=k, mode=mode, filters=filter)
        return [(_document(hit), hit.score) for hit in hits]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[Document]:
        """Top-k by cosine to a vector from this store's embedder (`embeddings.embed_query`)."""
        if kwargs:
            raise TypeError(f"KnowledgeVectorStore search: unknown arguments {sorted(kwargs)}")
        import numpy as np

        vector = np.asarray(embedding, dtype=np.float32)
        if vector.shape != (self.store.embedder.dim,):
            raise ValueError(f"embedding: expected {self.store.embedder.dim} numbers, got {vector.shape}")
        hits = self.store.search("", collection=self.collection, k=k, mode="dense", filters=filter, embedding=vector)
        return [_document(hit) for hit in hits]

    def _select_relevance_score_fn(self):
        """Scores already are relevances in [0, 1]."""
        return _identity

    # --------------------------------------------------------------- building
    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        store: KnowledgeStore | None = None,
        pool: Any = None,
        collection: str = "default",
        mode: SearchMode = "dense",
        **kwargs: Any,
    ) -> KnowledgeVectorStore:
        """A vector store on `store` (or a new `KnowledgeStore` on `pool`) holding these texts.

        `embedding` must be this store's embedder as `KnowledgeEmbeddings`: a collection holds one model's vectors.
        """
        if not isinstance(embedding, KnowledgeEmbeddings):
            raise TypeError("embedding: pass KnowledgeEmbeddings (the store embeds with its own model)")
        if store is None:
            if pool is None:
                raise TypeError("from_texts needs store= (a KnowledgeStore) or pool= (a psycopg ConnectionPool)")
            store = KnowledgeStore(pool, embedding.embedder)
        elif store.embedder.name != embedding.embedder.name:
            raise ValueError(
                f"embedding is {embedding.embedder.name!r} but the store embeds with {store.embedder.name!r}"
            )
        vectorstore = cls(store, collection, mode=mode)
        vectorstore.add_texts(texts, metadatas, ids=ids, **kwargs)
        return vectorstore


def _identity(score: float) -> float:
    return score


def _document(hit: SearchHit) -> Document:
    return Document(page_content=hit.text, metadata=dict(hit.metadata), id=hit.source)
