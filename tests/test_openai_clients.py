"""The running app driven by the official `openai` client and LangChain's `ChatOpenAI`, as any OpenAI-compatible
server would be: the real pipeline, PostgreSQL and SmolLM2 behind a real HTTP port (uvicorn in a thread), short
answers. Also: one form for a source's path on every face (API, chat sources, CLI, LangChain).

Answers come from a 135M model, so nothing asserts on wording: finish reasons, token counts, the prompt growing by
the system message, JSON of the asked shape (llama.cpp grammars), and clear 400s for what ragtune refuses (tools).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from bot.conversation.services import Services, build_services
from bot.server.app import create_app
from knowledge.langchain_faces import KnowledgeVectorStore
from knowledge.retriever import KnowledgeRetriever

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHED_MODELS = REPO_ROOT / "test-artifacts" / "llm-home" / "models"  # de-quantised once, shared with other tests
KEY = "openai-clients-key"
QUESTION = [{"role": "user", "content": "Count from one to twenty."}]
SYSTEM = "You are a pirate. Answer every question in the voice of a pirate and end with 'Arr!'."


@dataclass
class App:
    url: str
    services: Services


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(settings, db, tmp_path_factory) -> Iterator[App]:
    """`create_app` on the real services, served by uvicorn on a free port, as `ragtune up` serves it."""
    import uvicorn

    home = tmp_path_factory.mktemp("openai-home")
    CACHED_MODELS.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(CACHED_MODELS)
    config = settings.model_copy(
        update={
            "home": home,
            "device": "cpu",
            "generator_dtype": "float32",
            "generator_threads": 1,
            "chat_max_new_tokens": 16,
            "api_keys": [KEY],
        }
    )
    services = build_services(config, db=db)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield App(f"http://127.0.0.1:{port}", services)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def client(app: App) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{app.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def _chat_openai(app: App, **options) -> ChatOpenAI:
    return ChatOpenAI(base_url=f"{app.url}/v1", api_key=KEY, model="skill", max_retries=0, timeout=120, **options)


# ---------------------------------------------------------------- the official client


def test_models_and_auth(app: App, client: openai.OpenAI) -> None:
    assert {"ragtune", "knowledge", "skill"} <= {m.id for m in client.models.list()}
    assert client.models.retrieve("skill").id == "skill"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")
    stranger = openai.OpenAI(base_url=f"{app.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()


def test_completion_usage_and_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="skill", messages=QUESTION, max_tokens=4)
    choice = completion.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant" and choice.message.content
    usage = completion.usage
    assert usage.completion_tokens == 4 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert completion.model_extra["ragtune"]["route"] == "skill"  # ragtune's own object rides along


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="skill", messages=QUESTION, max_tokens=4, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text and finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4  # the usage chunk comes last
    assert all(c.usage is None for c in chunks[:-1])


def test_system_message_reaches_the_prompt(app: App, client: openai.OpenAI) -> None:
    """The system text is added to the prompt the model reads: at least its own tokens more."""
    plain = client.chat.completions.create(model="skill", messages=QUESTION, max_tokens=1)
    steered = client.chat.completions.create(
        model="skill", messages=[{"role": "system", "content": SYSTEM}, *QUESTION], max_tokens=1
    )
    grown = steered.usage.prompt_tokens - plain.usage.prompt_tokens
    assert grown >= app.services.generator.count_tokens(SYSTEM)
    with pytest.raises(openai.BadRequestError) as refused:  # and an over-long one is refused, not cut
        client.chat.completions.create(
            model="skill", messages=[{"role": "system", "content": "x " * 1500}, *QUESTION], max_tokens=1
        )
    assert refused.value.status_code == 400 and refused.value.code == "message_too_long"


CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
    "additionalProperties": False,
}


def test_structured_output_is_json_of_the_asked_shape(client: openai.OpenAI) -> None:
    """llama.cpp constrains the answer with a grammar: valid JSON, and the schema's keys and types."""
    ask = [{"role": "user", "content": "Name a city and a number of days, as JSON."}]
    anything = client.chat.completions.create(
        model="auto", messages=ask, max_tokens=60, response_format={"type": "json_object"}
    )
    text = anything.choices[0].message.content
    assert text.lstrip().startswith("{")  # any object: a small model may go on adding keys until max_tokens
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    shaped = client.chat.completions.create(
        model="auto",
        messages=ask,
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "trip", "schema": CITY_SCHEMA}},
    )
    assert shaped.choices[0].finish_reason == "stop"  # the schema allows no other key: the object closes
    data = json.loads(shaped.choices[0].message.content)
    assert isinstance(data["city"], str) and isinstance(data["days"], int)
    with pytest.raises(openai.BadRequestError) as quoted:  # knowledge answers quote documents: no JSON shape
        client.chat.completions.create(model="knowledge", messages=ask, response_format={"type": "json_object"})
    assert quoted.value.status_code == 400 and "skill route" in str(quoted.value)
    with pytest.raises(openai.BadRequestError) as no_schema:
        client.chat.completions.create(model="skill", messages=ask, response_format={"type": "json_schema"})
    assert no_schema.value.param == "response_format"


