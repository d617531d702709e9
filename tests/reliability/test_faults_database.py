"""Fault: PostgreSQL stops in the middle of a conversation, then comes back on the same data dir.

Real embedded server (private to this test), real embedder, router and default model. The degraded turn must be
answered on the skill path with the notice, within a bounded time; it is held in the process and written once the
database is back, before the next turn; nothing stored before the outage is lost; `/healthz` says 503 meanwhile.
"""

from __future__ import annotations

import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bot.conversation import TurnOptions
from bot.conversation.pipeline import DB_NOTICE, DB_SAVE_LATER
from bot.conversation.services import build_services
from bot.db import server
from bot.server.api import build_api
from tests.reliability.conftest import private_settings

pytestmark = pytest.mark.slow
OWNER = "fault-user"
SHORT = TurnOptions(max_new_tokens=6)
DEGRADED_TURN_LIMIT_S = 10.0  # pool wait (connect_timeout_s = 2) + routing + 6 tokens on a busy 2-core machine


def _rows(services) -> list[tuple]:
    with services.db.connection() as conn:
        query = "SELECT session_id, turn, role, content FROM messages ORDER BY session_id, turn, role"
        return conn.execute(query).fetchall()


def test_database_stops_mid_conversation_and_recovers(fault_home):
    settings = private_settings(fault_home, connect_timeout_s=2, chat_max_new_tokens=6)
    services = build_services(settings)
    api = FastAPI()
    build_api(api, services)
    client = TestClient(api)
    try:
        memory, conversation = services.memory, services.conversation
        sid = memory.create_session(OWNER)
        other = memory.create_session(OWNER)
        for text in ("Hello, my name is Ada.", "Tell me a short joke."):
            conversation.ask(sid, OWNER, text, SHORT)
        conversation.ask(other, OWNER, "How do I train an adapter?", SHORT)
        before = _rows(services)
        assert len(before) == 6
        assert client.get("/healthz").status_code == 200

        assert server.stop(settings.pgdata_dir) is True  # the fault: the database goes away mid-conversation
        started = time.perf_counter()
        done = conversation.ask(sid, OWNER, "What did I tell you my name was?", SHORT)
        degraded_s = time.perf_counter() - started
        assert done.action == "skill" and done.sources == []
        assert done.reason.startswith(DB_NOTICE)  # the UI badge shows the reason's first clause
        assert done.notice and DB_SAVE_LATER in done.notice and done.turn == 0
        assert done.answer  # the user got an answer, not an error
        assert degraded_s < DEGRADED_TURN_LIMIT_S, f"degraded turn took {degraded_s:.1f}s"
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json()["database"].startswith("error")
        forced = conversation.ask(
            other, OWNER, "What file types are supported?", TurnOptions(route="knowledge", max_new_tokens=4)
        )
        assert forced.action == "skill" and forced.notice  # a forced knowledge turn degrades the same way
        assert len(memory.pending) == 2

        assert server.start(settings.pgdata_dir) == services.db.url  # same data dir, same address
        started = time.perf_counter()
        after = conversation.ask(sid, OWNER, "Thanks, that is all.", SHORT)  # no app restart
        recovered_s = time.perf_counter() - started
        assert after.notice is None and after.turn == 4, (after.turn, after.notice)
        assert not memory.pending
        assert client.get("/healthz").status_code == 200

        rows = _rows(services)
        assert set(before) <= set(rows), "rows stored before the outage were lost"
        assert len(rows) == len(before) + 6  # the two held-back turns and the one after recovery
        stored = memory.messages(sid, OWNER)
        assert [(m.turn, m.role) for m in stored][-4:] == [(3, "user"), (3, "assistant"), (4, "user"), (4, "assistant")]
        assert stored[4].content == "What did I tell you my name was?" and stored[5].reason.startswith(DB_NOTICE)
        print(
            f"\ndatabase outage: degraded turn {degraded_s:.2f}s, first turn after restart {recovered_s:.2f}s, "
            f"rows before {len(before)}, after {len(rows)}, lost {len(set(before) - set(rows))}"
        )
    finally:
        services.close()
