"""What a reader sees around an answer: the badge's plain words, its details, sources as plain text, the over-long
message notice, the operator's one log line per turn, and a terminal without library noise."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from bot.conversation import NOT_FOUND, TurnOptions
from bot.conversation.pipeline import DB_NOTICE, Conversation
from bot.conversation.turn import make_badge, plain_reason
from bot.logs import TURN_LOGGER, TerseFilter, turn_line
from bot.memory import MemoryStore, StoredMessage
from tests.fakes import FakeGenerator, FakeRouter, FakeStore

ROUTER_REASON = (
    "knowledge with confidence 0.96 by similarity [knowledge 0.96, skill 0.04]. retrieval strength 0.62 shifted "
    'retrieving routes by +0.84 log-odds. nearest examples: "How do I. reset it" (knowledge, cos 0.71); '
    '"Shorten this" (skill, cos 0.20)'
)
INTERNALS = ("log-odds", "nearest examples", "cos 0.", "[knowledge", "0.96 by", "similarity")


def test_badge_words_say_where_the_answer_comes_from():
    knowledge = make_badge(route="knowledge", action="knowledge", confidence=0.96, reason=ROUTER_REASON, sources=3)
    assert knowledge.label == "From your documents · 3 sources" and knowledge.kind == "knowledge"
    assert knowledge.details.startswith("Route knowledge, chosen by the router (96% sure).")
    assert "match this message well" in knowledge.details
    assert not any(word in knowledge.details for word in INTERNALS), knowledge.details
    one = make_badge(route="knowledge", action="knowledge", confidence=0.9, sources=1)
    assert one.label == "From your documents · 1 source"

    chosen = "adapter chosen by the user"
    skill = make_badge(route="skill", action="skill", confidence=1.0, reason=chosen, adapter="support-tone")
    assert skill.label == "Written by support-tone" and skill.kind == "skill"
    assert skill.details == "Route skill, chosen by you."
    assert make_badge(route="skill", action="skill", confidence=0.7).label == "Written by the model"


def test_not_found_badge_does_not_claim_a_confident_answer():
    badge = make_badge(route="knowledge", action="knowledge", confidence=1.0, reason=ROUTER_REASON, not_found=True)
    assert badge.label == "Not in your documents" and badge.kind == "notfound"
    assert "100%" not in badge.label and "knowledge" not in badge.label
    assert badge.details == "Route knowledge searched your documents; no passage answers it closely enough."


def test_badge_of_a_fallback_a_rework_and_a_database_outage():
    reason = (
        "low confidence (0.41 < 0.50): falling back to the default route 'knowledge'. skill with confidence 0.41 by "
        "combined [skill 0.41, knowledge 0.39]. asks to rework the previous answer, which is skill work (skill). "
        'nearest examples: "x" (skill, cos 0.30) (adapter tone not loaded: base model)'
    )
    badge = make_badge(route="skill", action="skill", confidence=0.41, reason=reason, sources=2)
    assert badge.label == "Written by the model · 2 sources"
    assert "the router was unsure (41%)" in badge.details
    assert "It asks to rework the previous answer." in badge.details
    assert "Adapter tone is not loaded, so the base model answered." in badge.details
    assert not any(word in badge.details for word in INTERNALS), badge.details

    down = make_badge(route="skill", action="skill", confidence=0.0, reason=f"{DB_NOTICE}. x", notice=DB_NOTICE)
    assert down.label == "Without your documents" and down.kind == "degraded"
    assert down.details.startswith("Memory and documents are unavailable")
    assert plain_reason("route chosen by the user") == ["route chosen by the user"]


def test_badge_html_shows_the_words_and_keeps_the_details_on_hover():
    from bot.server.ui import badge_html

    meta = {
        "route": "knowledge",
        "action": "knowledge",
        "confidence": 0.96,
        "reason": ROUTER_REASON,
        "adapter": None,
        "sources": [{}, {}, {}],
        "not_found": False,
    }
    shown = badge_html(meta)
    assert "rt-badge rt-knowledge rt-route-knowledge" in shown
    assert ">From your documents · 3 sources<" in shown
    assert 'title="Route knowledge, chosen by the router (96% sure).' in shown
    assert "log-odds" not in shown and "nearest" not in shown
    quoted = badge_html({**meta, "route": 'a"b', "reason": 'route chosen by the user <script>"'})
    assert "<script>" not in quoted and 'rt-route-a-b"' in quoted


def test_stored_answers_redraw_the_same_badges_and_plain_sources():
    from bot.server.ui import history_from_memory, sources_markdown

    def stored(content, **fields):
        base = {"role": "assistant", "route": "knowledge", "action": "knowledge", "confidence": 1.0, "reason": ""}
        return SimpleNamespace(content=content, **{**base, "adapter": None, "sources": [], **fields})

    chat = history_from_memory(
        [
            SimpleNamespace(role="user", content="what is X?"),
            stored(NOT_FOUND),
            stored("Shorter.", route="skill", action="skill", adapter="tone"),
            stored("Down.", route="skill", action="skill", reason=f"{DB_NOTICE}. x"),
        ]
    )
    assert ">Not in your documents<" in chat[1]["content"] and "100%" not in chat[1]["content"]
    assert ">Written by tone<" in chat[2]["content"]
    assert ">Without your documents<" in chat[3]["content"]

    markdown = sources_markdown(
        [{"n": 1, "title": "Guide", "score": 0.5, "snippet": "## Set-up\n**Run** `ragtune up` and [open it](http://x)"}]
    )
    assert "##" not in markdown and "**Run**" not in markdown and "http://x" not in markdown
    assert "Set-up Run ragtune up and open it" in markdown.replace("\\", "")
    assert StoredMessage  # the shape the UI reads (role, content, route, action, confidence, reason, sources)


def test_an_over_long_message_is_refused_with_a_notice_not_cut():
    from bot.server.ui import ChatHandlers

    settings = SimpleNamespace(max_message_chars=8000, restricted_collections={}, default_collection="default")
    services = SimpleNamespace(settings=settings, memory=None, conversation=None, store=None)
    handlers = ChatHandlers(services)
    text = "a pasted report. " * 1250  # 21,250 characters
    with pytest.warns(UserWarning, match="21,249 characters"):  # gr.Warning outside a page: a Python warning
        updates = list(handlers.respond(text, None, "auto", "all collections", [], None))
    chat, box, session, _, notice = updates[-1]
    assert chat == [] and session is None
    assert box == text, "the message stays in the box as typed"
    assert "21,249 characters" in notice and "8,000" in notice and "Nothing was sent" in notice
    assert handlers.upload_target("all collections") == "default"
    assert handlers.upload_target("legal") == "legal"


def test_one_log_line_per_turn(db, caplog):
    conversation = Conversation(MemoryStore(db.pool), FakeGenerator(), FakeRouter(), FakeStore(), min_score=0.35)
    session = conversation.memory.create_session("log-test")
    with caplog.at_level(logging.INFO, logger=TURN_LOGGER):
        done = conversation.ask(session, "log-test", "How do I train an adapter?", TurnOptions())
    lines = [r.getMessage() for r in caplog.records if r.name == TURN_LOGGER]
    assert len(lines) == 1, lines
    line = lines[0]
    for part in (f"session={session}", "route=knowledge", "confidence=0.80", "sources=1", "adapter=-", "tokens="):
        assert part in line, line
    assert " latency=" in line and line == turn_line(done)


def test_turn_line_fields():
    done = SimpleNamespace(
        session_id="s1",
        turn=3,
        route="rewrite",
        action="skill",
        confidence=0.912,
        sources=[{}, {}],
        not_found=False,
        adapter="tone",
        timings={"total_s": 1.234, "ttft_s": 0.25},
        usage={"prompt_tokens": 120, "completion_tokens": 40},
        notice=None,
    )
    assert turn_line(done) == (
        "turn session=s1 turn=3 route=rewrite action=skill confidence=0.91 sources=2 not_found=no adapter=tone "
        "latency=1.23s first_token=0.25s tokens=120+40"
    )


def test_terse_logging_keeps_ragtune_and_drops_library_chatter():
    terse = TerseFilter()

    def passes(name: str, level: int) -> bool:
        return terse.filter(logging.LogRecord(name, level, __file__, 1, "m", None, None))

    assert passes("bot.conversation.services", logging.INFO)
    assert passes(TURN_LOGGER, logging.INFO)
    assert passes("knowledge.onnx_export", logging.INFO)
    assert not passes("root", logging.INFO) and not passes("root", logging.WARNING)  # ORT's quantiser
    assert not passes("py.warnings", logging.WARNING)  # FutureWarning: is_gradient_checkpointing is deprecated
    assert not passes("onnx_model", logging.INFO) and not passes("fusion_base", logging.INFO)
    assert passes("psycopg.pool", logging.WARNING)
    assert not passes("bot.db.migrations", logging.INFO) and passes("bot.db.server", logging.WARNING)
