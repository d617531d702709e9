"""API behaviour with a fake generator/router/store (memory is the real database): errors, auth, SSE, owners."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from bot.conversation import Conversation
from bot.conversation.services import Services
from bot.memory import MemoryStore
from bot.server.app import create_app
from tests.fakes import FakeGenerator, FakeRouter, FakeStore


def _client(settings, db, **overrides) -> TestClient:
    config = settings.model_copy(update=overrides)
    memory = MemoryStore(db.pool)
    conversation = Conversation(memory, FakeGenerator(), FakeRouter(), FakeStore())
    services = Services(config, db, memory, conversation, store=FakeStore())
    return TestClient(create_app(services))


@pytest.fixture(scope="module")
def client(settings, db) -> TestClient:
    return _client(settings, db, api_keys=["key-one", "key-two"], max_message_chars=200, max_request_kb=4)


AUTH = {"Authorization": "Bearer key-one"}


def test_key_required(client):
    response = client.get("/v1/models")
    assert response.status_code == 401 and "API key" in response.json()["error"]["message"]
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    models = client.get("/v1/models", headers=AUTH).json()["data"]
    assert {"ragtune", "knowledge", "skill", "concise"} <= {m["id"] for m in models}


def test_clear_4xx_errors(client):
    bad_json = client.post(
        "/v1/chat/completions", content=b"{not json", headers={**AUTH, "content-type": "application/json"}
    )
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    body = {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}
    unknown = client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    too_long = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 201}]}, headers=AUTH
    )
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "message_too_long"
    huge = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 5000}]}, headers=AUTH
    )
    assert huge.status_code == 413
    no_messages = client.post("/v1/chat/completions", json={"messages": []}, headers=AUTH)
    assert no_messages.status_code == 400 and "messages" in no_messages.json()["error"]["message"]
    not_user = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "assistant", "content": "hi"}]}, headers=AUTH
    )
    assert not_user.status_code == 400


def test_completion_session_and_owner_isolation(client):
    body = {"model": "ragtune", "messages": [{"role": "user", "content": "How do I train an adapter?"}]}
    first = client.post("/v1/chat/completions", json=body, headers=AUTH).json()
    meta = first["ragtune"]
    assert first["choices"][0]["message"]["content"] and meta["route"] == "knowledge" and meta["sources"]
    follow = {"messages": [{"role": "user", "content": "make that shorter"}], "session_id": meta["session_id"]}
    second = client.post("/v1/chat/completions", json=follow, headers=AUTH).json()
    assert second["ragtune"]["turn"] == 2 and second["ragtune"]["adapter"] == "concise"
    session = client.get(f"/v1/sessions/{meta['session_id']}", headers=AUTH).json()
    assert [m["role"] for m in session["messages"]] == ["user", "assistant", "user", "assistant"]
    other = {"Authorization": "Bearer key-two"}
    assert client.get(f"/v1/sessions/{meta['session_id']}", headers=other).status_code == 404
    assert client.post("/v1/chat/completions", json=follow, headers=other).status_code == 404
    assert meta["session_id"] not in {s["id"] for s in client.get("/v1/sessions", headers=other).json()["data"]}


def test_streaming_sse(client):
    body = {"stream": True, "messages": [{"role": "user", "content": "How do I train an adapter?"}]}
    with client.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["ragtune"]["route"] == "knowledge"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Answer from [1]."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["ragtune"]["turn"] == 1


def test_trusted_header_and_open_mode(settings, db):
    portal = _client(settings, db, trusted_user_header="X-Portal-User")
    assert portal.get("/v1/sessions").status_code == 401
    body = {"messages": [{"role": "user", "content": "hello"}]}
    sid = portal.post("/v1/chat/completions", json=body, headers={"X-Portal-User": "ann"}).json()["ragtune"][
        "session_id"
    ]
    assert portal.get(f"/v1/sessions/{sid}", headers={"X-Portal-User": "ann"}).status_code == 200
    assert portal.get(f"/v1/sessions/{sid}", headers={"X-Portal-User": "ben"}).status_code == 404
    open_client = _client(settings, db)
    assert open_client.get("/healthz").json()["database"] == "ok"
    page = open_client.get("/")
    assert page.status_code == 200 and "x-frame-options" not in page.headers


def test_ui_login_when_users_are_configured(settings, db):
    client = _client(settings, db, ui_users=["ann:secret"])
    assert client.post("/login", data={"username": "ann", "password": "wrong"}).status_code >= 400
    assert client.post("/login", data={"username": "ann", "password": "secret"}).status_code == 200


class CountingGenerator(FakeGenerator):
    """A fake that reports token counts and a cut answer, as a real generator's TokenStream does."""

    def stream(self, messages, **kwargs):
        from bot.llm.types import StreamStats, TokenStream

        self.calls.append({"messages": messages, **kwargs})
        stats = StreamStats(prompt_tokens=42, completion_tokens=3, finish_reason="length")
        return TokenStream(iter(["Answer ", "from ", "[1]"]), stats)


