"""`adapters compare` scoring on small fakes: the held-out split is the training run's, nothing either adapter trained
on is scored, and the metrics and the paired difference say what they should."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bot.evaluate.compare import HeldOutExample, compare, cosine_rows, form_rule, held_out
from training.pipeline import prepare

TEAM = "Thanks for asking! Your order {{Order Number}} ships today."


def _conversations(n: int) -> list[list[dict]]:
    return [
        [
            {"role": "user", "content": f"earlier {i}"},
            {"role": "assistant", "content": f"old reply {i}", "weight": 0},
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"Thanks for asking! Reply {i} {{{{Slot}}}}."},
        ]
        for i in range(n)
    ]


def _data(tmp_path: Path, n: int = 10) -> Path:
    path = tmp_path / "feedback.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in _conversations(n)))
    return path


def test_held_out_is_the_training_runs_eval_split(tmp_path: Path) -> None:
    data = _data(tmp_path)
    options = {"data": str(data), "eval_split": 0.3, "seed": 7, "on_error": "skip", "limit": None}
    expected = prepare(data, eval_split=0.3, seed=7).split
    got = held_out(options)
    assert [e.reference for e in got.examples] == [e.messages[-1]["content"] for e in expected.evaluation]
    assert len(got.examples) == 3 and len(got.train_replies) == 7
    first = got.examples[0]
    assert first.context[-1]["role"] == "user" and all(set(m) == {"role", "content"} for m in first.context)
    trained = {e.messages[-1]["content"] for e in expected.train}
    assert not trained & {e.reference for e in got.examples}


def test_examples_either_adapter_trained_on_are_left_out(tmp_path: Path) -> None:
    data = _data(tmp_path)
    options = {"data": str(data), "eval_split": 0.3, "seed": 7}
    split = prepare(data, eval_split=0.3, seed=7).split
    current_trained = [split.evaluation[0].messages]  # CURRENT learned one of NEW's held-out examples
    new_trained = split.train[0].messages
    fresh_unseen = [{"role": "user", "content": "brand new"}, {"role": "assistant", "content": "A fresh reply."}]
    fresh = [(new_trained, "session a"), (fresh_unseen, "session b"), (fresh_unseen, "session c")]
    got = held_out(options, trained_elsewhere=current_trained, fresh=fresh)
    assert [e.where for e in got.examples] == [f"line {e.line}" for e in split.evaluation[1:]] + ["session b"]
    assert any("3 left out" in note for note in got.notes)


def _embed(texts: list[str]) -> np.ndarray:
    """A bag of letters: replies that share words with the team's are close, unrelated ones are not."""
    vectors = np.zeros((len(texts), 26))
    for row, text in enumerate(texts):
        for char in text.lower():
            if "a" <= char <= "z":
                vectors[row, ord(char) - 97] += 1
    return vectors


def test_new_adapter_that_writes_like_the_team_wins_with_an_interval() -> None:
    examples = [HeldOutExample([{"role": "user", "content": f"q{i}"}], TEAM, f"line {i}") for i in range(8)]

    def reply(context: list[dict], adapter: str | None) -> str:
        return TEAM if adapter == "team" else "zzz qqq xxx"

    result = compare(examples, "team", None, reply, _embed, train_replies=[TEAM] * 4)
    means = {"new": result.new.means(), "current": result.current.means()}
    assert means["new"]["similarity"] == pytest.approx(1.0) and means["current"]["similarity"] < 0.3
    assert means["new"]["length_ratio"] == pytest.approx(1.0) and means["current"]["length_ratio"] == pytest.approx(
        3 / 9
    )
    assert means["new"]["form"] == 1.0 and means["current"]["form"] == 0.0
    similarity = next(d for d in result.differences if d.metric == "similarity")
    assert similarity.low > 0.5 and similarity.low <= similarity.mean <= similarity.high
    assert similarity.p_not_better == 0.0 and result.current.name == "base"
    body = result.to_json()
    assert body["n"] == 8 and body["examples"][0]["new"] == TEAM and body["current"]["name"] == "base"
    assert "similarity" in result.report() and "[+" in result.report()


def test_equal_adapters_give_an_interval_around_zero() -> None:
    examples = [HeldOutExample([{"role": "user", "content": f"q{i}"}], TEAM, f"line {i}") for i in range(6)]
    replies = ["Your order ships", "Thanks, order today", "nothing", "Thanks for asking", "ships", "order"]

    def reply(context: list[dict], adapter: str | None) -> str:
        return replies[int(context[-1]["content"][1:])]  # both adapters say the same thing

    result = compare(examples, "a", "b", reply, _embed)
    for diff in result.differences:
        assert diff.mean == 0.0 and diff.low == 0.0 and diff.high == 0.0
    assert [d.metric for d in result.differences] == ["similarity", "length_ratio"]  # no training replies: no form
    assert any("trained form not measured" in note for note in result.notes)


def test_form_is_not_measured_when_training_replies_have_no_slots() -> None:
    rule, note = form_rule(["Sure, here it is.", "Sure, done."])
    assert rule is None and "no template slots" in note
    rule, note = form_rule([TEAM, TEAM])
    assert rule is not None and rule.matches(TEAM) and not rule.matches("Hello {{X}}")


def test_empty_reply_scores_zero_and_no_examples_is_an_error() -> None:
    assert cosine_rows(np.zeros((1, 3)), np.ones((1, 3))) == [0.0]
    examples = [HeldOutExample([{"role": "user", "content": "q"}], TEAM, "line 1")]
    result = compare(examples, "a", None, lambda context, adapter: "", _embed)
    assert result.new.similarity == [0.0] and result.new.length_ratio == [0.0]
    with pytest.raises(ValueError, match="no held-out examples"):
        compare([], "a", None, lambda context, adapter: "", _embed)
