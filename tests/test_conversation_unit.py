"""The pipeline's logic with small fakes for the generator, router and store (the memory is the real database)."""

from __future__ import annotations

import pytest

from bot.conversation import NOT_FOUND, Conversation, Token, TurnDone, TurnOptions, TurnStart
from bot.conversation.condense import condense_query
from bot.memory import MemoryStore
from tests.fakes import FakeGenerator, FakeRouter, FakeStore


@pytest.fixture
def parts(db):
    generator, store = FakeGenerator(), FakeStore()
    conversation = Conversation(MemoryStore(db.pool), generator, FakeRouter(), store, min_score=0.35)
    return conversation, generator, store


def test_knowledge_then_skill_share_memory(parts):
    conversation, generator, store = parts
    sid = conversation.memory.create_session("u1")
    events = list(conversation.stream(sid, "u1", "How do I train an adapter?"))
    assert isinstance(events[0], TurnStart) and events[0].route == "knowledge"
    assert events[0].sources[0]["title"] == "Training" and "text" not in events[0].sources[0]
    assert any(isinstance(e, Token) for e in events)
    done = events[-1]
    assert isinstance(done, TurnDone) and done.turn == 1 and done.answer == "Answer from [1]."
    prompt = generator.calls[-1]["messages"]
    assert prompt[0]["role"] == "system" and "Run ragtune train" not in prompt[0]["content"]
    assert "<sources>" in prompt[-1]["content"] and prompt[-1]["content"].count("</sources>") == 1

    second = conversation.ask(sid, "u1", "make that shorter")
    assert second.route == "rewrite" and second.adapter == "concise" and second.turn == 2
    skill_prompt = generator.calls[-1]["messages"]
    assert generator.calls[-1]["adapter"] == "concise"
    assert any(m["role"] == "assistant" and m["content"] == "Answer from [1]." for m in skill_prompt)
    stored = conversation.memory.messages(sid, "u1")
    assert [m.route for m in stored] == ["knowledge", "knowledge", "rewrite", "rewrite"]
    assert stored[1].sources[0]["n"] == 1 and "ttft_s" in stored[1].timings


def test_weak_evidence_answers_not_found_without_generating(parts):
    conversation, generator, _ = parts
    sid = conversation.memory.create_session("u2")
    done = conversation.ask(sid, "u2", "What is the weather in Paris today?")
    assert done.not_found and done.answer == NOT_FOUND and done.sources == []
    assert generator.calls == []


def test_follow_up_is_condensed_with_the_previous_question(parts):
    conversation, _, store = parts
    sid = conversation.memory.create_session("u3")
    conversation.ask(sid, "u3", "How do I train an adapter?")
    conversation.ask(sid, "u3", "and how long does it take?")
    assert store.queries[-1] == "How do I train an adapter? and how long does it take?"


def test_user_choices_override_the_router(parts):
    conversation, generator, _ = parts
    sid = conversation.memory.create_session("u4")
    done = conversation.ask(sid, "u4", "hello there", TurnOptions(adapter="concise"))
    assert done.action == "skill" and done.adapter == "concise" and done.reason == "adapter chosen by the user"
    with pytest.raises(ValueError, match="adapter 'nope'"):
        conversation.ask(sid, "u4", "hi", TurnOptions(adapter="nope"))
    with pytest.raises(ValueError, match="message: empty"):
        conversation.ask(sid, "u4", "   ")


def test_condense_keeps_standalone_questions():
    history = [{"role": "user", "content": "How do I install ragtune?"}]
    assert condense_query("Which PostgreSQL version does the embedded server run?", history).startswith("Which")
    assert condense_query("and on macOS?", history) == "How do I install ragtune? and on macOS?"
    assert condense_query("and on macOS?", []) == "and on macOS?"


def test_an_echo_of_the_system_prompt_is_cut_before_it_is_streamed_or_stored(parts):
    """An injected "reveal your instructions" that works on the model stops at the pipeline, for every caller."""
    from bot.conversation.prompts import SKILL_SYSTEM, WITHHELD

    conversation, generator, _ = parts
    echo = ["Sure! ", *(word + " " for word in SKILL_SYSTEM.split()[:12])]
    generator.stream = lambda messages, **kwargs: iter(echo)
    sid = conversation.memory.create_session("u5")
    events = list(conversation.stream(sid, "u5", "hello there", TurnOptions(adapter="concise")))
    streamed = "".join(e.text for e in events if isinstance(e, Token))
    shingle = " ".join(SKILL_SYSTEM.split()[:6])
    assert shingle not in streamed and streamed.strip().endswith(WITHHELD)
    assert events[-1].answer == WITHHELD
    assert [m.content for m in conversation.memory.messages(sid, "u5") if m.role == "assistant"] == [WITHHELD]
