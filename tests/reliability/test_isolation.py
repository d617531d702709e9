"""Isolation and access: sessions per caller, restricted collections, secrets out of logs, the UI login.

Memory, store and embedder are real (PostgreSQL, MiniLM); the generator and router are fakes (tests/fakes.py),
so the checks are about who sees what, fast and independent of the model.
"""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from bot.conversation import Conversation
from bot.conversation.services import Services
from bot.embedder import configured_embedder
from bot.memory import MemoryStore
from bot.server.app import create_app
from bot.server.auth import key_owner, readable_collections
from knowledge import KnowledgeStore
from tests.fakes import FakeGenerator, FakeRouter

KEY_A, KEY_B = "key-alice-s3cret-111", "key-bob-s3cret-222"
A, B = {"Authorization": f"Bearer {KEY_A}"}, {"Authorization": f"Bearer {KEY_B}"}
CAROL, DORA = {"X-Portal-User": "carol"}, {"X-Portal-User": "dora"}
SECRET_FACT = "The launch code for the harbour crane is ZEBRA-4471."
OPENAI_KEY, DB_PASSWORD, UI_PASSWORD = "sk-openai-s3cret-333", "pg-pass-s3cret-444", "ui-pass-s3cret-555"


@pytest.fixture(scope="module")
def parts(settings, db):
    config = settings.model_copy(
        update={
            "api_keys": [KEY_A, KEY_B],
            "trusted_user_header": "X-Portal-User",
            "restricted_collections": {"iso-secret": [key_owner(KEY_A), "dora"]},
            "openai_api_key": OPENAI_KEY,
            "database_url": f"postgresql://ragtune:{DB_PASSWORD}@db.internal:5432/ragtune",
            "chunk_size": 1000,
            "chunk_overlap": 100,
        }
    )
    store = KnowledgeStore(db.pool, configured_embedder(settings))
    memory, generator = MemoryStore(db.pool), FakeGenerator()
    conversation = Conversation(memory, generator, FakeRouter(), store, min_score=0.0)
    services = Services(config, db, memory, conversation, store=store)
    client = TestClient(create_app(services), raise_server_exceptions=False)
    up = client.post(
        "/v1/documents",
        data={"collection": "iso-secret"},
        headers=A,
        files=[("files", ("crane.md", f"# Crane\n\n{SECRET_FACT}".encode(), "text/markdown"))],
    )
    assert up.status_code == 200 and up.json()["added"] == ["crane.md"], up.text
    public = b"# Ferry\n\nThe harbour ferry leaves at noon; the crane is closed on Sundays."
    up = client.post(
        "/v1/documents",
        data={"collection": "iso-public"},
        headers=B,
        files=[("files", ("ferry.md", public, "text/markdown"))],
    )
    assert up.status_code == 200, up.text
    return client, generator, config


def ask(client, headers, text="What is the launch code of the harbour crane? adapter", **extra):
    body = {"messages": [{"role": "user", "content": text}], **extra}
    return client.post("/v1/chat/completions", json=body, headers=headers)


def test_sessions_are_private_to_their_owner(parts):
    client, _, _ = parts
    owners = {"A": A, "B": B, "carol": CAROL, "dora": DORA}
    sessions = {}
    for name, headers in owners.items():
        response = ask(client, headers, "How do I train an adapter?", collection="iso-public")
        assert response.status_code == 200, response.text
        sessions[name] = response.json()["ragtune"]["session_id"]
    for name, headers in owners.items():
        listed = {s["id"] for s in client.get("/v1/sessions", headers=headers).json()["data"]}
        assert sessions[name] in listed
        for other, sid in sessions.items():
            if other == name:
                continue
            assert sid not in listed
            for response in (
                client.get(f"/v1/sessions/{sid}", headers=headers),
                client.delete(f"/v1/sessions/{sid}", headers=headers),
                ask(client, headers, "make that shorter", session_id=sid),
                client.post(
                    "/v1/chat/completions",
                    headers={**headers, "X-Session-Id": sid},
                    json={"messages": [{"role": "user", "content": "make that shorter"}]},
                ),
            ):
                assert response.status_code == 404, (name, other, response.text)  # 404, not 403: existence hidden
                assert response.json()["error"]["code"] == "session_not_found"
    for name, headers in owners.items():  # nobody's delete attempt removed anything
        assert client.get(f"/v1/sessions/{sessions[name]}", headers=headers).json()["messages"]
    assert client.delete(f"/v1/sessions/{sessions['B']}", headers=B).status_code == 200
    assert client.get(f"/v1/sessions/{sessions['B']}", headers=B).status_code == 404


def test_no_anonymous_access_when_keys_are_set(parts):
    client, _, _ = parts
    for response in (
        client.get("/v1/sessions"),
        client.post("/v1/search", json={"query": "crane"}),
        client.get("/v1/sessions", headers={"Authorization": "Bearer key-alice"}),
    ):
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"


