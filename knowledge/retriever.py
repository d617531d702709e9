"""The store as a LangChain retriever, so chains and agents can use it like any other."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from knowledge.search_modes import SearchMode


class KnowledgeRetriever(BaseRetriever):
    """Top-k chunks from a `KnowledgeStore`; each Document's metadata carries the `SearchHit` fields."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any
    collection: str | list[str] | None = None
    k: int = 5
    mode: SearchMode = "hybrid"
    filters: dict | None = None
    min_score: float = 0.0

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self.store.search(query, collection=self.collection, k=self.k, mode=self.mode, filters=self.filters)
        documents = []
        for hit in hits:
            if hit.score < self.min_score:
                continue
            metadata = asdict(hit)
            text = metadata.pop("text")
            documents.append(Document(page_content=text, metadata=metadata, id=str(hit.chunk_id)))
        return documents
