"""Feedback end to end on the real database: the API (owners, replacement, bad input), the store's tie to the turn,
`ragtune feedback list`, and `ragtune train --from-feedback --dry-run` / a Ctrl-C'd `ragtune train` from the CLI."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from bot.cli import cli as cli_main
from bot.conversation import Conversation
from bot.conversation.services import Services
from bot.feedback import FeedbackStore, TurnNotFound
from bot.memory import MemoryStore, SessionNotFound
from bot.server.app import create_app
from tests.fakes import FakeGenerator, FakeRouter, FakeStore

ONE, TWO = {"Authorization": "Bearer key-one"}, {"Authorization": "Bearer key-two"}


@pytest.fixture(scope="module")
def client(settings, db) -> TestClient:
    config = settings.model_copy(update={"api_keys": ["key-one", "key-two"]})
    memory = MemoryStore(db.pool)
    conversation = Conversation(memory, FakeGenerator(), FakeRouter(), FakeStore())
    return TestClient(create_app(Services(config, db, memory, conversation, store=FakeStore())))


@pytest.fixture
def no_feedback(db) -> None:
    """The CLI reads everyone's feedback: start from none, so counts are this test's own."""
    with db.connection() as conn:
        conn.execute("DELETE FROM feedback")


def _chat(client: TestClient, text: str, session_id: str | None = None) -> dict:
    body = {"messages": [{"role": "user", "content": text}], **({"session_id": session_id} if session_id else {})}
    response = client.post("/v1/chat/completions", json=body, headers=ONE)
    assert response.status_code == 200, response.text
    return response.json()["ragtune"]


def _rate(client: TestClient, headers=ONE, **body):
    return client.post("/v1/feedback", json=body, headers=headers)


def test_rate_a_turn_then_replace_the_rating(client) -> None:
    sid = _chat(client, "How do I train an adapter?")["session_id"]
    first = _rate(client, session_id=sid, turn=1, rating="up")
    assert first.status_code == 200, first.text
    assert first.json() | {"created_at": None} == {
        "session_id": sid,
        "turn": 1,
        "rating": "up",
        "correction": None,
        "created_at": None,
        "user_message": "How do I train an adapter?",
        "answer": "Answer from [1].",
        "route": "knowledge",
        "action": "knowledge",
        "adapter": None,
    }
    again = _rate(client, session_id=sid, turn=1, rating="down", correction="  Run `ragtune train`.  ")
    assert again.json()["rating"] == "down" and again.json()["correction"] == "Run `ragtune train`."
    mine = [f for f in client.get("/v1/feedback", headers=ONE).json()["data"] if f["session_id"] == sid]
    assert [(f["turn"], f["rating"], f["correction"]) for f in mine] == [(1, "down", "Run `ragtune train`.")]
    blank = _rate(client, session_id=sid, turn=1, rating="up", correction="   ")  # blank: no correction
    assert blank.json()["rating"] == "up" and blank.json()["correction"] is None


def test_another_key_cannot_rate_or_see_the_turn(client) -> None:
    sid = _chat(client, "How do I train an adapter?")["session_id"]
    assert _rate(client, session_id=sid, turn=1, rating="up").status_code == 200
    other = _rate(client, TWO, session_id=sid, turn=1, rating="down", correction="hijacked")
    assert other.status_code == 404 and other.json()["error"]["code"] == "session_not_found"
    assert sid not in {f["session_id"] for f in client.get("/v1/feedback", headers=TWO).json()["data"]}
    (mine,) = [f for f in client.get("/v1/feedback", headers=ONE).json()["data"] if f["session_id"] == sid]
    assert mine["rating"] == "up" and mine["correction"] is None  # the other key's attempt changed nothing


def test_bad_input_is_a_clear_error_and_loses_nothing(client) -> None:
    sid = _chat(client, "How do I train an adapter?")["session_id"]
    assert _rate(client, session_id=sid, turn=1, rating="down", correction="Keep me.").status_code == 200
    cases = [
        ({"session_id": sid, "turn": 1, "rating": "meh"}, 400, "invalid_request", "rating"),
        ({"session_id": sid, "turn": 0, "rating": "up"}, 400, "invalid_request", "turn"),
        ({"session_id": sid, "turn": 1, "rating": "up", "corection": "typo"}, 400, "invalid_request", "corection"),
        ({"session_id": sid, "turn": 1, "rating": "up", "correction": "x" * 20001}, 400, "invalid_request", None),
        ({"session_id": "no such/id", "turn": 1, "rating": "up"}, 400, "invalid_request", "session_id"),
        ({"session_id": sid, "turn": 7, "rating": "up"}, 404, "turn_not_found", "turn"),
        ({"session_id": "x" * 32, "turn": 1, "rating": "up"}, 404, "session_not_found", "session_id"),
    ]
    for body, status, code, param in cases:
        response = _rate(client, **body)
        error = response.json()["error"]
        assert (response.status_code, error["code"]) == (status, code), body
        assert param is None or error["param"] == param, (body, error)
    bad_json = client.post("/v1/feedback", content=b"{", headers={**ONE, "content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    (kept,) = [f for f in client.get("/v1/feedback", headers=ONE).json()["data"] if f["session_id"] == sid]
    assert (kept["rating"], kept["correction"]) == ("down", "Keep me.")


def test_list_since_and_its_errors(client) -> None:
    sid = _chat(client, "How do I train an adapter?")["session_id"]
    assert _rate(client, session_id=sid, turn=1, rating="up").status_code == 200
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    recent = client.get("/v1/feedback", params={"since": yesterday}, headers=ONE).json()["data"]
    assert sid in {f["session_id"] for f in recent}
    later = client.get("/v1/feedback", params={"since": "2999-01-01T00:00:00Z"}, headers=ONE).json()["data"]
    assert later == []
    bad = client.get("/v1/feedback", params={"since": "last tuesday"}, headers=ONE)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since" and "ISO date" in bad.text
    assert client.get("/v1/feedback", params={"limit": 0}, headers=ONE).status_code == 400
    assert client.get("/v1/feedback").status_code == 401


def test_rating_belongs_to_the_answer_not_the_turn_number(db) -> None:
    memory, store = MemoryStore(db.pool), FeedbackStore(db.pool)
    sid = memory.create_session("ann")
    memory.save_turn(sid, "ann", "first question", "first answer", route="skill", action="skill")
    store.rate(sid, 1, "ann", "up")
    with pytest.raises(SessionNotFound):
        store.rate(sid, 1, "ben", "up")
    with pytest.raises(TurnNotFound):
        store.rate(sid, 2, "ann", "up")
    with pytest.raises(ValueError, match="rating"):
        store.rate(sid, 1, "ann", "sideways")
    memory.clear_session(sid, "ann")  # its messages go, and the next turn is numbered 1 again
    memory.save_turn(sid, "ann", "new question", "new answer")
    assert [f for f in store.list_feedback("ann") if f.session_id == sid] == []
    memory.delete_session(sid, "ann")


def _cli_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"RAGTUNE_HOME": str(home), "RAGTUNE_DATABASE_URL": database_url, "RAGTUNE_DEVICE": "cpu"}


def _conversation(memory: MemoryStore, owner: str, turns: list[tuple[str, str, str]]) -> str:
    sid = memory.create_session(owner)
    for user, answer, route in turns:
        action = "knowledge" if route == "knowledge" else "skill"
        memory.save_turn(sid, owner, user, answer, route=route, action=action)
    return sid


def test_feedback_list_prints_turn_rating_message_answer_correction(tmp_path, database_url, db, no_feedback) -> None:
    memory, store = MemoryStore(db.pool), FeedbackStore(db.pool)
    sid = _conversation(memory, "ann", [("Write a haiku about tea " + "please " * 20, "Green leaves steep", "skill")])
    store.rate(sid, 1, "ann", "down", "Steam rises slowly\n" * 10)
    runner, env = CliRunner(), _cli_env(tmp_path, database_url)
    shown = runner.invoke(cli_main, ["feedback", "list"], env=env)
    assert shown.exit_code == 0, shown.output
    assert f"{sid[:8]}… turn 1  down  skill" in shown.output and "ann" in shown.output
    assert "user:       Write a haiku about tea please" in shown.output and "please please…" in shown.output
    assert "answer:     Green leaves steep" in shown.output and "correction: Steam rises slowly Steam" in shown.output
    (row,) = json.loads(runner.invoke(cli_main, ["feedback", "list", "--json"], env=env).output)
    assert row["correction"] == ("Steam rises slowly\n" * 10).strip() and row["owner"] == "ann" and row["turn"] == 1
    assert runner.invoke(cli_main, ["feedback", "list", "--since", "2999-01-01"], env=env).output == "no feedback\n"
    bad = runner.invoke(cli_main, ["feedback", "list", "--since", "soon"], env=env)
    assert bad.exit_code == 2 and "ISO date" in bad.output


def test_train_from_feedback_dry_run_reports_and_trains_nothing(
    tmp_path, database_url, db, no_feedback, monkeypatch
) -> None:
    import bot.llm.loading

    monkeypatch.setattr(bot.llm.loading, "load_base_model", _must_not_load)
    memory, store = MemoryStore(db.pool), FeedbackStore(db.pool)
    chat = [
        ("Draft a reply to a late-delivery complaint", "Sorry.", "skill"),
        ("make it warmer", "We are so sorry for the wait!", "rewrite"),
        ("What is the refund policy?", "Refunds within 30 days [1].", "knowledge"),
        ("make it shorter", "Sorry!", "rewrite"),
    ]
    sid = _conversation(memory, "ann", chat)
    store.rate(sid, 1, "ann", "down")  # no correction: skipped
    store.rate(sid, 2, "ann", "up")  # approved, with turn 1 as context
    store.rate(sid, 3, "ann", "up")  # knowledge: left out by --route skill
    store.rate(sid, 4, "ann", "down", "Sorry for the wait!")  # corrected
    twin = _conversation(memory, "ben", chat[:2])
    store.rate(twin, 2, "ben", "up")  # the same conversation rated again: a duplicate
    runner, env = CliRunner(), _cli_env(tmp_path, database_url)
    args = ["train", "--from-feedback", "--route", "skill", "--dry-run", "--eval-split", "0.5"]
    result = runner.invoke(cli_main, args, env=env)
    assert result.exit_code == 0, result.output
    assert "1 approved, 1 corrected, 2 skipped, 1 duplicates" in result.output
    assert "skipped 1: thumbs down without a correction" in result.output
    assert "skipped 1: routed to knowledge, not skill" in result.output
    assert "1 training / 1 eval examples" in result.output
    assert "approved (session" in result.output and "1 earlier turns" in result.output
    assert "dry run: nothing trained" in result.output
    written = Path(env["RAGTUNE_HOME"]) / "feedback" / "feedback-dry-run.jsonl"
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert rows[1]["messages"][-1] == {"role": "assistant", "content": "Sorry for the wait!"}
    assert [m.get("weight") for m in rows[1]["messages"]] == [None, 0, None, 0, None, 0, None, None]
    assert not (Path(env["RAGTUNE_HOME"]) / "adapters").exists()
    everything = runner.invoke(cli_main, ["train", "--from-feedback", "--dry-run"], env=env)
    assert "2 approved, 1 corrected, 1 skipped, 1 duplicates" in everything.output
    late = runner.invoke(cli_main, ["train", "--from-feedback", "--dry-run", "--since", "2999-01-01"], env=env)
    assert (
        late.exit_code == 0
        and "skipped 5: rated before --since" in late.output
        and "nothing to train on" in late.output
    )
    real = runner.invoke(cli_main, ["train", "--from-feedback", "--name", "x", "--since", "2999-01-01"], env=env)
    assert real.exit_code == 2 and "no usable feedback" in real.output
    mixed = runner.invoke(cli_main, ["train", str(written), "--name", "x", "--route", "skill"], env=env)
    assert mixed.exit_code == 2 and "--from-feedback" in mixed.output


def _must_not_load(*_args, **_kwargs):
    raise AssertionError("a dry run must not load the model")


def test_ctrl_c_prints_the_exact_resume_command(tmp_path, database_url, monkeypatch) -> None:
    import bot.llm.loading
    import training.pipeline
    from training.trainer import TrainingInterrupted

    calls: list[dict] = []

    def fake_fine_tune(_model, _tokenizer, _base, prepared, name, _registry, config, *, resume=False):
        seen = {"data": prepared.options["data"], "name": name, "rows": len(prepared.split.train), "resume": resume}
        calls.append({**seen, "steps": config.max_steps, "lr": config.learning_rate, "patience": config.patience})
        raise TrainingInterrupted(3, 7, tmp_path / "ckpt" / "step-3")

    monkeypatch.setattr(bot.llm.loading, "load_base_model", lambda *a, **k: SimpleNamespace(
        model=None, tokenizer=None, location=SimpleNamespace(label="fake")))  # fmt: skip
    monkeypatch.setattr(training.pipeline, "fine_tune", fake_fine_tune)
    data = tmp_path / "my data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(6)))
    runner, env = CliRunner(), _cli_env(tmp_path, database_url)
    args = ["train", str(data), "--name", "tone", "--max-steps", "7", "--lr", "0.001", "--patience", "0"]
    stopped = runner.invoke(cli_main, args, env=env)
    assert stopped.exit_code == 130, stopped.output
    assert "interrupted at step 3 of 7; checkpoint saved in" in stopped.output
    command = stopped.output.split("resume with:\n", 1)[1].strip()
    words = shlex.split(command)
    assert words[:3] == ["ragtune", "train", str(data)] and words[-1] == "--resume"
    again = runner.invoke(cli_main, words[1:], env=env)
    assert again.exit_code == 130
    assert calls[1] == {**calls[0], "resume": True}  # the same data, name and options, now resuming
