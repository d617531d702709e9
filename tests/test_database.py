"""The database layer against a real embedded PostgreSQL 18 + pgvector."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bot.db import server
from bot.db.connection import DatabaseUnavailable, connect, open_database, redact
from bot.db.migrations import SchemaMismatch, available, migrate

EXPECTED_TABLES = {"collections", "documents", "chunks", "sessions", "messages", "adapters", "schema_migrations"}


def test_vector_extension_is_recent(db):
    with db.connection() as conn:
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        server_version = int(conn.execute("SHOW server_version_num").fetchone()[0])
    assert tuple(int(part) for part in version.split(".")[:2]) >= (0, 8)
    assert server_version >= 170000


def test_migrations_are_idempotent(db, settings):
    with connect(db.url) as conn:
        assert migrate(conn, embedding_dim=settings.embedding_dim) == []
        assert migrate(conn, embedding_dim=settings.embedding_dim) == []
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions == [migration.version for migration in available()]


def test_schema_has_the_designed_tables_and_indexes(db):
    with db.connection() as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        indexes = {
            row[0]: row[1]
            for row in conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'chunks'")
        }
        embedding_type = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'chunks'::regclass AND attname = 'embedding'"
        ).fetchone()[0]
    assert tables >= EXPECTED_TABLES
    assert any("hnsw" in definition and "vector_cosine_ops" in definition for definition in indexes.values())
    assert any("gin" in definition and "tsv" in definition for definition in indexes.values())
    assert embedding_type == "vector(384)"


def test_pool_round_trips_vectors_and_constraints_hold(db):
    vector = np.arange(384, dtype=np.float32) / 384
    with db.connection() as conn, conn.transaction(force_rollback=True):
        conn.execute("INSERT INTO collections (name) VALUES ('roundtrip')")
        document_id = conn.execute(
            "INSERT INTO documents (collection, source, sha256) VALUES ('roundtrip', 'a.txt', %s) RETURNING id",
            ("0" * 64,),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO chunks (document_id, ordinal, text, embedding) VALUES (%s, 0, 'refund window', %s)",
            (document_id, vector),
        )
        stored, tsv = conn.execute(
            "SELECT embedding, tsv::text FROM chunks WHERE document_id = %s", (document_id,)
        ).fetchone()
        assert np.allclose(np.asarray(stored.to_numpy()), vector, atol=1e-6)
        assert "'refund'" in tsv
        with pytest.raises(Exception, match="duplicate key"), conn.transaction():
            conn.execute(
                "INSERT INTO documents (collection, source, sha256) VALUES ('roundtrip', 'b.txt', %s)", ("0" * 64,)
            )


def test_collection_names_are_checked_by_the_database(db):
    with db.connection() as conn, pytest.raises(Exception, match="check constraint"), conn.transaction():
        conn.execute("INSERT INTO collections (name) VALUES ($$x' OR 1=1 --$$)")


def test_changed_embedding_width_is_refused(db):
    with connect(db.url) as conn, pytest.raises(SchemaMismatch, match="384-dimensional"):
        migrate(conn, embedding_dim=768)


def test_bad_database_url_gives_one_clear_line(settings):
    bad = settings.model_copy(
        update={"database_url": "postgresql://ragtune:s3cret@127.0.0.1:9/nowhere", "connect_timeout_s": 2}
    )
    with pytest.raises(DatabaseUnavailable) as error:
        open_database(bad)
    message = str(error.value)
    assert message.startswith("cannot reach PostgreSQL at postgresql://ragtune:***@127.0.0.1:9/nowhere")
    assert "s3cret" not in message
    assert "\n" not in message


def test_cli_reports_an_unreachable_database(tmp_path: Path):
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": "postgresql://u:pw@127.0.0.1:9/x",
        "RAGTUNE_CONNECT_TIMEOUT_S": "2",
        "RAGTUNE_HOME": str(tmp_path),
    }
    result = subprocess.run([sys.executable, "-m", "bot", "db", "status"], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: cannot reach PostgreSQL at postgresql://u:***@127.0.0.1:9/x")
    assert "Traceback" not in result.stderr


def test_redact_keeps_urls_without_password():
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact("postgresql://u:p@h:5432/db") == "postgresql://u:***@h:5432/db"


def test_embedded_server_keeps_data_across_stop_and_start(state_root: Path):
    pgdata = state_root / "restart-pgdata"
    url = server.start(pgdata)
    try:
        with connect(url) as conn:
            conn.execute("CREATE TABLE kept (value text)")
            conn.execute("INSERT INTO kept VALUES ('survives')")
            conn.commit()
        assert server.stop(pgdata) is True
        assert server.status(pgdata).running is False
        url = server.start(pgdata)
        assert server.status(pgdata).running is True
        with connect(url) as conn:
            assert conn.execute("SELECT value FROM kept").fetchone()[0] == "survives"
    finally:
        server.stop(pgdata)
    assert server.stop(pgdata) is False


def test_embedded_server_applies_shared_buffers_once(state_root: Path):
    pgdata = state_root / "buffers-pgdata"
    try:
        url = server.start(pgdata, shared_buffers="160MB")
        with connect(url) as conn:
            assert conn.execute("SHOW shared_buffers").fetchone()[0] == "160MB"
        pid = server.status(pgdata).pid
        # Already running with that value: found, not restarted.
        assert server.start(pgdata, shared_buffers="160MB") == url
        assert server.status(pgdata).pid == pid
        # A server in use is never restarted under its clients: the new value waits for its next start.
        server.start(pgdata, shared_buffers="192MB")
        assert server.status(pgdata).pid == pid
        server.stop(pgdata)
        with connect(server.start(pgdata)) as conn:
            assert conn.execute("SHOW shared_buffers").fetchone()[0] == "192MB"
        with pytest.raises(ValueError, match="512MB"):
            server.start(pgdata, shared_buffers="lots")
        server.start(pgdata, shared_buffers="100000GB")  # more than the machine has: refused, not written
        server.stop(pgdata)
        with connect(server.start(pgdata)) as conn:
            assert conn.execute("SHOW shared_buffers").fetchone()[0] == "192MB"
        auto_conf = pgdata / "postgresql.auto.conf"
        server._forget_setting(pgdata, "shared_buffers")
        assert "shared_buffers" not in auto_conf.read_text() and "ALTER SYSTEM" in auto_conf.read_text()
    finally:
        server.stop(pgdata)
    assert 128 <= int(server.auto_shared_buffers().removesuffix("MB")) <= 2048


def test_wrong_shared_buffers_setting_is_refused_by_name(tmp_path: Path):
    from bot.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="EMBEDDED_SHARED_BUFFERS='2 gigs': use 'auto'"):
        load_settings(home=tmp_path, embedded_shared_buffers="2 gigs")


def test_chunk_vectors_are_stored_in_the_row(db):
    """Migration 0004: an exact scan must not fetch each vector from TOAST."""
    with db.pool.connection() as conn:
        storage = conn.execute(
            "SELECT attstorage FROM pg_attribute WHERE attrelid = 'chunks'::regclass AND attname = 'embedding'"
        ).fetchone()[0]
    assert storage == "m"
