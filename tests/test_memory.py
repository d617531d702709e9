"""Shared memory against the real PostgreSQL: owners are isolated, turns are atomic, history survives reopening."""

from __future__ import annotations

import threading

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from bot.db.connection import open_database
from bot.memory import MemoryStore, PostgresChatMessageHistory, SessionNotFound, fold_into_summary, new_session_id


@pytest.fixture(scope="module")
def store(db) -> MemoryStore:
    return MemoryStore(db.pool, window_turns=3)


def test_session_ids_are_long_and_unique():
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) >= 32 for i in ids)


def test_turn_is_stored_with_route_sources_and_timings(store):
    sid = store.create_session("alice")
    sources = [{"n": 1, "title": "Install", "source": "docs/install.md", "page": None, "snippet": "pip", "score": 0.7}]
    turn = store.save_turn(
        sid, "alice", "how to install?", "Run setup [1].", route="knowledge", confidence=0.9, reason="docs",
        sources=sources, adapter=None, timings={"total_s": 1.5},
    )  # fmt: skip
    assert turn == 1
    messages = store.messages(sid, "alice")
    assert [(m.turn, m.role) for m in messages] == [(1, "user"), (1, "assistant")]
    answer = messages[1]
    assert answer.route == "knowledge" and answer.sources == sources and answer.timings == {"total_s": 1.5}
    assert store.get_session(sid, "alice").title.startswith("how to install")


def test_another_owner_sees_nothing(store):
    sid = store.create_session("alice")
    store.save_turn(sid, "alice", "secret question", "secret answer")
    with pytest.raises(SessionNotFound):
        store.messages(sid, "mallory")
    with pytest.raises(SessionNotFound):
        store.get_session(sid, "mallory")
    with pytest.raises(SessionNotFound):
        store.save_turn(sid, "mallory", "inject", "x")
    with pytest.raises(SessionNotFound):
        store.delete_session(sid, "mallory")
    assert all(s.owner == "mallory" for s in store.list_sessions("mallory"))
    assert sid in {s.id for s in store.list_sessions("alice")}
    assert len(store.messages(sid, "alice")) == 2


def test_concurrent_turns_get_consecutive_numbers(store):
    sid = store.create_session("bob")
    threads = [threading.Thread(target=store.save_turn, args=(sid, "bob", f"q{i}", f"a{i}")) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    turns = sorted({m.turn for m in store.messages(sid, "bob")})
    assert turns == [1, 2, 3, 4, 5, 6]


def test_context_folds_old_turns_into_summary(store):
    sid = store.create_session("carol")
    for i in range(1, 6):
        store.save_turn(sid, "carol", f"Question number {i}. More text.", f"Answer number {i}. Details.")
    ctx = store.context(sid, "carol")
    assert sorted({m.turn for m in ctx.messages}) == [3, 4, 5]
    assert "Question number 1." in ctx.summary and "Answer number 2." in ctx.summary
    assert "Details" not in ctx.summary
    assert ctx.next_turn == 6
    again = store.context(sid, "carol")  # folding is stored once, not repeated
    assert again.summary == ctx.summary
    assert store.get_session(sid, "carol").summary_turns == 2


def test_summary_is_bounded():
    from bot.memory import StoredMessage

    old = [StoredMessage(turn=i, role="user", content="word " * 100) for i in range(100)]
    assert len(fold_into_summary("", old, max_chars=500)) <= 500


def test_langchain_history_round_trip_and_restart(store, settings):
    sid = store.create_session("dave")
    history = PostgresChatMessageHistory(store, sid, "dave")
    history.add_messages([HumanMessage("hello"), AIMessage("hi there", additional_kwargs={"route": "skill"})])
    # a new pool is what a restarted app has: nothing comes from process memory
    db2 = open_database(settings)
    try:
        reopened = PostgresChatMessageHistory(MemoryStore(db2.pool), sid, "dave")
        messages = reopened.messages
        assert [type(m).__name__ for m in messages] == ["HumanMessage", "AIMessage"]
        assert messages[1].content == "hi there" and messages[1].additional_kwargs["route"] == "skill"
        with pytest.raises(SessionNotFound):
            PostgresChatMessageHistory(MemoryStore(db2.pool), sid, "eve")
    finally:
        db2.close()
    history.clear()
    assert history.messages == []


def test_delete_session(store):
    sid = store.create_session("erin")
    store.save_turn(sid, "erin", "q", "a")
    store.delete_session(sid, "erin")
    with pytest.raises(SessionNotFound):
        store.messages(sid, "erin")


def test_bad_owner_is_rejected(store):
    with pytest.raises(ValueError, match="owner"):
        store.create_session("")