@pytest.fixture(scope="module")
def counting(settings, db):
    config = settings.model_copy(update={"api_keys": []})
    memory = MemoryStore(db.pool)
    generator = CountingGenerator()
    conversation = Conversation(memory, generator, FakeRouter(), FakeStore())
    client = TestClient(create_app(Services(config, db, memory, conversation, store=FakeStore())))
    return client, generator


def test_usage_and_finish_reason_are_real(counting):
    client, generator = counting
    body = {
        "model": "knowledge",
        "messages": [{"role": "user", "content": "How do I train an adapter?"}],
        "max_tokens": 3,
        "stop": ["END"],
        "top_p": 0.5,
    }
    reply = client.post("/v1/chat/completions", json=body).json()
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"] == {"prompt_tokens": 42, "completion_tokens": 3, "total_tokens": 45}
    assert generator.calls[-1]["stop"] == ["END"] and generator.calls[-1]["top_p"] == 0.5
    streamed = client.post(
        "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 45


def test_what_ragtune_cannot_do_is_refused_not_ignored(counting):
    client, _ = counting
    ask = [{"role": "user", "content": "hello there"}]
    for extra in (
        {"n": 2},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"logprobs": True},
        {"response_format": {"type": "json_object"}},
        {"seed": 7},
        {"frobnicate": 1},
    ):
        response = client.post("/v1/chat/completions", json={"model": "skill", "messages": ask, **extra})
        assert response.status_code == 400, extra
        error = response.json()["error"]
        assert error["code"] == "unsupported_parameter" and error["param"] == next(iter(extra))
    neutral = {"n": 1, "logprobs": False, "tools": [], "user": "u-1", "response_format": {"type": "text"}}
    assert client.post("/v1/chat/completions", json={"model": "skill", "messages": ask, **neutral}).status_code == 200


def test_one_model_by_id(counting):
    client, _ = counting
    route = client.get("/v1/models/knowledge").json()
    assert route["id"] == "knowledge" and route["object"] == "model" and route["ragtune"] == "route"
    assert client.get("/v1/models/concise").json()["ragtune"] == "adapter"
    missing = client.get("/v1/models/gpt-9")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_a_client_system_message_reaches_the_model_and_its_history_is_stored(counting, db):
    client, generator = counting
    body = {
        "model": "skill",
        "messages": [
            {"role": "system", "content": "Answer in the voice of a pirate."},
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello Ada."},
            {"role": "user", "content": "What is my name?"},
        ],
    }
    reply = client.post("/v1/chat/completions", json=body)
    system = generator.calls[-1]["messages"][0]
    assert system["role"] == "system" and "Answer in the voice of a pirate." in system["content"]
    assert any(m["content"] == "Hello Ada." for m in generator.calls[-1]["messages"])
    session = client.get(f"/v1/sessions/{reply.json()['ragtune']['session_id']}").json()
    turns = [(m["role"], m["content"]) for m in session["messages"]]
    assert turns[:2] == [("user", "My name is Ada."), ("assistant", "Hello Ada.")]
    assert turns[2] == ("user", "What is my name?") and len(turns) == 4
    long = {**body, "messages": [{"role": "system", "content": "x" * 2001}, body["messages"][-1]]}
    too_long = client.post("/v1/chat/completions", json=long)
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "message_too_long"
