"""Bulk ingest builds the HNSW index after the writes: on a fresh embedded server (so the table's size is known),
the index is gone while the files are written, comes back with the same definition, and is repaired after an
ingest that was interrupted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.db import server
from bot.db.connection import Database, open_database
from knowledge import bulk
from knowledge.embedding import get_embedder
from knowledge.store import KnowledgeStore

TOPICS = ["vaccines", "insulin", "kidneys", "sleep", "malaria", "asthma", "statins", "migraine"]


@pytest.fixture(scope="module")
def fresh_db(state_root: Path) -> Iterator[Database]:
    settings = load_settings(home=state_root / "bulk-home", embedded_shared_buffers="128MB")
    database = open_database(settings)
    yield database
    database.close()
    server.stop(settings.pgdata_dir)


@pytest.fixture()
def store(fresh_db: Database, monkeypatch) -> KnowledgeStore:
    monkeypatch.setattr(bulk, "BULK_MIN_CHUNKS", 8)
    return KnowledgeStore(fresh_db.pool, get_embedder())


def _records(path: Path, prefix: str, n: int) -> Path:
    rows = [
        {"_id": f"{prefix}{i}", "title": f"Note {i}", "text": f"A clinical note about {TOPICS[i % 8]} number {i}."}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _index(db: Database) -> str | None:
    with db.pool.connection() as conn:
        row = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (bulk.INDEX_NAME,)).fetchone()
    return row[0] if row else None


def test_bulk_ingest_writes_without_the_index_and_rebuilds_it(
    store: KnowledgeStore, fresh_db: Database, tmp_path: Path, monkeypatch, caplog
) -> None:
    definition = _index(fresh_db)
    assert definition and "hnsw" in definition
    seen_during_writes: list[str | None] = []
    write = store._write_file

    def spying_write(*args, **kwargs):
        seen_during_writes.append(_index(fresh_db))
        return write(*args, **kwargs)

    monkeypatch.setattr(store, "_write_file", spying_write)
    with caplog.at_level("INFO", logger="knowledge"):
        report = store.ingest([_records(tmp_path / "a.jsonl", "a", 24)], "bulk")
    assert report.chunks == 24 and not report.failed
    assert seen_during_writes == [None], "the index should be dropped while a bulk load writes"
    assert _index(fresh_db) == definition
    assert any("bulk load" in r.getMessage() for r in caplog.records)
    hit = store.search("insulin", collection="bulk", k=1, mode="dense")[0]
    assert "insulin" in hit.text

    # A small ingest into the now bigger table keeps the index and inserts row by row.
    seen_during_writes.clear()
    store.ingest([_records(tmp_path / "b.jsonl", "b", 10)], "bulk")
    assert seen_during_writes == [definition]


def test_interrupted_bulk_load_restores_the_index(
    store: KnowledgeStore, fresh_db: Database, tmp_path: Path, monkeypatch, caplog
) -> None:
    definition = _index(fresh_db)
    with fresh_db.pool.connection() as conn:
        before = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_write_file", interrupted)
    with caplog.at_level("INFO", logger="knowledge"), pytest.raises(KeyboardInterrupt):
        store.ingest([_records(tmp_path / "c.jsonl", "c", before + 8)], "bulk-stop")
    assert any("bulk load" in r.getMessage() for r in caplog.records), "the index should have been dropped"
    assert _index(fresh_db) == definition
    monkeypatch.undo()

    # A process killed mid-load never reaches its `finally`: the next ingest repairs the index first.
    with fresh_db.pool.connection() as conn:
        conn.execute(f"DROP INDEX {bulk.INDEX_NAME}")
    store.ingest([_records(tmp_path / "d.jsonl", "d", 2)], "bulk-repair")
    assert _index(fresh_db) == definition


def test_repair_leaves_a_running_bulk_load_alone(fresh_db: Database) -> None:
    """A second ingest starting while a bulk load has the index dropped must not rebuild it under the writes."""
    definition = _index(fresh_db)
    deferred = bulk.DeferredVectorIndex(fresh_db.pool)
    deferred.consider(10**9)
    try:
        assert deferred.active and _index(fresh_db) is None
        bulk.ensure_vector_index(fresh_db.pool)
        assert _index(fresh_db) is None
    finally:
        deferred.restore()
    assert _index(fresh_db) == definition
