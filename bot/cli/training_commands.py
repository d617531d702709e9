"""`ragtune train DATA --name NAME` (or `--from-feedback`) and `ragtune adapters list|show|delete`: LoRA skills from
the user's data."""

from __future__ import annotations

import json
import shlex
import sys

import click

from bot.cli.common import database, settings, user_errors
from training.trainer import TrainConfig

# The one home of the training defaults: the options below show them, they do not restate them.
DEFAULTS = TrainConfig()


@click.command("train")
@click.argument("data", required=False, type=click.Path(dir_okay=False, path_type=str))
@click.option("--name", default=None, help="Adapter name (letters, digits, '_', '-'); required unless --dry-run.")
@click.option("--input-col", default=None, help="Column holding the user's message (CSV / column JSONL).")
@click.option("--output-col", default=None, help="Column holding the reply to learn (CSV / column JSONL).")
@click.option("--system-prompt", default=None, help="System prompt put before every example that has none.")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.epochs, show_default=True)
@click.option(
    "--max-steps", type=click.IntRange(min=1), default=DEFAULTS.max_steps, help="Stop after N optimizer steps."
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use N rows (a seeded random sample).")
@click.option("--eval-split", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size, show_default=True)
@click.option("--grad-accum", type=click.IntRange(min=1), default=DEFAULTS.grad_accum, show_default=True)
@click.option(
    "--lr",
    "learning_rate",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS.learning_rate,
    show_default=True,
)
@click.option("--lora-r", type=click.IntRange(min=1), default=DEFAULTS.lora_r, show_default=True)
@click.option(
    "--lora-alpha",
    type=click.IntRange(min=1),
    default=DEFAULTS.lora_alpha,
    help="LoRA scaling alpha (default: 2 x --lora-r).",
)
@click.option(
    "--target-modules",
    default=",".join(DEFAULTS.target_modules),
    show_default=True,
    help="Comma-separated module names.",
)
@click.option(
    "--max-length",
    type=click.IntRange(min=16),
    default=DEFAULTS.max_length,
    show_default=True,
    help="Tokens per example.",
)
@click.option("--eval-every", type=click.IntRange(min=1), default=DEFAULTS.eval_every, show_default=True)
@click.option(
    "--patience",
    type=click.IntRange(min=0),
    default=DEFAULTS.patience,
    show_default=True,
    help="0 disables early stop.",
)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=DEFAULTS.checkpoint_every, show_default=True)
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=DEFAULTS.threads, help="CPU threads for torch.")
@click.option(
    "--on-error",
    type=click.Choice(["skip", "fail"]),
    default="skip",
    show_default=True,
    help="Bad rows: skip them (and list them) or stop at the first one.",
)
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint of this name.")
@click.option("--overwrite", is_flag=True, help="Replace an existing adapter of this name.")
@click.option("--from-feedback", is_flag=True, help="Learn from the team's approved and corrected answers, not DATA.")
@click.option("--since", default=None, help="With --from-feedback: ratings given on or after this ISO date (UTC).")
@click.option("--route", default=None, help="With --from-feedback: only turns the router sent to this route.")
@click.option("--dry-run", is_flag=True, help="Check the data and say what would be learned; train nothing.")
@user_errors
def train_command(data: str | None, name: str | None, **options: object) -> None:
    """Fine-tune a LoRA adapter on DATA (chat JSONL, prompt/completion JSONL, or CSV/JSONL with columns), or on the
    team's feedback (--from-feedback)."""
    from training.pipeline import prepare
    from training.registry import AdapterRegistry, check_name

    config_settings = settings()
    if not name and not options["dry_run"]:
        raise click.UsageError("Missing option '--name'.")
    if name:
        check_name(name)
        registry = AdapterRegistry(config_settings.adapters_dir)
        if registry.path_for(name).exists() and not options["overwrite"] and not options["resume"]:
            raise ValueError(f"adapter {name!r} already exists at {registry.path_for(name)}; pass --overwrite")
    if options["from_feedback"]:
        from bot.cli.feedback_commands import training_data_from_feedback

        data = training_data_from_feedback(data, options)
        if data is None:  # a dry run: the report is printed
            return
    elif not data:
        raise click.UsageError("Missing argument 'DATA' (or pass --from-feedback).")
    elif options["since"] or options["route"]:
        raise click.UsageError("--since and --route choose feedback: use them with --from-feedback.")
    # Everything about the data is checked before the (slow) model load.
    prepared = prepare(
        data,
        input_col=options["input_col"],
        output_col=options["output_col"],
        system_prompt=options["system_prompt"],
        on_error=options["on_error"],
        limit=options["limit"],
        eval_split=options["eval_split"],
        seed=options["seed"],
    )
    for problem in prepared.dataset.problems[:20]:
        click.echo(f"skipped {problem}", err=True)
    if len(prepared.dataset.problems) > 20:
        click.echo(f"… and {len(prepared.dataset.problems) - 20} more bad rows", err=True)
    click.echo(
        f"{len(prepared.split.train)} training / {len(prepared.split.evaluation)} eval examples "
        f"({prepared.dataset.format}, {len(prepared.dataset.problems)} bad rows skipped)",
        err=True,
    )
    if options["dry_run"]:
        click.echo("dry run: nothing trained", err=True)
        return
    db = database()
    try:
        _train(config_settings, prepared, name, AdapterRegistry(config_settings.adapters_dir, db.pool), options)
    finally:
        db.close()


