"""The pipeline end to end on the real parts: PostgreSQL, the demo docs, MiniLM, the router and SmolLM2.

The model is tiny: nothing here asserts on the wording of an answer, only on routes, sources, memory and
the not-found decision, which do not depend on it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bot.conversation import NOT_FOUND, TurnOptions
from bot.conversation.services import DEMO_COLLECTION, build_services

pytestmark = pytest.mark.slow
DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def services(settings, db):
    config = settings.model_copy(update={"chat_max_new_tokens": 40})
    built = build_services(config, db=db)
    # other test modules share this database, so load the docs explicitly (load_demo_docs skips a non-empty store)
    report = built.store.ingest([str(DOCS)], collection=DEMO_COLLECTION, glob="**/*.md")
    assert not report.failed, report.failed
    return built


def test_knowledge_answer_then_rewrite_share_memory(services):
    memory, conversation = services.memory, services.conversation
    sid = memory.create_session("real-user")
    first = conversation.ask(sid, "real-user", "How do I train an adapter?")
    assert first.route == "knowledge" and not first.not_found
    assert first.sources and any(
        "train" in s["title"].lower() or "train" in s["snippet"].lower() for s in first.sources
    )
    assert all(s["collection"] == DEMO_COLLECTION for s in first.sources)
    assert first.answer and first.timings["ttft_s"] > 0

    second = conversation.ask(sid, "real-user", "make that shorter")
    assert second.action == "skill", (second.route, second.reason)
    stored = memory.messages(sid, "real-user")
    assert [(m.turn, m.role) for m in stored] == [(1, "user"), (1, "assistant"), (2, "user"), (2, "assistant")]
    assert stored[1].sources == first.sources and stored[1].route == "knowledge"
    assert stored[3].route == second.route and stored[3].timings["total_s"] > 0


def test_off_topic_question_is_not_found(services):
    sid = services.memory.create_session("real-user")
    done = services.conversation.ask(
        sid, "real-user", "Who won the football world cup in 2018?", TurnOptions(route="knowledge")
    )
    assert done.not_found and done.answer == NOT_FOUND and done.sources == []
    assert done.timings["best_score"] < services.conversation.min_score


def test_terminal_chat_uses_the_same_pipeline(services, settings, monkeypatch):
    from bot.cli import cli

    monkeypatch.setenv("RAGTUNE_HOME", str(settings.home))
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RAGTUNE_CHAT_MAX_NEW_TOKENS", "20")
    result = CliRunner().invoke(cli, ["chat"], input="What file types can I upload?\n/quit\n")
    assert result.exit_code == 0, result.output
    assert "[From your documents" in result.output or "[Not in your documents" in result.output
    assert "ragtune> " in result.output
    session_id = result.output.split("session ", 1)[1].split()[0]
    stored = services.memory.messages(session_id, "local")
    assert [m.role for m in stored] == ["user", "assistant"] and stored[1].route == "knowledge"
    missing = CliRunner().invoke(cli, ["chat", "--session", "x" * 32], input="")
    assert missing.exit_code == 2 and "not found" in missing.output


def test_api_on_the_real_pipeline(services):
    import json

    from fastapi.testclient import TestClient

    from bot.server.app import create_app

    client = TestClient(create_app(services))
    models = {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert {"ragtune", "knowledge", "skill"} <= models

    body = {"stream": True, "max_tokens": 12, "messages": [{"role": "user", "content": "How do I upload a PDF?"}]}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert chunks[0]["ragtune"]["route"] == "knowledge" and chunks[0]["ragtune"]["sources"]
    assert chunks[-1]["ragtune"]["turn"] == 1
    session = client.get(f"/v1/sessions/{chunks[0]['ragtune']['session_id']}").json()
    assert session["messages"][1]["sources"][0]["title"]

    files = [
        ("files", ("notes.md", b"# Parking\n\nThe office car park opens at 7 am for ragtune staff.", "text/markdown")),
        ("files", ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "application/pdf")),
    ]
    report = client.post("/v1/documents", data={"collection": "api-upload"}, files=files).json()
    assert report["added"] == ["notes.md"] and report["chunks"] >= 1
    assert [f["file"] for f in report["failed"]] == ["broken.pdf"] and report["failed"][0]["reason"]
    hits = services.store.search("When does the car park open?", collection="api-upload", k=1)
    assert hits and "7 am" in hits[0].text


def test_message_is_embedded_once_for_search_and_router(services):
    """In the app the router and the store share one embedder, so a turn embeds the message once for both."""
    import numpy as np

    conversation, message = services.conversation, "How do I train an adapter?"
    vector = conversation._shared_message_vector(message)
    assert vector is not None
    assert np.allclose(vector, services.store.embedder.embed_query(message), atol=1e-4)
    shared = services.router.decide(message, retrieval_strength=0.5, embedding=vector)
    alone = services.router.decide(message, retrieval_strength=0.5)
    assert (shared.route, round(shared.confidence, 4)) == (alone.route, round(alone.confidence, 4))
    with_vector = services.store.search(message, collection=DEMO_COLLECTION, k=3, embedding=vector)
    without = services.store.search(message, collection=DEMO_COLLECTION, k=3)
    assert [h.chunk_id for h in with_vector] == [h.chunk_id for h in without]
