"""Versioned schema migrations, applied in order, each once, each in its own transaction.

Files are `NNNN_name.sql` beside this module. A concurrent second worker waits on an advisory
lock and then finds nothing to do, so running `migrate` twice (or from two processes) is safe.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

log = logging.getLogger(__name__)

_FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x72616774  # "ragt": one advisory lock for all ragtune migrations


class SchemaMismatch(RuntimeError):
    """The database was created for a different configuration (e.g. another embedding width)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """All migrations shipped with this version of ragtune, oldest first."""
    found = []
    for entry in resources.files(__package__).iterdir():
        match = _FILE_PATTERN.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda migration: migration.version)


def applied_versions(conn: psycopg.Connection) -> set[int]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return set()
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def migrate(conn: psycopg.Connection, *, embedding_dim: int) -> list[int]:
    """Apply what is missing; return the versions applied now (empty when up to date)."""
    applied_now: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = applied_versions(conn)
        for migration in available():
            if migration.version in done:
                continue
            log.info("applying migration %04d_%s", migration.version, migration.name)
            with conn.transaction():
                conn.execute(migration.sql.replace(":embedding_dim", str(int(embedding_dim))))
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            applied_now.append(migration.version)
        check_embedding_dim(conn, embedding_dim)
    return applied_now


def check_embedding_dim(conn: psycopg.Connection, embedding_dim: int) -> None:
    row = conn.execute("SELECT value FROM ragtune_meta WHERE key = 'embedding_dim'").fetchone()
    if row is not None and int(row[0]) != embedding_dim:
        raise SchemaMismatch(
            f"this database stores {row[0]}-dimensional embeddings but RAGTUNE_EMBEDDING_DIM is {embedding_dim}; "
            "use the embedding model the store was built with, or a new database"
        )
