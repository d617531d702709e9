"""`ragtune models prepare|fetch|where`: the model files a first start would otherwise build, and the generator's.

`prepare` does once, at set-up, what the first chat start would do on the way to its first answer: today the
embedder's ONNX export and int8 quantisation into the state dir. Each piece of work is a named step in
`PREPARE_STEPS`; a step is safe to run again (it finds its files and returns at once), so `scripts/setup.sh` can
call `prepare` on every run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import click

from bot.cli.common import cpu_settings, is_verbose, settings, user_errors
from bot.config import Settings
from bot.llm.weights import fetch_default_gguf, locate_generator


@dataclass(frozen=True)
class PrepareStep:
    """One thing `ragtune models prepare` makes ready; `run` does it (or finds it done) and says what is ready."""

    name: str
    what: str  # shown while it runs, e.g. "ONNX export + int8"
    run: Callable[[Settings], str]


def prepare_embedder(config: Settings) -> str:
    """Load the embedder exactly as the app does, which exports it to ONNX (and int8) in the state dir if needed."""
    from bot.embedder import configured_embedder

    embedder = configured_embedder(cpu_settings(config))
    embedder.embed_query("ready")  # the session loads and runs: a broken export fails here, not at the first chat
    if config.embedding_backend == "onnx" and embedder.backend != "onnx":
        return f"{embedder.description}: ONNX unavailable (see the warning above), the slower torch backend is used"
    where = f" in {embedder.onnx.folder}" if embedder.onnx is not None else ""
    return f"{embedder.description}{where}"


def prepare_generator(config: Settings) -> str:
    """The generator's weights in the form its backend loads: for llama.cpp the GGUF in `generator_quantization`,
    for transformers the de-quantised safetensors copy (de-quantising the packaged GGUF takes ~20 s otherwise)."""
    if config.openai_base_url:
        return f"nothing to prepare: generation runs on {config.openai_base_url}"
    if config.generator_backend == "llamacpp":
        from bot.llm.llamacpp import LlamaCppUnavailable, served_model

        try:
            path = served_model(config)
        except LlamaCppUnavailable as exc:  # a model llama.cpp cannot read runs on transformers instead
            return f"llama.cpp cannot serve it ({exc}); the first start loads it with transformers"
        return f"{config.generator_model} as {path.name} for llama.cpp"
    from bot.llm.loading import load_base_model

    loaded = load_base_model(config.generator_model, config.model_cache_dir, device="cpu", dtype="float32")
    return f"{loaded.location.label} for transformers" + (" (cached)" if loaded.from_cache else "")


PREPARE_STEPS: list[PrepareStep] = [
    PrepareStep("embedder", "ONNX export + int8, once", prepare_embedder),
    PrepareStep("generator", "weights for the configured backend, once", prepare_generator),
]


@click.group("models")
def models_group() -> None:
    """Model files: prepare them at set-up, fetch the default generator, show where it loads from."""


@models_group.command("prepare")
@click.option(
    "--only",
    "only",
    type=click.Choice([step.name for step in PREPARE_STEPS]),
    multiple=True,
    help="Run only this step (repeatable).",
)
@user_errors
def models_prepare(only: tuple[str, ...]) -> None:
    """Build what a first start needs (the embedder's ONNX export, the generator's weights) so that `ragtune up`
    starts fast. Safe to rerun."""
    config = settings()
    steps = [step for step in PREPARE_STEPS if not only or step.name in only]
    quiet = None if is_verbose() else logging.getLogger("knowledge.onnx_export")
    previous = quiet.level if quiet is not None else logging.NOTSET
    if quiet is not None:
        quiet.setLevel(logging.WARNING)  # this command's own line says what its log lines would
    try:
        for step in steps:
            click.echo(f"{step.name}: preparing ({step.what})… ", nl=False)
            started = time.perf_counter()
            ready = step.run(config)
            click.echo(f"ready in {time.perf_counter() - started:.1f} s: {ready}")
    finally:
        if quiet is not None:
            quiet.setLevel(previous)


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
