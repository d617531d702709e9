"""The team teaches the bot from the chat page: a thumb on an answer and a corrected reply are stored for the turn
that answer belongs to (real database, fake generator), a resumed conversation shows its thumbs again, and a
missing session, an unsaved answer, another owner or a database outage give a clear message and lose nothing."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import gradio as gr
import pytest
from psycopg_pool import PoolTimeout

from bot.conversation.pipeline import Conversation
from bot.feedback import MAX_CORRECTION_CHARS, FeedbackStore
from bot.memory import MemoryStore
from bot.server.ui import ALL_COLLECTIONS, AUTO, NO_TARGET_LABEL, SAVED, ChatHandlers, answer_turns, message_text
from tests.fakes import FakeGenerator, FakeRouter, FakeStore


@pytest.fixture
def handlers(settings, db) -> ChatHandlers:
    memory = MemoryStore(db.pool)
    conversation = Conversation(memory, FakeGenerator(), FakeRouter(), FakeStore(), min_score=0.35)
    return ChatHandlers(SimpleNamespace(settings=settings, db=db, memory=memory, conversation=conversation))


def _request(name: str | None = None) -> gr.Request:
    return gr.Request(username=name or f"team-{uuid.uuid4().hex[:8]}", headers={})


def _as_sent(chat: list) -> list:
    """The chat as a handler receives it from the page: through the Chatbot's own postprocess and preprocess."""
    chatbot = gr.Chatbot()
    return chatbot.preprocess(chatbot.data_model(root=chatbot.postprocess(chat).root))


def _ask(handlers: ChatHandlers, request: gr.Request, chat: list, session_id: str | None, message: str):
    chat, _, session_id, *_ = list(handlers.respond(message, session_id, AUTO, ALL_COLLECTIONS, chat, request))[-1]
    return _as_sent(chat), session_id


def _two_turns(handlers: ChatHandlers, request: gr.Request):
    chat, session_id = _ask(handlers, request, [], None, "How do I train an adapter?")
    chat, session_id = _ask(handlers, request, chat, session_id, "make that shorter")
    return chat, session_id


def _like(index: int, liked: bool) -> gr.LikeData:
    return gr.LikeData(None, {"index": index, "value": [], "liked": liked})


def _stored(handlers: ChatHandlers, session_id: str, request: gr.Request) -> dict:
    return FeedbackStore(handlers.services.db.pool).of_session(session_id, handlers.owner_of(request))


def test_thumbs_and_a_correction_are_stored_for_the_answer_clicked(handlers):
    request = _request()
    chat, sid = _two_turns(handlers, request)
    # the knowledge answer has a Sources box: [question, answer, sources, question, answer]
    assert [m["role"] for m in chat] == ["user", "assistant", "assistant", "user", "assistant"]
    assert message_text(chat[2]["content"]).startswith("**\\[1\\]")

    thumbs, target, label, box, accordion, status = handlers.rate(chat, sid, None, "", _like(1, True), request)
    assert status.startswith(SAVED) and "answer 1" in status
    assert thumbs["feedback_value"] == ["Like", None] and target is None  # a thumb up picks nothing to correct
    assert box == {"__type__": "update"} and accordion == {"__type__": "update"}

    thumbs, target, label, box, accordion, status = handlers.rate(chat, sid, None, "", _like(4, False), request)
    assert thumbs["feedback_value"] == ["Like", "Dislike"] and "Correct it below" in status
    assert target["turn"] == 2 and "make that shorter" in label and accordion["open"] is True
    assert box == "Answer from [1]."  # the answer's own text, to edit (no badge)
    assert {t: f.rating for t, f in _stored(handlers, sid, request).items()} == {1: "up", 2: "down"}

    fixed = "Run `ragtune train DATA --name NAME`."
    thumbs, target, label, status = handlers.save_correction(fixed, chat, sid, target, request)
    assert status == f"{SAVED} (correction of answer 2)" and target["turn"] == 2
    saved = _stored(handlers, sid, request)[2]
    assert (saved.rating, saved.correction, saved.user_message) == ("down", fixed, "make that shorter")

    # a thumb changed afterwards keeps the team's correction; a thumb on the Sources box rates its answer
    handlers.rate(chat, sid, target, fixed, _like(4, True), request)
    handlers.rate(chat, sid, target, fixed, _like(2, False), request)
    ratings = _stored(handlers, sid, request)
    assert (ratings[2].rating, ratings[2].correction) == ("up", fixed)
    assert (ratings[1].rating, ratings[1].correction) == ("down", None)