def test_restricted_collection_is_invisible_to_others(parts):
    client, generator, config = parts
    for headers in (B, CAROL):
        hits = client.post("/v1/search", json={"query": "launch code crane", "k": 20}, headers=headers).json()["data"]
        assert hits and all(h["collection"] != "iso-secret" and "ZEBRA" not in h["text"] for h in hits)
        for mode in ("keyword", "dense"):
            data = client.post("/v1/search", json={"query": "ZEBRA-4471", "mode": mode}, headers=headers).json()
            assert all("ZEBRA" not in h["text"] for h in data["data"])
        denied = client.post("/v1/search", json={"query": "crane", "collection": "iso-secret"}, headers=headers)
        assert denied.status_code == 404 and denied.json()["error"]["code"] == "collection_not_found"
        assert client.get("/v1/documents", params={"collection": "iso-secret"}, headers=headers).status_code == 404
        docs = client.get("/v1/documents", headers=headers).json()["data"]
        assert docs and all(d["collection"] != "iso-secret" for d in docs)
        assert "iso-secret" not in {c["name"] for c in client.get("/v1/collections", headers=headers).json()["data"]}
        assert ask(client, headers, collection="iso-secret").status_code == 404
        generator.calls.clear()
        answer = ask(client, headers)
        assert answer.status_code == 200
        assert all(s.get("collection") != "iso-secret" for s in answer.json()["ragtune"]["sources"])
        assert generator.calls and "ZEBRA" not in str(generator.calls)
        upload = client.post(
            "/v1/documents",
            data={"collection": "iso-secret"},
            headers=headers,
            files=[("files", ("x.md", b"# X\n\nPlanted text.", "text/markdown"))],
        )
        assert upload.status_code == 403
    for headers in (A, DORA):  # the allowed callers do see it
        hits = client.post(
            "/v1/search", json={"query": "launch code crane", "collection": "iso-secret"}, headers=headers
        ).json()["data"]
        assert hits and "ZEBRA" in hits[0]["text"]
        generator.calls.clear()
        assert ask(client, headers).status_code == 200 and "ZEBRA" in str(generator.calls)
    assert client.get("/v1/me", headers=A).json()["owner"] == key_owner(KEY_A)
    # the UI goes through the same rule: a login named in the list reads it, another login does not
    assert readable_collections("ui:dora", "iso-secret", [], config) == "iso-secret"
    with pytest.raises(LookupError):
        readable_collections("ui:erin", "iso-secret", [], config)
    assert readable_collections("ui:erin", None, ["iso-secret", "iso-public"], config) == ["iso-public"]
    assert readable_collections("ui:erin", None, ["iso-secret"], config) == [""]  # matches nothing, not everything


def test_secrets_never_reach_logs_or_clients(parts, caplog, db):
    client, _, config = parts
    secrets = (KEY_A, KEY_B, OPENAI_KEY, DB_PASSWORD)
    bodies = []
    with caplog.at_level(logging.DEBUG):
        bodies.append(ask(client, A, "How do I train an adapter?").text)
        bodies.append(client.get("/v1/sessions", headers={"Authorization": f"Bearer {KEY_A}x"}).text)
        bodies.append(client.post("/v1/search", json={"query": KEY_B}, headers=B).text)

        class LeakyStore:  # an error whose text carries every secret, as a driver error with a DSN might
            def search(self, *args, **kwargs):
                raise RuntimeError(f"connect to {config.database_url} key={OPENAI_KEY} api={KEY_A} failed")

            def list_collections(self):
                return []

        memory = MemoryStore(db.pool)
        broken = Services(
            config, db, memory, Conversation(memory, FakeGenerator(), FakeRouter(), LeakyStore()), store=LeakyStore()
        )
        leaky = TestClient(create_app(broken), raise_server_exceptions=False)
        for response in (
            ask(leaky, A, "How do I train an adapter?"),
            leaky.post("/v1/search", json={"query": "x"}, headers=A),
        ):
            assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
            bodies.append(response.text)
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert "RuntimeError" in logged  # the failure was logged ...
    for secret in secrets:  # ... without the secrets, and no client saw them either
        assert secret not in logged and all(secret not in body for body in bodies[:2] + bodies[3:]), secret


def test_ui_requires_login_when_users_are_set(settings, db):
    config = settings.model_copy(update={"ui_users": [f"ann:{UI_PASSWORD}"]})
    memory = MemoryStore(db.pool)
    services = Services(config, db, memory, Conversation(memory, FakeGenerator(), FakeRouter(), None), store=None)
    client = TestClient(create_app(services), raise_server_exceptions=False)
    assert client.get("/config").status_code == 401
    assert client.get("/gradio_api/info").status_code == 401
    assert (
        client.post("/gradio_api/queue/join", json={"fn_index": 0, "data": [], "session_hash": "x"}).status_code == 401
    )
    page = client.get("/")
    assert page.status_code == 200 and '"auth_required":true' in page.text.replace(" ", "")
    assert client.post("/login", data={"username": "ann", "password": "wrong"}).status_code == 400
    assert client.post("/login", data={"username": "ann", "password": UI_PASSWORD}).status_code == 200
    assert client.get("/config").status_code == 200  # the login cookie opens it
    open_client = TestClient(create_app(Services(settings, db, memory, services.conversation, store=None)))
    assert open_client.get("/config").status_code == 200  # without ui_users the UI is open (loopback default)
