"""BM25 keyword search and hybrid fusion in PostgreSQL (migration 0003): term weighting, the statistics the triggers
keep through ingest, replace and delete, the pruned and filtered paths agreeing, and query syntax."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest

from knowledge.embedding import get_embedder
from knowledge.store import KnowledgeStore

# "enzyme" is in every record, "quaternion" in one: a query with both must put the quaternion record first even
# though the enzyme-heavy records repeat their word many times.
RECORDS = [
    ("r1", "Enzymes", "The enzyme enzyme enzyme binds the enzyme substrate and the enzyme folds."),
    ("r2", "Kinetics", "Enzyme kinetics describe how fast an enzyme converts its substrate."),
    ("r3", "Rotation", "A quaternion describes the rotation; the enzyme is mentioned once."),
    ("r4", "Inhibitors", "An inhibitor slows the enzyme reaction in the cell."),
    ("r5", "Folding", "Protein folding shapes the enzyme active site."),
]


@pytest.fixture(scope="module")
def store(db) -> KnowledgeStore:
    return KnowledgeStore(db.pool, get_embedder())


@pytest.fixture()
def collection() -> str:
    return f"b-{uuid.uuid4().hex[:12]}"


def _write(path: Path, records: list[tuple[str, str, str]]) -> Path:
    path.write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in records))
    return path


def _stats(store: KnowledgeStore, collection: str) -> tuple[tuple[int, int] | None, dict[str, int], int]:
    """(n_chunks, total_len), df per lexeme, and postings count, as stored; and recomputed from chunks."""
    with store.pool.connection() as conn:
        sizes = conn.execute(
            "SELECT n_chunks, total_len FROM bm25_collection_stats WHERE collection = %s", (collection,)
        ).fetchone()
        df = dict(conn.execute("SELECT lexeme, df FROM bm25_term_stats WHERE collection = %s", (collection,)))
        postings = conn.execute("SELECT count(*) FROM bm25_postings WHERE collection = %s", (collection,)).fetchone()
    return (tuple(sizes) if sizes else None), df, postings[0]


def _recomputed(store: KnowledgeStore, collection: str) -> tuple[tuple[int, int], dict[str, int], int]:
    with store.pool.connection() as conn:
        rows = conn.execute(
            "SELECT c.id, t.lexeme, cardinality(t.positions) FROM chunks c JOIN documents d ON d.id = c.document_id,"
            " unnest(c.tsv) t WHERE d.collection = %s",
            (collection,),
        ).fetchall()
    df: dict[str, int] = {}
    for _, lexeme, _ in rows:
        df[lexeme] = df.get(lexeme, 0) + 1
    return (len({r[0] for r in rows}), sum(r[2] for r in rows)), df, len(rows)


def _ids(hits) -> list[str]:
    return [h.metadata["record_id"] for h in hits]


def test_rare_term_outranks_a_common_one(store: KnowledgeStore, collection: str, tmp_path: Path) -> None:
    store.ingest([_write(tmp_path / "r.jsonl", RECORDS)], collection)
    hits = store.search("enzyme quaternion", collection=collection, k=5, mode="keyword")
    assert _ids(hits)[0] == "r3"
    assert set(_ids(hits)) == {r[0] for r in RECORDS}  # OR semantics: every chunk with either term
    assert all(0.0 < h.score <= 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert [h.ranks["keyword"] for h in hits] == list(range(1, 6))
    # Among chunks with only the common term, more occurrences still rank higher (tf saturates, not vanishes).
    only_common = _ids(store.search("enzyme", collection=collection, k=5, mode="keyword"))
    assert only_common[0] == "r1"


def test_scores_match_hand_computed_bm25(store: KnowledgeStore, collection: str, tmp_path: Path) -> None:
    store.ingest([_write(tmp_path / "r.jsonl", RECORDS)], collection)
    (sizes, df, _), n = _stats(store, collection), len(RECORDS)
    avglen = sizes[1] / sizes[0]
    with store.pool.connection() as conn:
        (text, tsv_len, tf) = conn.execute(
            "SELECT c.text, (SELECT sum(cardinality(positions)) FROM unnest(c.tsv)),"
            " (SELECT cardinality(positions) FROM unnest(c.tsv) WHERE lexeme = 'quaternion')"
            " FROM chunks c JOIN documents d ON d.id = c.document_id"
            " WHERE d.collection = %s AND d.metadata->>'record_id' = 'r3'",
            (collection,),
        ).fetchone()
    idf = math.log(1 + (n - df["quaternion"] + 0.5) / (df["quaternion"] + 0.5))
    bm25 = idf * tf * 1.9 / (tf + 0.9 * (0.6 + 0.4 * tsv_len / avglen))
    (hit,) = store.search("quaternion", collection=collection, k=1, mode="keyword")
    assert hit.text == text
    assert hit.score == pytest.approx(bm25 / (1.9 * idf), rel=1e-4)


def test_stats_follow_ingest_replace_delete(store: KnowledgeStore, collection: str, tmp_path: Path) -> None:
    path = _write(tmp_path / "r.jsonl", RECORDS)
    store.ingest([path], collection)
    first = _stats(store, collection)
    assert first == _recomputed(store, collection)
    assert first[1]["enzym"] == 5 and first[1]["quaternion"] == 1
    store.ingest([path], collection)  # idempotent re-ingest: nothing counted twice
    assert _stats(store, collection) == first
    changed = [*RECORDS[:2], ("r3", "Rotation", "A versor describes the rotation."), *RECORDS[3:]]
    report = store.ingest([_write(path, changed)], collection)
    assert report.replaced and _stats(store, collection) == _recomputed(store, collection)
    assert "quaternion" not in _stats(store, collection)[1]
    assert store.search("quaternion", collection=collection, mode="keyword") == []
    assert _ids(store.search("versor", collection=collection, mode="keyword")) == ["r3"]
    docs = store.list_documents(collection)
    store.delete_document(docs[0].id)
    assert _stats(store, collection) == _recomputed(store, collection)
    store.delete_collection(collection)
    assert _stats(store, collection) == (None, {}, 0)


def test_pruned_path_matches_exact_scores(store: KnowledgeStore, collection: str, tmp_path: Path) -> None:
    store.ingest([_write(tmp_path / "r.jsonl", RECORDS)], collection)
    full = store.search("enzyme substrate fold", collection=collection, k=5, mode="keyword")
    # A metadata filter takes the exact path; scores must be the same numbers.
    filtered = store.search(
        "enzyme substrate fold", collection=collection, k=5, mode="keyword", filters={"record_id": "r2"}
    )
    assert _ids(filtered) == ["r2"]
    assert filtered[0].score == pytest.approx(next(h.score for h in full if h.metadata["record_id"] == "r2"))
    # With only one posting read per term, the best chunk of each term still comes back.
    shallow = KnowledgeStore(store.pool, store.embedder, bm25_depth=1)
    assert set(_ids(shallow.search("enzyme quaternion", collection=collection, k=5, mode="keyword"))) == {"r1", "r3"}


def test_query_syntax_and_empty_queries(store: KnowledgeStore, collection: str, tmp_path: Path) -> None:
    store.ingest([_write(tmp_path / "r.jsonl", RECORDS)], collection)
    assert "r3" not in _ids(store.search("enzyme -quaternion", collection=collection, k=5, mode="keyword"))
    assert set(_ids(store.search('"quaternion" OR inhibitor', collection=collection, k=5, mode="keyword"))) == {
        "r3",
        "r4",
    }
    for query in ("", "the and of", "'; DROP TABLE chunks; --"):
        assert store.search(query, collection=collection, mode="keyword") == []
        hybrid = store.search(query, collection=collection, k=2, mode="hybrid")
        assert len(hybrid) == 2  # dense still answers
    assert store.search("it's o'clock", collection=collection, mode="keyword") == []


def test_hybrid_keeps_cosine_scores_and_both_rankings(store: KnowledgeStore, collection: str, tmp_path: Path) -> None:
    store.ingest([_write(tmp_path / "r.jsonl", RECORDS)], collection)
    query = "quaternion rotation"
    hits = store.search(query, collection=collection, k=5, mode="hybrid")
    dense = {h.chunk_id: h.score for h in store.search(query, collection=collection, k=5, mode="dense")}
    assert _ids(hits)[0] == "r3"
    for hit in hits:  # the thresholdable score stays the chunk's cosine similarity
        assert hit.score == pytest.approx(dense[hit.chunk_id], abs=1e-5)
    assert [h.ranks["fused"] for h in hits] == sorted((h.ranks["fused"] for h in hits), reverse=True)
    rrf = KnowledgeStore(store.pool, store.embedder, fusion="rrf")
    assert _ids(rrf.search(query, collection=collection, k=5, mode="hybrid"))[0] == "r3"
    with pytest.raises(ValueError, match="fusion"):
        KnowledgeStore(store.pool, store.embedder, fusion="max")


def test_hnsw_settings_survive_a_failed_search(store: KnowledgeStore, collection: str, tmp_path: Path) -> None:
    """ef_search is set once per pooled connection; a search that fails rolls that SET back, and the store must
    then set it again rather than trust its memo. One pooled connection, so every search shares it."""
    from psycopg_pool import ConnectionPool

    from bot.db.connection import _configure
    from knowledge import store as store_module

    store.ingest([_write(tmp_path / "r.jsonl", RECORDS)], collection)
    with ConnectionPool(store.pool.conninfo, min_size=1, max_size=1, configure=_configure) as pool:
        first = KnowledgeStore(pool, store.embedder, ef_search=321)
        second = KnowledgeStore(pool, store.embedder, ef_search=222)
        assert first.search("enzyme", collection=collection, k=2, mode="dense")
        with pool.connection() as conn:
            assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == "321"
        with pytest.raises(Exception, match="dimensions"):  # sets 222, then fails: the rollback restores 321
            second.search("enzyme", collection=collection, k=2, mode="dense", embedding=[0.1, 0.2, 0.3])
        assert len(second.search("enzyme", collection=collection, k=2, mode="hybrid")) == 2
        with pool.connection() as conn:
            assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == "222"
            assert store_module._HNSW_SESSION[conn] == 222


def test_unprepared_store_sets_hnsw_only_for_its_transaction(
    store: KnowledgeStore, collection: str, tmp_path: Path
) -> None:
    """prepare=False is for transaction poolers: there a session SET would reach other clients, so none is made."""
    from psycopg_pool import ConnectionPool

    from bot.db.connection import _configure
    from knowledge import store as store_module

    store.ingest([_write(tmp_path / "r.jsonl", RECORDS)], collection)
    with ConnectionPool(store.pool.conninfo, min_size=1, max_size=1, configure=_configure) as pool:
        pooled = KnowledgeStore(pool, store.embedder, ef_search=333, prepare=False)
        assert len(pooled.search("enzyme", collection=collection, k=2, mode="hybrid")) == 2
        with pool.connection() as conn:
            assert conn.execute("SELECT current_setting('hnsw.ef_search', true)").fetchone()[0] != "333"
            assert conn not in store_module._HNSW_SESSION
