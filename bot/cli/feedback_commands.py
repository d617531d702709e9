"""`ragtune feedback list`: the team's ratings of answers; and the data half of `ragtune train --from-feedback`.

The operator's view: every owner's feedback (the API shows each caller only their own), since the training set
is built from all of it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from bot.cli.common import database, settings, user_errors
from bot.config import Settings
from bot.feedback import Feedback, FeedbackStore, parse_since
from bot.feedback_dataset import DEFAULT_CONTEXT_TURNS, FeedbackDataset, build_dataset

SHOWN_CHARS = 80


def shorten(text: str | None, limit: int = SHOWN_CHARS) -> str:
    """One line of at most `limit` characters (an ellipsis says something was cut)."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _since(value: str | None) -> datetime | None:
    return parse_since(value) if value else None


@click.group("feedback")
def feedback_group() -> None:
    """The team's thumbs up/down and corrections on answers (given through POST /v1/feedback)."""


@feedback_group.command("list")
@click.option("--since", default=None, help="Only ratings given on or after this ISO date or date-time (UTC).")
@click.option("--owner", default=None, help="Only this owner's ratings (default: everyone's).")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@user_errors
def feedback_list(since: str | None, owner: str | None, limit: int, as_json: bool) -> None:
    """List rated turns, newest first: turn, rating, the user's message, the answer and the correction."""
    bound = _since(since)
    db = database()
    try:
        items = FeedbackStore(db.pool).list_feedback(owner, since=bound, limit=limit)
    finally:
        db.close()
    if as_json:
        click.echo(json.dumps([{**item.as_dict(), "owner": item.owner} for item in items], indent=2))
        return
    if not items:
        click.echo("no feedback")
        return
    for item in items:
        click.echo(_describe(item))


def _describe(item: Feedback) -> str:
    where = f"{item.session_id[:8]}… turn {item.turn}"
    head = f"{where}  {item.rating:4}  {item.route or '-'}  {item.created_at:%Y-%m-%d %H:%M}  {item.owner}"
    lines = [head, f"  user:       {shorten(item.user_message)}", f"  answer:     {shorten(item.answer)}"]
    if item.correction:
        lines.append(f"  correction: {shorten(item.correction)}")
    return "\n".join(lines)


# --- ragtune train --from-feedback -----------------------------------------------------------------------
def load_feedback_dataset(since: str | None, route: str | None) -> FeedbackDataset:
    """Everyone's feedback with its conversation context, built into examples (see bot/feedback_dataset.py)."""
    bound = _since(since)
    db = database()
    try:
        items = FeedbackStore(db.pool).list_feedback(None, context_turns=DEFAULT_CONTEXT_TURNS)
    finally:
        db.close()
    return build_dataset(items, since=bound, route=route, context_turns=DEFAULT_CONTEXT_TURNS)


def report(dataset: FeedbackDataset, examples: int = 3) -> None:
    """What a run would learn from: counts, why turns were left out, and a few examples."""
    click.echo(
        f"{dataset.count('approved')} approved, {dataset.count('corrected')} corrected, "
        f"{len(dataset.skipped)} skipped, {dataset.duplicates} duplicates"
    )
    for reason, count in dataset.skip_reasons().most_common():
        click.echo(f"  skipped {count}: {reason}")
    for example in dataset.examples[:examples]:
        context = sum(1 for m in example.messages if m.get("weight") == 0)
        click.echo(f"{example.kind} (session {example.session_id[:8]}… turn {example.turn}, {context} earlier turns)")
        click.echo(f"  user:      {shorten(example.messages[-2]['content'])}")
        click.echo(f"  assistant: {shorten(example.messages[-1]['content'])}")


def feedback_data_file(config: Settings, dataset: FeedbackDataset, *, dry_run: bool = False) -> Path:
    """Write the examples as chat JSONL in the state dir: a new file per run (kept: `--resume` and the adapter's
    record name it), or one `feedback-dry-run.jsonl` that each dry run replaces, to read what would be learned."""
    name = "dry-run" if dry_run else datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return dataset.write_jsonl(config.state_dir / "feedback" / f"feedback-{name}.jsonl")


def training_data_from_feedback(data: str | None, options: dict) -> str | None:
    """The chat JSONL `ragtune train --from-feedback` reads through the ordinary path (so a dry run's split is the
    real one); None when there is nothing to learn from on a dry run (a real run fails instead)."""
    if data:
        raise ValueError("pass either a DATA file or --from-feedback, not both")
    dataset = load_feedback_dataset(options["since"], options["route"])
    if options["dry_run"]:
        report(dataset)
        if not dataset.examples:
            click.echo("nothing to train on")
            return None
    elif not dataset.examples:
        reasons = ", ".join(f"{count} {reason}" for reason, count in dataset.skip_reasons().most_common())
        raise ValueError(f"no usable feedback to train on ({reasons or 'no ratings'}); see --dry-run")
    else:
        click.echo(
            f"{len(dataset.examples)} examples from feedback ({dataset.count('approved')} approved, "
            f"{dataset.count('corrected')} corrected, {len(dataset.skipped)} skipped, {dataset.duplicates} duplicates)",
            err=True,
        )
    path = feedback_data_file(settings(), dataset, dry_run=bool(options["dry_run"]))
    click.echo(f"examples written to {path}", err=True)
    return str(path)


COMMANDS = [feedback_group]
