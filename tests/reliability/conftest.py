"""Helpers for the fault and load tests: a private state dir (own embedded server) that reuses the cached model.

Fault tests stop and kill PostgreSQL, so they never touch the session-wide server of `tests/conftest.py`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import Settings, load_settings
from bot.db import server

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHED_MODELS = REPO_ROOT / "test-artifacts" / "llm-home" / "models"


def private_home(prefix: str) -> Path:
    """A state dir under /tmp (the embedded server opens its parents) whose model cache is the tests' one."""
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    if CACHED_MODELS.is_dir():  # the de-quantised default model: 0.3 s to load instead of ~17 s
        (home / "models").symlink_to(CACHED_MODELS)
    return home


def private_settings(home: Path, **overrides) -> Settings:
    """Settings on this home's own embedded server (started here)."""
    url = server.start(home / "pgdata")
    return load_settings(home=home, database_url=url, **overrides)


@pytest.fixture()
def fault_home() -> Iterator[Path]:
    home = private_home("ragtune-fault-")
    yield home
    try:
        server.stop(home / "pgdata")
    finally:
        shutil.rmtree(home, ignore_errors=True)