def _train(config_settings, prepared, name, registry, options) -> None:  # noqa: ANN001 - CLI glue
    from bot.llm.loading import load_base_model
    from training.pipeline import fine_tune
    from training.trainer import TrainingInterrupted

    config = TrainConfig(
        epochs=options["epochs"],
        max_steps=options["max_steps"],
        batch_size=options["batch_size"],
        grad_accum=options["grad_accum"],
        learning_rate=options["learning_rate"],
        lora_r=options["lora_r"],
        lora_alpha=options["lora_alpha"],
        target_modules=[m.strip() for m in str(options["target_modules"]).split(",") if m.strip()],
        max_length=options["max_length"],
        eval_every=options["eval_every"],
        patience=options["patience"],
        checkpoint_every=options["checkpoint_every"],
        seed=options["seed"],
        threads=options["threads"],
    )
    loaded = load_base_model(
        config_settings.generator_model, config_settings.model_cache_dir, device=config_settings.device
    )
    try:
        _model, record = fine_tune(
            loaded.model,
            loaded.tokenizer,
            loaded.location.label,
            prepared,
            name,
            registry,
            config,
            resume=bool(options["resume"]),
        )
    except TrainingInterrupted as stopped:
        _interrupted(stopped, prepared.options["data"])
    metrics = record.metrics
    click.echo(
        f"adapter {record.name}: eval loss {_fmt(record.eval_loss_before)} -> {_fmt(record.eval_loss_after)}, "
        f"{metrics['steps']} steps in {metrics['train_seconds']:.0f}s ({metrics['tokens_per_second']:.0f} tok/s), "
        f"{metrics['trainable_fraction']:.2%} of parameters, {metrics['adapter_bytes'] / 1e6:.1f} MB\n{record.path}"
    )
    _write_gguf_lora(config_settings, record.path)


def _write_gguf_lora(config_settings, adapter_dir) -> None:  # noqa: ANN001 - CLI glue
    """The GGUF LoRA beside the peft files, for the llama.cpp backend: a running server then loads it in well
    under a second (bot/llm/adapter_watch.py) instead of converting it first."""
    if config_settings.openai_base_url or config_settings.generator_backend != "llamacpp":
        return
    from bot.llm.llamacpp import LlamaCppUnavailable, served_model
    from training.gguf_lora import gguf_adapter

    try:
        gguf = gguf_adapter(adapter_dir, served_model(config_settings))
    except (LlamaCppUnavailable, ValueError, OSError) as exc:  # the adapter itself is saved: conversion can wait
        click.echo(f"note: no GGUF LoRA written ({exc}); the llama.cpp backend converts it when it loads it")
        return
    click.echo(f"GGUF LoRA for llama.cpp: {gguf}")


# Options that choose or check the data, not the run: the resume command names the data file itself.
_NOT_RESUMED = {"from_feedback", "since", "route", "dry_run", "resume", "overwrite"}


def resume_command(data: str) -> str:
    """The command that continues this run: the same data file and non-default options, plus --resume."""
    context = click.get_current_context()
    words = ["ragtune", "train", data]
    for param in context.command.params:
        value = context.params.get(param.name or "")
        if not isinstance(param, click.Option) or param.name in _NOT_RESUMED or value is None or value is False:
            continue
        if value != param.default:
            flag = max(param.opts, key=len)
            words += [flag] if param.is_flag else [flag, str(value)]
    return shlex.join([*words, "--resume"])


def _interrupted(stopped, data: str) -> None:  # noqa: ANN001 - a TrainingInterrupted
    """Ctrl-C: say where the run stopped and the exact command that continues it; exit 130, as a Ctrl-C does."""
    if stopped.checkpoint is None:
        click.echo(f"\n{stopped}: no finished step to resume from", err=True)
    else:
        click.echo(f"\n{stopped}; checkpoint saved in {stopped.checkpoint}", err=True)
        click.echo(f"resume with:\n  {resume_command(data)}", err=True)
    sys.exit(130)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@click.group("adapters")
def adapters_group() -> None:
    """LoRA adapters trained with `ragtune train`."""


def _registry():  # noqa: ANN202 - returns (registry, db)
    from training.registry import AdapterRegistry

    db = database()
    return AdapterRegistry(settings().adapters_dir, db.pool), db


@adapters_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@user_errors
def adapters_list(as_json: bool) -> None:
    """List every registered adapter."""
    registry, db = _registry()
    try:
        records = registry.list()
    finally:
        db.close()
    if as_json:
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
        return
    if not records:
        click.echo("no adapters")
        return
    click.echo(f"{'name':24} {'rows':>6} {'eval before':>11} {'eval after':>10}  {'created':25} base")
    for r in records:
        click.echo(
            f"{r.name:24} {r.rows or 0:>6} {_fmt(r.eval_loss_before):>11} {_fmt(r.eval_loss_after):>10}  "
            f"{r.created_at:25} {r.base_model}"
        )


@adapters_group.command("show")
@click.argument("name")
@user_errors
def adapters_show(name: str) -> None:
    """Show one adapter's full record."""
    from training.registry import AdapterNotFound

    registry, db = _registry()
    try:
        record = registry.get(name)
    except AdapterNotFound as exc:
        raise ValueError(str(exc)) from exc
    finally:
        db.close()
    data = record.to_json()
    data["metrics"] = {k: v for k, v in data["metrics"].items() if k != "history"}
    click.echo(json.dumps(data, indent=2))


@adapters_group.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@user_errors
def adapters_delete(name: str, yes: bool) -> None:
    """Delete an adapter: its files and its registry row."""
    from training.registry import AdapterNotFound

    registry, db = _registry()
    try:
        record = registry.get(name)
        if not yes:
            click.confirm(f"delete adapter {name!r} ({record.path})?", abort=True)
        registry.delete(name)
    except AdapterNotFound as exc:
        raise ValueError(str(exc)) from exc
    finally:
        db.close()
    click.echo(f"deleted {name}")


COMMANDS = [train_command, adapters_group]
