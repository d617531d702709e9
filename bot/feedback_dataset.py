"""From the team's feedback to a chat training set: what `ragtune train --from-feedback` learns from.

- a thumbs-up teaches the answer as it was given; a correction (with either rating) teaches the corrected reply
  instead; a thumbs-down without a correction says what not to say but not what to say, so it is skipped;
- each example carries the turns before it in its session (a small window), as the conversation really went:
  the skill path answers with that history in front of it. Those earlier replies are marked `weight: 0`, so the
  model reads them but learns only the rated reply (an unrated or disliked answer is never taught);
- the same conversation rated twice (two people, or a question asked again) counts once.

The result is written as chat JSONL and then read back by the ordinary `ragtune train` path, so the split, the
checks and `--resume` are exactly those of a data file (a dry run included).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from bot.feedback import Feedback

DEFAULT_CONTEXT_TURNS = 3
Kind = Literal["approved", "corrected"]


@dataclass(frozen=True)
class Skipped:
    """A rated turn that gives no example, and why."""

    session_id: str
    turn: int
    reason: str


@dataclass
class FeedbackExample:
    """One training conversation and the rated turn it came from."""

    messages: list[dict[str, Any]]
    kind: Kind
    session_id: str
    turn: int

    def to_json(self) -> dict[str, Any]:
        """A chat-JSONL row; `feedback` is provenance, ignored by the reader."""
        source = {"session_id": self.session_id, "turn": self.turn, "kind": self.kind}
        return {"messages": self.messages, "feedback": source}


@dataclass
class FeedbackDataset:
    examples: list[FeedbackExample]
    skipped: list[Skipped] = field(default_factory=list)
    duplicates: int = 0

    def count(self, kind: Kind) -> int:
        return sum(1 for example in self.examples if example.kind == kind)

    def skip_reasons(self) -> Counter[str]:
        return Counter(skip.reason for skip in self.skipped)

    def write_jsonl(self, path: Path) -> Path:
        """Write the examples, one chat row a line, atomically (a crash leaves the old file or none)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        with partial.open("w", encoding="utf-8") as handle:
            for example in self.examples:
                handle.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")
        os.replace(partial, path)
        return path


def route_matches(item: Feedback, route: str) -> bool:
    """The turn went to `route`: by route name, or for 'knowledge'/'skill' also by the path that answered it
    (a custom route such as 'rewrite' answers on the skill path)."""
    return item.route == route or (route in ("knowledge", "skill") and item.action == route)


def _key(messages: list[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    """What makes two examples the same: the same words in the same roles (spacing and case aside)."""
    return tuple((m["role"], " ".join(m["content"].split()).casefold()) for m in messages)


def _context(item: Feedback, turns: int) -> list[dict[str, Any]]:
    """The last `turns` complete turns before the rated one (a turn with an empty side is left out), each reply
    marked `weight: 0`: read by the model, not learned."""
    pairs: dict[int, dict[str, str]] = {}
    for message in item.context:
        if message.turn < item.turn:
            pairs.setdefault(message.turn, {})[message.role] = message.content
    complete = [n for n in sorted(pairs) if pairs[n].get("user", "").strip() and pairs[n].get("assistant", "").strip()]
    messages: list[dict[str, Any]] = []
    for number in complete[-turns:] if turns > 0 else []:
        messages.append({"role": "user", "content": pairs[number]["user"]})
        messages.append({"role": "assistant", "content": pairs[number]["assistant"], "weight": 0})
    return messages


def build_dataset(
    items: Iterable[Feedback],
    *,
    since: datetime | None = None,
    route: str | None = None,
    context_turns: int = DEFAULT_CONTEXT_TURNS,
) -> FeedbackDataset:
    """Examples from rated turns, oldest rating first; every turn left out is in `skipped` with its reason."""
    dataset = FeedbackDataset(examples=[])
    seen: set[tuple[tuple[str, str], ...]] = set()
    for item in sorted(items, key=lambda i: (i.created_at, i.session_id, i.turn)):
        reason = _unusable(item, since, route)
        if reason is not None:
            dataset.skipped.append(Skipped(item.session_id, item.turn, reason))
            continue
        kind: Kind = "corrected" if item.correction else "approved"
        reply = item.correction if item.correction else item.answer
        messages = [
            *_context(item, context_turns),
            {"role": "user", "content": item.user_message},
            {"role": "assistant", "content": reply},
        ]
        key = _key(messages)
        if key in seen:
            dataset.duplicates += 1
            continue
        seen.add(key)
        dataset.examples.append(FeedbackExample(messages, kind, item.session_id, item.turn))
    return dataset


def _unusable(item: Feedback, since: datetime | None, route: str | None) -> str | None:
    if since is not None and item.created_at < since:
        return "rated before --since"
    if route is not None and not route_matches(item, route):
        return f"routed to {item.route or 'no route'}, not {route}"
    if not item.user_message.strip():
        return "no user message"
    if item.correction:
        return None
    if item.rating == "down":
        return "thumbs down without a correction"
    if not item.answer.strip():
        return "empty answer"
    return None
