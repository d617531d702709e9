"""Proof before promotion, end to end on the real database and the real model (llama.cpp SmolLM2 and MiniLM):
the team rates real skill answers through the API, `ragtune train --from-feedback` learns a tiny adapter, the
running server hot-loads it, `adapters compare` scores it against the base model on held-out feedback,
`adapters promote` makes the running conversation answer with it at once (no restart), `rollback` undoes it."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from bot.cli import cli as cli_main
from bot.config import load_settings
from bot.conversation import TurnOptions
from bot.conversation.services import build_services
from bot.promotion import DEFAULT_TTL_S
from bot.server.app import create_app

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_CACHE = Path(os.environ.get("RAGTUNE_TEST_MODEL_CACHE", REPO_ROOT / ".ragtune" / "models"))
NAME = "fb-e2e"
QUESTIONS = [
    ("Write a thank-you note to a customer", "Thanks a lot! Your order {{Order Number}} means a great deal to us."),
    ("Draft a reply about a late parcel", "Thanks for waiting! Parcel {{Tracking Number}} arrives within two days."),
    ("Write a welcome message", "Thanks for joining! Your account {{Account ID}} is ready to use."),
    ("Reply to a refund request", "Thanks for asking! Refund {{Refund ID}} is on its way to you."),
    ("Write a short apology", "Thanks for your patience! Ticket {{Ticket Number}} is fixed now."),
    ("Answer a question about opening hours", "Thanks for asking! We are open {{Opening Hours}} every weekday."),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory, database_url) -> dict[str, str]:
    """A home of this module (its own adapters folder) sharing the de-quantised weights between runs."""
    home = tmp_path_factory.mktemp("promotion-home")
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(MODEL_CACHE.resolve())
    return {"RAGTUNE_HOME": str(home), "RAGTUNE_DATABASE_URL": database_url, "RAGTUNE_DEVICE": "cpu"}


@pytest.fixture(scope="module")
def services(env, db):
    config = load_settings(home=Path(env["RAGTUNE_HOME"]), database_url=env["RAGTUNE_DATABASE_URL"], device="cpu")
    built = build_services(config.model_copy(update={"chat_max_new_tokens": 24}), db=db)
    with db.connection() as conn:
        conn.execute("DELETE FROM route_adapters WHERE route = 'skill'")
    yield built
    if built.adapter_watcher is not None:
        built.adapter_watcher.stop()
    with db.connection() as conn:
        conn.execute("DELETE FROM route_adapters WHERE route = 'skill'")
        conn.execute("DELETE FROM adapters WHERE name = %s", (NAME,))


def _wait_for(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _skill_turn(services, sid: str, owner: str, text: str):
    done = services.conversation.ask(sid, owner, text, TurnOptions(route="skill"))
    stored = [m for m in services.memory.messages(sid, owner) if m.role == "assistant" and m.turn == done.turn]
    return done, stored[0].adapter


def test_feedback_train_compare_promote_rollback(services, env, db) -> None:
    client = TestClient(create_app(services))
    started = datetime.now(UTC).isoformat()
    for question, team_reply in QUESTIONS:  # real skill answers, corrected by the team through the API
        body = {"model": "skill", "messages": [{"role": "user", "content": question}]}
        answered = client.post("/v1/chat/completions", json=body)
        assert answered.status_code == 200, answered.text
        turn = answered.json()["ragtune"]
        assert turn["route"] == "skill" and turn["adapter"] is None
        rated = client.post(
            "/v1/feedback",
            json={"session_id": turn["session_id"], "turn": turn["turn"], "rating": "down", "correction": team_reply},
        )
        assert rated.status_code == 200, rated.text

    runner = CliRunner()
    trained = runner.invoke(
        cli_main,
        ["train", "--from-feedback", "--since", started, "--route", "skill", "--name", NAME, "--max-steps", "3",
         "--batch-size", "4", "--max-length", "96", "--eval-split", "0.34", "--lr", "3e-3"],
        env=env,
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert "6 examples from feedback (0 approved, 6 corrected" in trained.output and f"adapter {NAME}" in trained.output
    gguf = Path(trained.output.split("GGUF LoRA for llama.cpp: ")[1].split()[0])  # written by train, beside the adapter
    assert gguf.is_file() and gguf.parent.name == NAME
    _wait_for(lambda: NAME in services.conversation.adapters(), 60, "the running server to hot-load the adapter")

    compared = runner.invoke(
        cli_main, ["adapters", "compare", NAME, "base", "--json", "--max-new-tokens", "24"], env=env
    )
    assert compared.exit_code == 0, compared.output
    report = json.loads(compared.output[compared.output.index("{") :])
    assert report["n"] == 2 and report["new"]["name"] == NAME and report["current"]["name"] == "base"
    held_out = {row["reference"] for row in report["examples"]}
    assert held_out <= {reply for _, reply in QUESTIONS}
    for diff in report["differences"]:
        assert diff["low"] <= diff["mean"] <= diff["high"]
    assert {d["metric"] for d in report["differences"]} == {"similarity", "length_ratio", "form"}

    sid = services.memory.create_session("promo-e2e")
    before, stored = _skill_turn(services, sid, "promo-e2e", "Write a note to a new customer")
    assert before.adapter is None and stored is None

    promoted = runner.invoke(cli_main, ["adapters", "promote", NAME, "--route", "skill", "--by", "e2e"], env=env)
    assert promoted.exit_code == 0 and f"served by {NAME}" in promoted.output, promoted.output
    time.sleep(DEFAULT_TTL_S)  # the running pipeline re-reads promotions at most this often
    after, stored = _skill_turn(services, sid, "promo-e2e", "Write a note to another customer")
    assert after.adapter == NAME and stored == NAME
    assert client.get("/healthz").json()["routes"]["skill"] == {"adapter": NAME, "source": "promoted"}
    assert client.get("/v1/models/skill").json()["adapter"] == NAME

    rolled = runner.invoke(cli_main, ["adapters", "rollback", "--route", "skill", "--by", "e2e"], env=env)
    assert rolled.exit_code == 0 and "configured adapter" in rolled.output, rolled.output
    time.sleep(DEFAULT_TTL_S)
    back, stored = _skill_turn(services, sid, "promo-e2e", "Write one more note")
    assert back.adapter is None and stored is None
