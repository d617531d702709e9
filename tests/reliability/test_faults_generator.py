"""Fault: a remote (OpenAI-compatible) generator that answers later than `generation_timeout_s`.

The turn ends with a clear error naming the server and the timeout; nothing of it is stored (the memory keeps
whole turns only: a turn without an answer is not written); the next request on the same session works.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bot.conversation import TurnOptions
from bot.conversation.services import build_services
from bot.llm import GeneratorUnavailable
from bot.server.api import build_api, install_error_handlers
from bot.server.auth import LOCAL_OWNER
from tests.fakes import BASE, fake_openai_server  # the fake server sleeps 2 s on a message containing "slow"

OWNER = LOCAL_OWNER  # the API without keys: the local user
TIMEOUT_S = 0.5


@pytest.fixture()
def slow_server() -> Iterator[str]:
    with fake_openai_server({BASE: None}) as (url, _handler):
        yield url


def test_remote_generator_timeout_is_a_clear_error_and_saves_nothing(settings, db, slow_server):
    config = settings.model_copy(update={"openai_base_url": slow_server, "generation_timeout_s": TIMEOUT_S})
    services = build_services(config, db=db)
    memory, conversation = services.memory, services.conversation
    sid = memory.create_session(OWNER)
    conversation.ask(sid, OWNER, "first question", TurnOptions(route="skill"))

    started = time.perf_counter()
    with pytest.raises(GeneratorUnavailable, match=rf"did not answer within {TIMEOUT_S:g}s"):
        conversation.ask(sid, OWNER, "a slow question", TurnOptions(route="skill"))
    assert time.perf_counter() - started < TIMEOUT_S + 5
    assert [m.content for m in memory.messages(sid, OWNER) if m.role == "user"] == ["first question"]

    api = FastAPI()
    install_error_handlers(api, services)
    build_api(api, services)
    client = TestClient(api, raise_server_exceptions=False)
    body = {"model": "skill", "session_id": sid, "messages": [{"role": "user", "content": "slow again"}]}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code in (502, 503, 504), response.text
    assert "did not answer within" in response.json()["error"]["message"]
    streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
    assert '"generation_failed"' in streamed.text and streamed.text.rstrip().endswith("[DONE]")  # in-band error

    body["messages"] = [{"role": "user", "content": "quick one"}]
    after = client.post("/v1/chat/completions", json=body)
    assert after.status_code == 200, after.text
    stored = [m.content for m in memory.messages(sid, OWNER) if m.role == "user"]
    assert stored == ["first question", "quick one"]  # the timed-out turns left nothing behind
