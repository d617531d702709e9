"""Bulk loads build the HNSW index once, after the rows are in, instead of row by row.

Inserting into an HNSW graph costs about 1.8 ms per 384-d row on a small CPU (5.8 of the 8.9 s it took to write
3,168 SciFact chunks), several times what building the graph over the same rows costs. So when one ingest brings at
least as many chunks as the table already holds (and at least `BULK_MIN_CHUNKS`), the index is dropped before its
writes and rebuilt after them with a large `maintenance_work_mem`. Every file still commits in its own transaction;
searches meanwhile stay correct, only exact (a sequential scan) instead of approximate. The bulk load holds a session
advisory lock until the index is back, so a concurrent ingest does not mistake the dropped index for damage; an
ingest killed in between releases the lock with its connection and leaves no index, so each ingest first recreates
a missing one when nobody holds the lock (`ensure_vector_index`).
"""

from __future__ import annotations

import logging
import re
import time
from types import TracebackType

import psycopg
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

INDEX_NAME = "chunks_embedding_hnsw_idx"
# As migration 0001 creates it; used only to repair an index a killed bulk load left dropped.
DEFAULT_DEFINITION = (
    f"CREATE INDEX {INDEX_NAME} ON chunks USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
)
BULK_MIN_CHUNKS = 2000
_LOCK_KEY = "ragtune:bulk-vector-index"


def maintenance_connection(pool: ConnectionPool, maintenance_work_mem: str = "1GB") -> psycopg.Connection:
    """A connection of its own for index builds: autocommit DDL, the given `maintenance_work_mem`, and no
    statement timeout (a managed server may impose one that a large build would hit)."""
    if not re.fullmatch(r"\d+(kB|MB|GB)", maintenance_work_mem):
        raise ValueError(f"maintenance_work_mem must look like 512MB or 1GB, not {maintenance_work_mem!r}")
    conn = psycopg.connect(pool.conninfo, autocommit=True, connect_timeout=10)
    try:
        conn.execute("SET statement_timeout = 0")
        conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (maintenance_work_mem,))
    except BaseException:
        conn.close()
        raise
    return conn


def _try_lock(conn: psycopg.Connection) -> bool:
    """The bulk-load lock, held by this session until its connection closes."""
    return conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (_LOCK_KEY,)).fetchone()[0]


def _definition(conn: psycopg.Connection) -> str | None:
    row = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname = %s", (INDEX_NAME,)
    ).fetchone()
    return row[0] if row else None


def _build(conn: psycopg.Connection, definition: str) -> None:
    started = time.perf_counter()
    conn.execute(definition.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1))
    log.info("built the vector index in %.1f s", time.perf_counter() - started)


def ensure_vector_index(pool: ConnectionPool, maintenance_work_mem: str = "1GB") -> None:
    """Recreate the HNSW index if an interrupted bulk load left it dropped (not one still running)."""
    with pool.connection() as conn:  # the usual case, index present: one catalog read on a pooled connection
        if _definition(conn) is not None:
            return
    with maintenance_connection(pool, maintenance_work_mem) as conn:
        if not _try_lock(conn):
            return  # a bulk load is writing; it rebuilds the index itself
        if _definition(conn) is None:
            log.warning("the vector index is missing (an interrupted bulk ingest?): rebuilding it")
            _build(conn, DEFAULT_DEFINITION)


class DeferredVectorIndex:
    """Drops the HNSW index for the rest of one ingest once it turns out to be a bulk load, and rebuilds it when
    the `with` block ends, however it ends (an error, Ctrl-C)."""

    def __init__(self, pool: ConnectionPool, maintenance_work_mem: str = "1GB") -> None:
        self.pool = pool
        self.maintenance_work_mem = maintenance_work_mem
        self.definition: str | None = None
        self._conn: psycopg.Connection | None = None
        self._rows_before: int | None = None

    def __enter__(self) -> DeferredVectorIndex:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.restore()

    @property
    def active(self) -> bool:
        return self.definition is not None

    def consider(self, incoming_chunks: int) -> None:
        """Defer the index when this ingest's chunks so far reach the table's size (and BULK_MIN_CHUNKS)."""
        if self.active or incoming_chunks < BULK_MIN_CHUNKS or incoming_chunks < self._table_rows():
            return
        conn = maintenance_connection(self.pool, self.maintenance_work_mem)
        try:
            definition = _definition(conn) if _try_lock(conn) else None
            if definition is not None:
                conn.execute("SET lock_timeout = '5s'")  # never queue readers behind the DROP for long
                conn.execute(f"DROP INDEX IF EXISTS {INDEX_NAME}")
                conn.execute("RESET lock_timeout")
        except psycopg.errors.LockNotAvailable:
            log.info("vector index busy; inserting into it row by row instead")
            definition = None
        except BaseException:
            conn.close()
            raise
        if definition is None:
            conn.close()  # also releases the lock, if taken
            return
        self.definition, self._conn = definition, conn
        log.info("bulk load of %d+ chunks: building the vector index after the writes", incoming_chunks)

    def _table_rows(self) -> int:
        """Rows in chunks when the ingest began (the first time it matters), from the planner's estimate."""
        if self._rows_before is None:
            with self.pool.connection() as conn:
                estimate = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = 'chunks'::regclass")
                rows = estimate.fetchone()[0]  # -1 (or 0 before PostgreSQL 14) until the table is first analysed
                self._rows_before = rows if rows > 0 else conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        return self._rows_before

    def restore(self) -> None:
        """Rebuild the index on the connection that holds the lock; closing it releases the lock."""
        if self.definition is None:
            return
        definition, conn = self.definition, self._conn
        self.definition, self._conn = None, None
        with conn:
            _build(conn, definition)
