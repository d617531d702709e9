"""What every `ragtune` command shares: settings, the database, logging and clean error exits."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
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
    """ragtune's own INFO lines and library problems only; everything with -v (see bot/logs.py)."""
    from bot.logs import setup_logging as configure

    configure(verbose)


def is_verbose() -> bool:
    """Whether `ragtune -v` was given (False outside a click command)."""
    context = click.get_current_context(silent=True)
    return bool(context and context.find_root().params.get("verbose"))


# Kernel interfaces of the GPUs torch can use: NVIDIA (Linux, containers), WSL2's GPU bridge, AMD ROCm.
GPU_DEVICE_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def _has_gpu_driver() -> bool:
    """A GPU torch could use needs its kernel driver; without one, `device = auto` means the CPU."""
    return any(Path(path).exists() for path in GPU_DEVICE_FILES)


def cpu_settings(config: Settings) -> Settings:
    """`config` with `device = auto` resolved to `cpu` when this machine has no GPU driver, so a command that only
    embeds (search, route) does not import torch (~0.8 s) just to ask torch whether CUDA is there."""
    if config.device != "auto" or _has_gpu_driver():
        return config
    return config.model_copy(update={"device": "cpu"})


def embedder(config: Settings):
    """The configured embedder, loaded the way the app loads it (ONNX export reused from the state dir)."""
    from bot.embedder import configured_embedder

    return configured_embedder(cpu_settings(config))


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
