"""`ragtune adapters compare|promote|rollback`: proof before promotion, then a switch a running server follows.

These extend the `adapters` group of training_commands.py (the group is registered there; adding commands to it
here needs no registration of its own, hence the empty COMMANDS).
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any

import click

from bot.cli.common import database, settings, user_errors
from bot.cli.training_commands import adapters_group
from bot.promotion import BASE

DEFAULT_MAX_NEW_TOKENS = 120


def _record(registry: Any, name: str) -> Any:
    from training.registry import AdapterNotFound

    try:
        return registry.get(name)
    except AdapterNotFound as exc:
        raise ValueError(f"{exc} (`ragtune adapters list` shows the registered ones)") from None


@adapters_group.command("compare")
@click.argument("new")
@click.argument("current")
@click.option("--since", default=None, help="Also score feedback rated on or after this ISO date (UTC) that neither "
              "adapter was trained on.")  # fmt: skip
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=DEFAULT_MAX_NEW_TOKENS, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap resampling.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (means, differences, every reply).")
@user_errors
def adapters_compare(new: str, current: str, since: str | None, max_new_tokens: int, seed: int, as_json: bool) -> None:
    """Score NEW and CURRENT (an adapter, or `base`) on NEW's held-out examples: similarity to the team's reply,
    length ratio and trained form, with NEW - CURRENT and a paired bootstrap 95% interval."""
    from bot.evaluate.compare import compare, held_out, rebuild_split
    from training.registry import AdapterRegistry

    if new == current:
        raise click.UsageError("NEW and CURRENT are the same adapter")
    if new == BASE:
        raise click.UsageError("NEW must be a trained adapter (its held-out split is what is scored)")
    config = settings()
    db = database()
    try:
        registry = AdapterRegistry(config.adapters_dir, db.pool)
        new_record = _record(registry, new)
        current_record = None if current == BASE else _record(registry, current)
        fresh = _fresh_feedback(since)
    finally:
        db.close()
    current_trained: list[Any] = []
    if current_record is not None and current_record.hyperparameters.get("data"):
        try:
            current_trained = [e.messages for e in rebuild_split(current_record.hyperparameters).split.train]
        except (OSError, ValueError) as exc:  # its data file is gone: it cannot be checked for overlap
            click.echo(f"warning: {current}'s training data could not be read ({exc}); overlap not checked", err=True)
    examples = held_out(new_record.hyperparameters, trained_elsewhere=current_trained, fresh=fresh)
    reply, embed = _reply_and_embed(config, [new, current], max_new_tokens)
    result = compare(
        examples.examples,
        new,
        None if current == BASE else current,
        reply,
        embed,
        train_replies=examples.train_replies,
        seed=seed,
        notes=examples.notes,
    )
    click.echo(json.dumps(result.to_json(), indent=2, ensure_ascii=False) if as_json else result.report())


def _fresh_feedback(since: str | None) -> list[tuple[list[dict], str]]:
    if not since:
        return []
    from bot.cli.feedback_commands import load_feedback_dataset

    dataset = load_feedback_dataset(since, None)
    return [(e.messages, f"session {e.session_id[:8]}… turn {e.turn}") for e in dataset.examples]


def _reply_and_embed(config: Any, adapters: list[str], max_new_tokens: int) -> tuple[Any, Any]:
    """Greedy replies from the app's generator (the one that serves, with its adapters) and the app's embedder."""
    from bot.embedder import configured_embedder
    from bot.llm import create_generator

    generator = create_generator(config)
    # Each reply computed afresh: llama.cpp reusing a cached prompt changes its batch shapes and so the last bits of
    # the logits, and a 135M model's greedy text then depends on which adapter ran before (measured: the base
    # model's mean similarity on the same 16 examples read 0.471 after one adapter and 0.625 after another).
    if getattr(generator, "cache_prompt", None) is not None:
        generator.cache_prompt = False
    loaded = set(generator.adapters())
    missing = [name for name in adapters if name != BASE and name not in loaded]
    if missing:
        raise ValueError(f"adapter {missing[0]!r} is registered but the generator could not load it")
    embedder = configured_embedder(config)

    def reply(context: list[dict[str, str]], adapter: str | None) -> str:
        messages = generator.fit_messages(context, max_new_tokens)
        return generator.generate(messages, adapter=adapter, max_new_tokens=max_new_tokens, temperature=0.0).text

    return reply, embedder.embed_documents


def _route_names(config: Any) -> list[str]:
    from router.routes import load_routes

    return [spec.name for spec in load_routes(config.routes_file)]


def _check_route(config: Any, route: str) -> None:
    names = _route_names(config)
    if route not in names:
        raise ValueError(f"route {route!r}: unknown (configured routes: {', '.join(names)})")


@adapters_group.command("promote")
@click.argument("name")
@click.option("--route", required=True, help="The route the adapter will serve (e.g. skill).")
@click.option("--by", default=None, help="Who promotes (default: the login name); kept in the history.")
@user_errors
def adapters_promote(name: str, route: str, by: str | None) -> None:
    """Make adapter NAME (or `base`: no adapter) serve ROUTE from now on; a running server follows within seconds."""
    from bot.promotion import PromotionStore
    from training.registry import AdapterRegistry

    config = settings()
    _check_route(config, route)
    db = database()
    try:
        if name != BASE:
            record = _record(AdapterRegistry(config.adapters_dir, db.pool), name)
            if not (Path(record.path) / "adapter_config.json").is_file():
                raise ValueError(f"adapter {name!r} is registered but its files are missing from {record.path}")
        promotion = PromotionStore(db.pool).promote(route, None if name == BASE else name, by or _login())
    finally:
        db.close()
    click.echo(f"route {route} is now served by {promotion.label} (promoted by {promotion.promoted_by})")


@adapters_group.command("rollback")
@click.option("--route", required=True, help="The route whose last promotion is undone.")
@click.option("--by", default=None, help="Who rolls back (default: the login name); kept in the history.")
@user_errors
def adapters_rollback(route: str, by: str | None) -> None:
    """Undo ROUTE's last promotion: the adapter promoted before it serves again (or, with none, the configured one)."""
    from bot.promotion import NothingToRollBack, PromotionStore

    db = database()
    try:
        retired, now = PromotionStore(db.pool).rollback(route, by or _login())
    except NothingToRollBack as exc:
        raise ValueError(str(exc)) from None
    finally:
        db.close()
    serving = now.label if now is not None else "its configured adapter (routes file)"
    click.echo(f"route {route}: {retired.label} rolled back; now served by {serving}")


@adapters_group.command("history")
@click.option("--route", default=None, help="Only this route.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def adapters_history(route: str | None, as_json: bool) -> None:
    """Promotions and rollbacks, newest first."""
    from bot.promotion import PromotionStore

    db = database()
    try:
        items = PromotionStore(db.pool).history(route)
    finally:
        db.close()
    if as_json:
        click.echo(json.dumps([p.as_dict() for p in items], indent=2))
        return
    for p in items:
        undone = f"  rolled back {p.rolled_back_at:%Y-%m-%d %H:%M} by {p.rolled_back_by}" if p.rolled_back_at else ""
        click.echo(f"{p.promoted_at:%Y-%m-%d %H:%M}  {p.route:12} {p.label:24} by {p.promoted_by}{undone}")
    if not items:
        click.echo("no promotions")


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in a container: say so rather than fail
        return "unknown"


COMMANDS: list[click.Command] = []
