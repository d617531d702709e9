"""Connecting to PostgreSQL: the embedded server or `DATABASE_URL`, a psycopg 3 pool with pgvector types.

Every caller gets the same one-line error when the server cannot be reached, with the password
removed from the address, so a down database never shows up as a stack trace or leaks a secret.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool, PoolTimeout, TooManyRequests

from bot.config import Settings
from bot.db import server

log = logging.getLogger(__name__)


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL cannot be reached or refused the connection."""


# What a call sees when the server goes away: no pooled connection within the timeout, or a connection that
# broke mid-query (OperationalError covers "server closed the connection" and "connection refused").
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    DatabaseUnavailable,
    PoolTimeout,
    TooManyRequests,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)

# Seconds the pool keeps retrying one lost connection before giving it up; the next request then starts a fresh
# attempt at once. psycopg_pool's default (300 s, doubling delays) would leave the app up to a minute late in
# noticing that the server is back.
RECONNECT_TIMEOUT_S = 5.0


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` means "the database is not there right now" rather than a bug or bad input."""
    return isinstance(exc, UNAVAILABLE_ERRORS)


def redact(url: str) -> str:
    """The URL with any password replaced, safe for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable database URL>"
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def describe_failure(url: str, exc: BaseException) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"cannot reach PostgreSQL at {redact(url)}: {reason}"


def resolve_url(settings: Settings) -> str:
    """`DATABASE_URL` when set, else the embedded server (started if needed)."""
    if settings.database_url:
        return settings.database_url
    return server.start(settings.pgdata_dir, shared_buffers=settings.embedded_shared_buffers)


def connect(url: str, timeout_s: float = 5.0, **kwargs) -> psycopg.Connection:
    """One connection, with the clear error on failure."""
    try:
        return psycopg.connect(url, connect_timeout=max(1, int(timeout_s)), **kwargs)
    except psycopg.Error as exc:
        raise DatabaseUnavailable(describe_failure(url, exc)) from None


def _configure(conn: psycopg.Connection) -> None:
    register_vector(conn)
    conn.commit()


@dataclass
class Database:
    """The connection pool plus the address it came from."""

    url: str
    pool: ConnectionPool

    def close(self) -> None:
        self.pool.close()

    def connection(self, timeout_s: float | None = None):
        """A pooled connection as a context manager (commits on success, rolls back on error).

        A pool timeout surfaces as `PoolTimeout` when the context is entered (callers catch it with the errors in
        `UNAVAILABLE_ERRORS`); nothing can fail here, before that.
        """
        return self.pool.connection(timeout=timeout_s)


def open_database(settings: Settings, *, migrate: bool = True) -> Database:
    """Resolve the server, bring the schema up to date, and open a pool on it."""
    from bot.db.migrations import migrate as run_migrations

    url = resolve_url(settings)
    if migrate:
        with connect(url, settings.connect_timeout_s) as conn:
            run_migrations(conn, embedding_dim=settings.embedding_dim)
    # `check` pings each connection as it leaves the pool, so one broken by a database restart is replaced
    # instead of failing the request; `timeout` bounds how long a request waits for a connection while the
    # server is down (the default 30 s would hang every turn).
    pool = ConnectionPool(
        url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        kwargs={"connect_timeout": max(2, int(settings.connect_timeout_s))},
        configure=_configure,
        check=ConnectionPool.check_connection,
        timeout=settings.connect_timeout_s,
        reconnect_timeout=RECONNECT_TIMEOUT_S,
        open=False,
        name="ragtune",
    )
    try:
        pool.open(wait=settings.pool_min_size > 0, timeout=settings.connect_timeout_s)
    except PoolTimeout as exc:
        pool.close()
        raise DatabaseUnavailable(describe_failure(url, exc)) from None
    log.info("connected to %s", redact(url))
    return Database(url=url, pool=pool)
