"""The feedback → training set builder, on hand-made rated turns (no database): what is kept, what replaces the
answer, what context comes along and how it is marked, duplicates, the route and date filters."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.feedback import ContextMessage, Feedback
from bot.feedback_dataset import build_dataset
from training.datasets import read_dataset

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def rated(
    turn: int = 1,
    rating: str = "up",
    correction: str | None = None,
    *,
    session: str = "s" * 32,
    user: str = "Draft a reply to the customer",
    answer: str = "Dear customer, sorry.",
    route: str | None = "skill",
    action: str | None = "skill",
    minutes: int = 0,
    context: list[ContextMessage] | None = None,
) -> Feedback:
    return Feedback(
        session_id=session,
        turn=turn,
        owner="ann",
        rating=rating,  # type: ignore[arg-type]
        correction=correction,
        created_at=T0 + timedelta(minutes=minutes),
        user_message=user,
        answer=answer,
        route=route,
        action=action,
        context=context or [],
    )


def history(*turns: tuple[str, str], start: int = 1) -> list[ContextMessage]:
    out = []
    for number, (user, answer) in enumerate(turns, start=start):
        out += [ContextMessage(number, "user", user), ContextMessage(number, "assistant", answer)]
    return out


def test_approved_teaches_the_answer_and_a_correction_replaces_it() -> None:
    dataset = build_dataset(
        [
            rated(1, "up", session="a" * 32),
            rated(1, "down", "Dear customer, we are sorry; a refund is on its way.", session="b" * 32),
            rated(1, "up", "Hello, thanks for waiting.", session="c" * 32, user="Say hi"),  # correction wins
        ]
    )
    assert [e.kind for e in dataset.examples] == ["approved", "corrected", "corrected"]
    assert [e.messages[-1]["content"] for e in dataset.examples] == [
        "Dear customer, sorry.",
        "Dear customer, we are sorry; a refund is on its way.",
        "Hello, thanks for waiting.",
    ]
    assert dataset.count("approved") == 1 and dataset.count("corrected") == 2 and not dataset.skipped


def test_unusable_turns_are_skipped_with_their_reason() -> None:
    dataset = build_dataset(
        [rated(1, "down", session="a" * 32), rated(1, "up", user="  ", session="b" * 32), rated(2, "up", answer="")]
    )
    assert dataset.examples == []
    assert dataset.skip_reasons() == {"thumbs down without a correction": 1, "no user message": 1, "empty answer": 1}


def test_context_is_the_window_of_earlier_turns_marked_not_to_learn() -> None:
    earlier = history(("q1", "a1"), ("q2", ""), ("q3", "a3"), ("q4", "a4"), ("q5", "a5"))
    (example,) = build_dataset([rated(6, context=earlier)], context_turns=3).examples
    assert example.messages == [
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": "a3", "weight": 0},
        {"role": "user", "content": "q4"},
        {"role": "assistant", "content": "a4", "weight": 0},
        {"role": "user", "content": "q5"},
        {"role": "assistant", "content": "a5", "weight": 0},
        {"role": "user", "content": "Draft a reply to the customer"},
        {"role": "assistant", "content": "Dear customer, sorry."},
    ]
    (bare,) = build_dataset([rated(6, context=earlier)], context_turns=0).examples
    assert len(bare.messages) == 2
    # Turns after the rated one are not its context; a turn with an empty side (q2) is left out.
    (first,) = build_dataset([rated(3, context=earlier)], context_turns=3).examples
    assert [m["content"] for m in first.messages[:-2]] == ["q1", "a1"]


def test_duplicates_count_once_whatever_the_spacing_or_case() -> None:
    dataset = build_dataset(
        [
            rated(1, session="a" * 32),
            rated(1, session="b" * 32, user="draft a reply to the   customer", answer="Dear customer,  sorry."),
            rated(1, session="c" * 32, context=history(("hi", "hello"), start=0)),  # other context: not the same
        ]
    )
    assert len(dataset.examples) == 2 and dataset.duplicates == 1


def test_route_filter_uses_the_route_or_the_path_that_answered() -> None:
    items = [
        rated(1, session="a" * 32, route="skill", action="skill"),
        rated(1, session="b" * 32, route="rewrite", action="skill", user="make it shorter"),
        rated(1, session="c" * 32, route="knowledge", action="knowledge", user="what is the refund policy?"),
    ]
    assert [e.session_id[0] for e in build_dataset(items, route="skill").examples] == ["a", "b"]
    assert [e.session_id[0] for e in build_dataset(items, route="rewrite").examples] == ["b"]
    knowledge = build_dataset(items, route="knowledge")
    assert [e.session_id[0] for e in knowledge.examples] == ["c"]
    assert knowledge.skip_reasons() == {"routed to skill, not knowledge": 1, "routed to rewrite, not knowledge": 1}


def test_since_keeps_ratings_given_from_then_on() -> None:
    items = [rated(1, session="a" * 32, minutes=0), rated(1, session="b" * 32, minutes=60, user="other")]
    dataset = build_dataset(items, since=T0 + timedelta(minutes=30))
    assert [e.session_id[0] for e in dataset.examples] == ["b"]
    assert dataset.skip_reasons() == {"rated before --since": 1}


def test_written_file_reads_back_as_a_chat_dataset(tmp_path: Path) -> None:
    items = [rated(2, "down", "Better.", context=history(("q1", "a1"))), rated(1, session="b" * 32, minutes=1)]
    path = build_dataset(items).write_jsonl(tmp_path / "f" / "data.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["feedback"] == {"session_id": "s" * 32, "turn": 2, "kind": "corrected"}
    read = read_dataset(path)
    assert read.format == "chat" and len(read.examples) == 2 and not read.problems
    assert read.examples[0].messages[1] == {"role": "assistant", "content": "a1", "weight": 0}  # kept through reading