def test_tools_are_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as tools:
        client.chat.completions.create(
            model="skill",
            messages=QUESTION,
            tools=[{"type": "function", "function": {"name": "count", "parameters": {"type": "object"}}}],
        )
    assert tools.value.code == "unsupported_parameter" and tools.value.param == "tools"


# ---------------------------------------------------------------- LangChain's ChatOpenAI


class Numbers(BaseModel):
    numbers: list[int]


class Trip(BaseModel):
    city: str
    days: int


def test_chat_openai_invoke_stream_and_system(app: App) -> None:
    message = _chat_openai(app, max_tokens=4).invoke([HumanMessage(QUESTION[0]["content"])])
    assert message.content and message.response_metadata["finish_reason"] == "length"
    assert message.usage_metadata["output_tokens"] == 4 and message.usage_metadata["input_tokens"] > 0
    full = None
    for chunk in _chat_openai(app, max_tokens=4, stream_usage=True).stream(QUESTION[0]["content"]):
        full = chunk if full is None else full + chunk
    assert full.content and full.response_metadata["finish_reason"] == "length"
    assert full.usage_metadata["output_tokens"] == 4
    steered = _chat_openai(app, max_tokens=1).invoke([SystemMessage(SYSTEM), HumanMessage(QUESTION[0]["content"])])
    plain = _chat_openai(app, max_tokens=1).invoke([HumanMessage(QUESTION[0]["content"])])
    grown = steered.usage_metadata["input_tokens"] - plain.usage_metadata["input_tokens"]
    assert grown >= app.services.generator.count_tokens(SYSTEM)


def test_chat_openai_structured_output(app: App) -> None:
    """json_schema works (a grammar guarantees the shape); function calling needs tools, which are refused."""
    trip = _chat_openai(app, max_tokens=60).with_structured_output(Trip, method="json_schema", strict=True)
    result = trip.invoke("Name a city and a number of days.")
    assert isinstance(result, Trip) and isinstance(result.days, int)
    with pytest.raises(openai.BadRequestError) as refused:
        _chat_openai(app).with_structured_output(Numbers, method="function_calling").invoke("Give me three numbers.")
    assert refused.value.status_code == 400 and refused.value.param in ("tools", "tool_choice")


# ---------------------------------------------------------------- one form for a source's path


def test_every_face_shows_one_source_form(app: App, client: openai.OpenAI, settings, tmp_path, monkeypatch) -> None:
    """A file ingested from the terminal is `<path relative to the folder ingested>` on the API, in the chat's
    sources, in the CLI and in LangChain: never the server's absolute path on one face and a bare name on another."""
    from bot.cli import cli

    collection = f"src-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "handbook"
    (folder / "leave").mkdir(parents=True)
    (folder / "leave" / "parental.md").write_text(
        "# Parental leave\n\nParental leave at the quillfeather company lasts twenty weeks, fully paid.\n"
    )
    expected = "leave/parental.md"
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RAGTUNE_HOME", str(settings.home))
    runner = CliRunner()
    try:
        result = runner.invoke(cli, ["ingest", str(folder), "-c", collection, "--quiet"])
        assert result.exit_code == 0, result.output
        searched = runner.invoke(cli, ["search", "quillfeather parental leave", "-c", collection, "--json"])
        assert [hit["source"] for hit in json.loads(searched.output)] == [expected]
        listed = runner.invoke(cli, ["docs", "list", "-c", collection, "--json"])
        assert [doc["source"] for doc in json.loads(listed.output)] == [expected]

        headers = {"Authorization": f"Bearer {KEY}"}
        documents = httpx.get(f"{app.url}/v1/documents", params={"collection": collection}, headers=headers)
        assert [d["source"] for d in documents.json()["data"]] == [expected]
        body = {"query": "quillfeather parental leave", "collection": collection, "k": 1}
        found = httpx.post(f"{app.url}/v1/search", json=body, headers=headers).json()["data"]
        assert [h["source"] for h in found] == [expected]
        filtered = httpx.post(f"{app.url}/v1/search", json={**body, "filters": {"source": expected}}, headers=headers)
        assert len(filtered.json()["data"]) == 1  # the form shown is the form a filter takes

        answer = client.chat.completions.create(
            model="knowledge",
            messages=[{"role": "user", "content": "How long is parental leave at quillfeather?"}],
            max_tokens=8,
            extra_body={"collection": collection},
        )
        assert {s["source"] for s in answer.model_extra["ragtune"]["sources"]} == {expected}

        store = app.services.store
        retrieved = KnowledgeRetriever(store=store, collection=collection, k=1).invoke("parental leave")
        assert [d.metadata["source"] for d in retrieved] == [expected]
        assert [d.id for d in KnowledgeVectorStore(store, collection).similarity_search("leave", k=1)] == [expected]
    finally:
        app.services.store.delete_collection(collection)