def test_a_correction_without_a_pick_goes_to_the_last_answer_and_bad_text_is_refused(handlers):
    request = _request()
    chat, sid = _two_turns(handlers, request)
    assert handlers.save_correction("x", [], None, None, request)[-1].startswith("⚠ There is no answer")
    assert (
        handlers.save_correction("   ", chat, sid, None, request)[-1] == "⚠ Type the corrected answer in the box first."
    )
    too_long = "y" * (MAX_CORRECTION_CHARS + 1)
    assert "the limit is 20,000" in handlers.save_correction(too_long, chat, sid, None, request)[-1]
    assert _stored(handlers, sid, request) == {}

    # a pick from another conversation does not count: the last answer of this one is corrected (rating: down)
    thumbs, target, label, status = handlers.save_correction(
        " Shorter. ", chat, sid, {"session": "x", "turn": 1}, request
    )
    assert status.endswith("(correction of answer 2)") and thumbs["feedback_value"] == [None, "Dislike"]
    assert (_stored(handlers, sid, request)[2].correction, _stored(handlers, sid, request)[2].rating) == (
        "Shorter.",
        "down",
    )
    assert handlers.reset_feedback() == (None, NO_TARGET_LABEL, "")


def test_an_unsaved_correction_stays_in_the_box_when_another_answer_is_thumbed_down(handlers):
    request = _request()
    chat, sid = _two_turns(handlers, request)
    _, target, _, box, _, _ = handlers.rate(chat, sid, None, "", _like(4, False), request)
    typed = box + " Edited by the team."
    _, kept, label, box, accordion, status = handlers.rate(chat, sid, target, typed, _like(1, False), request)
    assert kept == target and label == {"__type__": "update"} and box == {"__type__": "update"}
    assert "unsaved correction is still in the box" in status and accordion["open"] is True
    handlers.save_correction(typed, chat, sid, kept, request)
    ratings = _stored(handlers, sid, request)
    assert ratings[2].correction == typed and ratings[1].correction is None and ratings[1].rating == "down"

    # an untouched prefill follows the newly picked answer
    _, target, label, box, _, _ = handlers.rate(chat, sid, {**kept, "prefill": "abc"}, "abc", _like(1, False), request)
    assert target["turn"] == 1 and box.startswith("Answer from") and "train an adapter" in label


def test_a_thumb_clicked_off_withdraws_the_rating_but_never_a_correction(handlers):
    request = _request()
    chat, sid = _two_turns(handlers, request)
    handlers.rate(chat, sid, None, "", _like(1, True), request)
    handlers.save_correction("Shorter.", chat, sid, None, request)
    off = gr.LikeData(None, {"index": 1, "value": [], "liked": ""})  # what the page sends when a thumb is unclicked
    thumbs, *_, status = handlers.rate(chat, sid, None, "", off, request)
    assert status == "Rating of answer 1 removed." and thumbs["feedback_value"] == [None, "Dislike"]
    *_, status = handlers.rate(chat, sid, None, "", gr.LikeData(None, {"index": 4, "value": [], "liked": ""}), request)
    assert "correction of answer 2 stays saved" in status
    assert {t: (f.rating, f.correction) for t, f in _stored(handlers, sid, request).items()} == {
        2: ("down", "Shorter.")
    }


def test_a_resumed_conversation_shows_its_thumbs_and_a_new_one_none(handlers):
    request = _request()
    chat, sid = _two_turns(handlers, request)
    handlers.rate(chat, sid, None, "", _like(4, False), request)
    session, shown = handlers.resume(sid, request)
    assert session == sid and shown["feedback_value"] == [None, "Dislike"]
    assert [m["role"] for m in shown["value"]] == [m["role"] for m in chat]
    assert handlers.new_session(request)[1] == {"__type__": "update", "value": [], "feedback_value": []}


