"""Property-based tests (hypothesis): the chunker on any text, the API's request schemas on any JSON."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.conversation import Conversation
from bot.conversation.services import Services
from bot.memory import MemoryStore
from bot.server.api import safe_filename
from bot.server.app import create_app
from knowledge.chunking import chunk_document
from knowledge.loaders import LoadedDocument, Section, markdown_sections
from tests.fakes import FakeGenerator, FakeRouter, FakeStore

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=3000)
WORDY = st.lists(
    st.sampled_from(["alpha", "béta", "🦙", "漢字", "e\u0301", "\u202e", "\n", "\n\n", ". ", "# H\n", " "]),
    max_size=600,
).map("".join)


def _check(text: str, size: int, overlap: int) -> None:
    sections = markdown_sections(text)
    doc = LoadedDocument(source="s", title="t", sha256="0", sections=sections)
    chunks = chunk_document(doc, chunk_size=size, chunk_overlap=overlap)
    assert chunks == chunk_document(doc, chunk_size=size, chunk_overlap=overlap)  # deterministic
    previous_start = -1
    for i, chunk in enumerate(chunks):
        assert chunk.ordinal == i and chunk.text.strip() and chunk.text == chunk.text.strip()
        assert text[chunk.char_start : chunk.char_end] == chunk.text  # the span is where the text is
        assert chunk.char_start > previous_start  # in order
        previous_start = chunk.char_start
    covered = [False] * len(text)
    for chunk in chunks:
        covered[chunk.char_start : chunk.char_end] = [True] * (chunk.char_end - chunk.char_start)
    assert all(covered[i] for i, c in enumerate(text) if not c.isspace())  # every visible character is in a chunk
    # merged tiny pieces may exceed the size by at most one small piece plus separators
    assert all(len(c.text) <= size + min(200, size // 4) + overlap for c in chunks)


@settings(max_examples=60, deadline=None)
@given(text=st.one_of(TEXT, WORDY), size=st.integers(50, 400), overlap=st.integers(0, 49))
def test_chunker_covers_any_text_in_order(text, size, overlap):
    _check(text, size, overlap)


def test_chunker_splits_a_megabyte_line_without_spaces():
    text = ("abcdefghij🦙" * 100_000)[: 1024 * 1024]
    doc = LoadedDocument(source="s", title="t", sha256="0", sections=[Section(text)])
    chunks = chunk_document(doc, chunk_size=20000, chunk_overlap=200)
    assert len(chunks) >= len(text) // 20000 and all(len(c.text) <= 20000 for c in chunks)
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text)


@settings(max_examples=200, deadline=None)
@given(name=st.one_of(st.text(max_size=300), st.sampled_from(["..", "../..", "/", "\\", "a/../../b"])))
def test_safe_filename_is_one_harmless_component(name):
    safe = safe_filename(name, "fallback")
    assert safe and "/" not in safe and "\\" not in safe and not safe.startswith(".") and len(safe) <= 120
    assert all(c.isprintable() for c in safe)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "x"]), "content": JSON | st.text(max_size=50)}
)
CHAT = st.fixed_dictionaries(
    {"messages": st.lists(MESSAGE, max_size=3) | JSON},
    optional={
        "model": JSON | st.sampled_from(["ragtune", "knowledge"]),
        "stream": JSON,
        "max_tokens": JSON,
        "temperature": JSON,
        "session_id": JSON,
        "collection": JSON | st.sampled_from(["default", "a b"]),
    },
)
SEARCH = st.fixed_dictionaries(
    {"query": JSON | st.text(max_size=40)},
    optional={"k": JSON, "mode": JSON | st.sampled_from(["dense", "keyword"]), "collection": JSON, "filters": JSON},
)


@pytest.fixture(scope="module")
def client(settings, db) -> TestClient:
    memory = MemoryStore(db.pool)
    conversation = Conversation(memory, FakeGenerator(), FakeRouter(), FakeStore())
    store = FakeStore()
    store.list_collections = lambda: []
    store.search = lambda query, **kwargs: []  # the schema is under test here, not the hits
    return TestClient(
        create_app(Services(settings, db, memory, conversation, store=store)), raise_server_exceptions=False
    )


def _never_500(response) -> None:
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["message"] and error["code"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=CHAT | JSON)
def test_chat_schema_accepts_or_refuses_clearly(client, body):
    body = body if not isinstance(body, dict) or "stream" not in body else {**body, "stream": False}
    _never_500(client.post("/v1/chat/completions", json=body))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=SEARCH | JSON)
def test_search_schema_accepts_or_refuses_clearly(client, body):
    _never_500(client.post("/v1/search", json=body))
