"""The knowledge faces LangChain code sees, on the real PostgreSQL and the real MiniLM embedder: LangChain's own
standard suites (Embeddings, VectorStore, Retriever) plus what they do not check: the vector store writes the same
tables as ingest (BM25 included), filters and scores, and one form for a source's path."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_tests.integration_tests import (
    EmbeddingsIntegrationTests,
    RetrieversIntegrationTests,
    VectorStoreIntegrationTests,
)
from langchain_tests.unit_tests import EmbeddingsUnitTests

from knowledge.embedding import get_embedder
from knowledge.langchain_faces import KnowledgeEmbeddings, KnowledgeVectorStore
from knowledge.retriever import KnowledgeRetriever
from knowledge.store import KnowledgeStore, source_name

HELPDESK = [
    "The helpdesk opens at nine in the morning on weekdays.",
    "On Saturdays the helpdesk opens at ten and closes at noon.",
    "The helpdesk is closed on public holidays.",
    "Call the helpdesk on extension 4411 when the office network is down.",
    "Lunch in the canteen is served from noon until two.",
]


@pytest.fixture(scope="module")
def store(db) -> KnowledgeStore:
    return KnowledgeStore(db.pool, get_embedder())


def _collection(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _bm25_chunks(store: KnowledgeStore, collection: str) -> int:
    with store.pool.connection() as conn:
        row = conn.execute("SELECT n_chunks FROM bm25_collection_stats WHERE collection = %s", (collection,)).fetchone()
    return 0 if row is None else int(row[0])


# ---------------------------------------------------------------- LangChain's standard suites


class TestEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[KnowledgeEmbeddings]:
        return KnowledgeEmbeddings


class TestEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[KnowledgeEmbeddings]:
        return KnowledgeEmbeddings


class TestVectorStoreStandard(VectorStoreIntegrationTests):
    """Every test gets an empty collection of the real store (the suite's 6-number fake embeddings cannot go into
    the 384-wide vector column: the store embeds with its own model, as it must)."""

    @pytest.fixture()
    def vectorstore(self, store: KnowledgeStore) -> Iterator[KnowledgeVectorStore]:
        collection = _collection("lc-vs")
        try:
            yield KnowledgeVectorStore(store, collection)
        finally:
            store.delete_collection(collection)


class TestRetrieverStandard(RetrieversIntegrationTests):
    """A small collection ingested once for the class: the suite builds retrievers from constructor params."""

    params: dict[str, Any] = {}

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _corpus(cls, store: KnowledgeStore) -> Iterator[None]:
        collection = _collection("lc-ret")
        KnowledgeVectorStore(store, collection).add_texts(HELPDESK)
        cls.params = {"store": store, "collection": collection}
        yield
        store.delete_collection(collection)

    @property
    def retriever_constructor(self) -> type[KnowledgeRetriever]:
        return KnowledgeRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def retriever_query_example(self) -> str:
        return "When does the helpdesk open?"


# ---------------------------------------------------------------- what the suites leave out


def test_texts_go_through_the_same_tables_as_ingest(store: KnowledgeStore) -> None:
    collection = _collection("lc-tables")
    vectorstore = KnowledgeVectorStore(store, collection)
    try:
        ids = vectorstore.add_texts(HELPDESK, [{"n": i} for i in range(len(HELPDESK))])
        assert _bm25_chunks(store, collection) == len(HELPDESK)  # the BM25 triggers counted them
        keyword = store.search("extension 4411", collection=collection, mode="keyword", k=1)
        assert [hit.source for hit in keyword] == [ids[3]]  # the id is the document's source
        (listed,) = [c for c in store.list_collections() if c.name == collection]
        assert (listed.documents, listed.chunks) == (len(HELPDESK), len(HELPDESK))
        vectorstore.add_texts(["The helpdesk now opens at eight."], ids=[ids[0]])  # replace by id
        assert _bm25_chunks(store, collection) == len(HELPDESK)
        assert vectorstore.get_by_ids([ids[0]])[0].page_content == "The helpdesk now opens at eight."
        assert vectorstore.get_by_ids([ids[0]])[0].metadata == {}  # the new version's metadata, not the old
        vectorstore.delete(ids[:2])
        assert _bm25_chunks(store, collection) == len(HELPDESK) - 2
        vectorstore.delete()  # no ids: the whole collection's documents
        assert _bm25_chunks(store, collection) == 0 and vectorstore.similarity_search("helpdesk") == []
        assert collection in {c.name for c in store.list_collections()}
    finally:
        store.delete_collection(collection)


def test_scores_filters_modes_and_retriever(store: KnowledgeStore) -> None:
    collection = _collection("lc-search")
    vectorstore = KnowledgeVectorStore(store, collection)
    try:
        vectorstore.add_texts(HELPDESK, [{"day": "weekday"}, {"day": "saturday"}, {}, {}, {}])
        scored = vectorstore.similarity_search_with_score("When does the helpdesk open on Saturday?", k=5)
        assert scored[0][0].page_content == HELPDESK[1]
        scores = [score for _, score in scored]
        assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
        relevance = vectorstore.similarity_search_with_relevance_scores("When does the helpdesk open on Saturday?")
        assert [r for _, r in relevance] == scores[: len(relevance)]  # scores already are relevances
        filtered = vectorstore.similarity_search("When does the helpdesk open?", k=5, filter={"day": "weekday"})
        assert [d.page_content for d in filtered] == [HELPDESK[0]]
        keyword = vectorstore.similarity_search("canteen", k=1, mode="keyword")
        assert [d.page_content for d in keyword] == [HELPDESK[4]]
        vector = vectorstore.embeddings.embed_query("lunch in the canteen")
        assert vectorstore.similarity_search_by_vector(vector, k=1)[0].page_content == HELPDESK[4]
        retriever = vectorstore.as_retriever(search_kwargs={"k": 2})
        assert len(retriever.invoke("helpdesk hours")) == 2
        with pytest.raises(TypeError, match="unknown arguments"):
            vectorstore.similarity_search("helpdesk", top=3)
        with pytest.raises(NotImplementedError):  # declared unsupported: no stored-vector MMR
            vectorstore.max_marginal_relevance_search("helpdesk")
    finally:
        store.delete_collection(collection)


def test_from_texts_and_refusals(db, store: KnowledgeStore) -> None:
    collection = _collection("lc-from")
    try:
        embeddings = KnowledgeEmbeddings(store.embedder)
        built = KnowledgeVectorStore.from_texts(
            ["alpha text", "alpha text"], embeddings, ids=["a", "b"], pool=db.pool, collection=collection
        )
        assert sorted(d.id for d in built.get_by_ids(["b", "a", "missing"])) == ["a", "b"]  # same text, two ids
        assert built.add_texts(["one", "two"], ids=["k", "k"]) == ["k", "k"]
        assert [d.page_content for d in built.get_by_ids(["k"])] == ["two"]  # an id given twice keeps the last
        with pytest.raises(TypeError, match="KnowledgeEmbeddings"):
            KnowledgeVectorStore.from_texts(["x"], object(), pool=db.pool, collection=collection)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="NUL"):
            built.add_texts(["bad\x00text"])
        with pytest.raises(ValueError, match="NUL"):
            built.add_texts(["fine"], [{"k": "bad\x00"}])
        assert sorted(d.id for d in built.get_by_ids(["a", "b", "k"])) == ["a", "b", "k"]  # refusals wrote nothing
    finally:
        store.delete_collection(collection)


def test_an_ingested_file_is_one_id_with_its_chunks(store: KnowledgeStore, tmp_path: Path) -> None:
    collection = _collection("lc-ingested")
    folder = tmp_path / "kb"
    (folder / "office").mkdir(parents=True)
    (folder / "office" / "hours.md").write_text(
        "# Hours\n\n" + "The helpdesk opens at nine. " * 40 + "\n\n## Holidays\n\n" + "Closed on holidays. " * 40
    )
    try:
        store.ingest([folder], collection, chunk_size=300, chunk_overlap=50)
        vectorstore = KnowledgeVectorStore(store, collection)
        chunks = vectorstore.get_by_ids(["office/hours.md"])
        assert len(chunks) > 1 and {d.id for d in chunks} == {"office/hours.md"}
        assert vectorstore.similarity_search("when is the helpdesk closed?", k=1)[0].id == "office/hours.md"
        vectorstore.delete(["office/hours.md"])
        assert store.list_documents(collection) == []
    finally:
        store.delete_collection(collection)


# ---------------------------------------------------------------- one form for a source's path


def test_source_name_is_relative_to_the_ingested_folder(tmp_path: Path) -> None:
    root = tmp_path / "kb"
    (root / "a" / "b").mkdir(parents=True)
    deep, top = root / "a" / "b" / "x.md", root / "y.txt"
    deep.write_text("x")
    top.write_text("y")
    assert source_name(deep, [root]) == "a/b/x.md"
    assert source_name(deep, [root / "a", root]) == "b/x.md"  # the first folder named that holds it
    assert source_name(top, [top]) == "y.txt"  # a file named directly: its name
    assert source_name(top, [root / "a"]) == "y.txt"


def test_legacy_absolute_sources_are_adopted_on_reingest(store: KnowledgeStore, tmp_path: Path) -> None:
    """A row stored under the file's absolute path (before sources were relative) is renamed, so the changed file
    replaces it instead of being stored twice; records keep their "#id" suffix."""
    collection = _collection("lc-legacy")
    folder = tmp_path / "kb"
    (folder / "sub").mkdir(parents=True)
    page, records = folder / "sub" / "page.md", folder / "rows.jsonl"
    page.write_text("# Page\n\nThe first version of the page.\n")
    records.write_text('{"_id": "r1", "text": "A record about quokkas."}\n')
    legacy = {str(p.resolve()): str(p.resolve()) for p in (page, records)}  # how ingest stored them before
    try:
        store.ingest([folder], collection, source_names=legacy)
        assert {d.source for d in store.list_documents(collection)} == {
            str(page.resolve()),
            f"{records.resolve()}#r1",
        }
        page.write_text("# Page\n\nThe second version of the page.\n")
        report = store.ingest([folder], collection)
        assert report.replaced == [str(page.resolve())] and report.added == []
        assert sorted(d.source for d in store.list_documents(collection)) == ["rows.jsonl#r1", "sub/page.md"]
        hits = KnowledgeRetriever(store=store, collection=collection, k=5).invoke("quokkas")
        assert "rows.jsonl#r1" in {d.metadata["source"] for d in hits}
    finally:
        store.delete_collection(collection)