def test_an_answer_not_saved_is_not_rated_and_a_failed_turn_does_not_shift_the_others(handlers):
    request = _request()
    chat, sid = _two_turns(handlers, request)
    streaming = _as_sent([*chat, {"role": "user", "content": "and then?"}, {"role": "assistant", "content": "Ans"}])
    *_, status = handlers.rate(streaming, sid, None, "", _like(6, False), request)
    assert status.startswith("⚠ That answer is not saved yet") and _stored(handlers, sid, request) == {}
    *_, status = handlers.rate(chat, None, None, "", _like(1, True), request)
    assert status == "⚠ Nothing to rate yet: send a message first."

    # a question that failed stays on screen but was never stored: the next answer is still turn 2
    failed = _as_sent([*chat[:3], {"role": "user", "content": "this one failed"}, *chat[3:]])
    assert answer_turns(failed, handlers.memory.messages(sid, handlers.owner_of(request))) == {1: 1, 2: 1, 5: 2}
    handlers.rate(failed, sid, None, "", _like(5, True), request)
    assert {t: f.rating for t, f in _stored(handlers, sid, request).items()} == {2: "up"}


def test_another_owner_cannot_rate_or_correct(handlers):
    alice, bob = _request(), _request()
    chat, sid = _two_turns(handlers, alice)
    *_, status = handlers.rate(chat, sid, None, "", _like(1, False), bob)
    assert status == "⚠ That conversation no longer exists: nothing was saved."
    assert handlers.save_correction("mine", chat, sid, None, bob)[-1].startswith("⚠ That conversation no longer")
    assert _stored(handlers, sid, alice) == {} and _stored(handlers, sid, bob) == {}


class DownPool:
    """A pool whose server has gone away: every connection times out, as psycopg_pool says after its timeout."""

    def connection(self, *args, **kwargs):
        raise PoolTimeout("couldn't get a connection after 5.00 sec")


def test_a_database_outage_says_so_and_keeps_the_text(handlers):
    request = _request()
    chat, sid = _two_turns(handlers, request)
    down = ChatHandlers(
        SimpleNamespace(
            settings=handlers.settings,
            db=SimpleNamespace(pool=DownPool()),
            memory=MemoryStore(DownPool()),
            conversation=None,
        )
    )
    target = {"session": sid, "turn": 2, "prefill": "x"}
    thumbs, kept, label, box, accordion, status = down.rate(chat, sid, target, "typed", _like(4, False), request)
    assert status.startswith("⚠ The database is unavailable right now: nothing was saved.")
    assert kept == target and box == {"__type__": "update"} and thumbs == {"__type__": "update"}
    thumbs, kept, label, status = down.save_correction("The team's answer.", chat, sid, target, request)
    assert "Your correction is still in the box" in status and kept == target
    assert _stored(handlers, sid, request) == {}
    # the page still opens the conversation's thumbs as none when only the ratings cannot be read
    assert down._thumbs(chat, [], sid, "x") == [None, None]


def test_the_adapter_picker_says_which_adapter_serves_each_writing_route(settings, db):
    """After `ragtune adapters promote`, the page says so under the Adapter picker (knowledge routes are not listed)."""
    from bot.promotion import Serving

    class Promoted:
        def resolve(self, route, configured, loaded):
            return Serving("concise", "promoted") if route == "skill" else Serving(configured, "configured")

    router = FakeRouter()
    router.routes = [
        SimpleNamespace(name="knowledge", action="knowledge", adapter=None),
        SimpleNamespace(name="skill", action="skill", adapter=None),
        SimpleNamespace(name="draft", action="skill", adapter=None),
    ]
    memory = MemoryStore(db.pool)
    conversation = Conversation(memory, FakeGenerator(), router, FakeStore(), promotions=Promoted())
    page = ChatHandlers(SimpleNamespace(settings=settings, db=db, memory=memory, conversation=conversation))
    assert page.serving_text() == "Serving now · skill: concise (promoted), draft: base model"
    adapter_update = page.on_load(_request())[1]
    assert adapter_update["info"] == page.serving_text() and "concise" in adapter_update["choices"]
