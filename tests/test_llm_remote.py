"""The remote backend against a small fake OpenAI-compatible server started in the test (real HTTP)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from bot.config import load_settings
from bot.llm import GeneratorUnavailable, UnknownAdapter, create_generator
from bot.llm.chat_model import RagtuneChatModel
from bot.llm.remote import RemoteGenerator
from tests.fakes import BASE, FakeOpenAI, fake_openai_server


@pytest.fixture()
def fake_server() -> Iterator[tuple[str, type[FakeOpenAI]]]:
    with fake_openai_server({BASE: None, "alpha": BASE}) as served:
        yield served


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


def test_stream_uses_base_model_listed_by_server(fake_server) -> None:
    url, handler = fake_server
    generator = RemoteGenerator(url)
    stream = generator.stream(_messages("hello there"), max_new_tokens=50)
    pieces = list(stream)
    assert len(pieces) > 1
    assert "".join(pieces) == f"[{BASE}] you said: hello there END"
    assert handler.requests[-1]["model"] == BASE and handler.requests[-1]["stream"] is True
    assert stream.stats.completion_tokens == len(pieces) and stream.stats.prompt_tokens == 11
    assert stream.stats.finish_reason == "stop"


def test_adapter_is_selected_by_model_name(fake_server) -> None:
    url, handler = fake_server
    generator = RemoteGenerator(url, model=BASE)
    assert generator.adapters() == ["alpha"]
    text = "".join(generator.stream(_messages("hi"), adapter="alpha"))
    assert text.startswith("[alpha]")
    assert handler.requests[-1]["model"] == "alpha"
    with pytest.raises(UnknownAdapter, match="missing"):
        list(generator.stream(_messages("hi"), adapter="missing"))


def test_generate_non_streaming_reports_usage_and_length(fake_server) -> None:
    url, handler = fake_server
    result = RemoteGenerator(url).generate(_messages("one two three four five"), max_new_tokens=3)
    assert result.text == f"[{BASE}] you said:"
    assert (result.completion_tokens, result.finish_reason) == (3, "length")
    assert handler.requests[-1]["stream"] is False and handler.requests[-1]["max_tokens"] == 3


def test_stop_sequence_is_cut_client_side(fake_server) -> None:
    url, handler = fake_server
    generator = RemoteGenerator(url)
    stream = generator.stream(_messages("alpha beta gamma"), stop=["gam"])
    text = "".join(stream)
    assert text == f"[{BASE}] you said: alpha beta "
    assert stream.stats.finish_reason == "stop"
    assert handler.requests[-1]["stop"] == ["gam"]
    assert generator.generate(_messages("alpha beta gamma"), stop=["beta"]).text == f"[{BASE}] you said: alpha "


def test_astream(fake_server) -> None:
    url, _ = fake_server

    async def collect() -> list[str]:
        return [piece async for piece in RemoteGenerator(url).astream(_messages("async works"), adapter="alpha")]

    pieces = asyncio.run(collect())
    assert "".join(pieces) == "[alpha] you said: async works END"


def test_hot_load_adapter(fake_server) -> None:
    url, handler = fake_server
    generator = RemoteGenerator(url)
    generator.load_adapter("beta", "/srv/adapters/beta")
    assert handler.requests[-1] == {
        "path": "/v1/load_lora_adapter",
        "lora_name": "beta",
        "lora_path": "/srv/adapters/beta",
    }
    assert generator.adapters() == ["alpha", "beta"]
    assert generator.generate(_messages("x"), adapter="beta").text.startswith("[beta]")


def test_server_down_is_one_clear_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    generator = RemoteGenerator(f"http://127.0.0.1:{port}/v1", model=BASE, connect_timeout_s=2)
    started = time.perf_counter()
    with pytest.raises(GeneratorUnavailable, match=f"127.0.0.1:{port}/v1 is not reachable") as info:
        list(generator.stream(_messages("hi")))
    assert "\n" not in str(info.value)
    assert time.perf_counter() - started < 5
    with pytest.raises(GeneratorUnavailable):
        generator.adapters()


def test_timeout_is_one_clear_error(fake_server) -> None:
    url, _ = fake_server
    generator = RemoteGenerator(url, model=BASE, timeout_s=0.5)
    started = time.perf_counter()
    with pytest.raises(GeneratorUnavailable, match="did not answer within 0.5s"):
        generator.generate(_messages("be slow please"))
    assert time.perf_counter() - started < 1.9


def test_bad_arguments_fail_before_any_request(fake_server) -> None:
    url, handler = fake_server
    generator = RemoteGenerator(url, model=BASE)
    for options in ({"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}):
        with pytest.raises(ValueError):
            generator.stream(_messages("hi"), **options)
    with pytest.raises(ValueError, match="unknown role"):
        generator.stream([{"role": "wizard", "content": "hi"}])
    assert handler.requests == []


def test_create_generator_picks_remote_and_chat_model_runs_on_it(fake_server, tmp_path) -> None:
    url, _ = fake_server
    settings = load_settings(home=tmp_path, openai_base_url=url, openai_model=BASE, generation_timeout_s=10)
    generator = create_generator(settings)
    assert isinstance(generator, RemoteGenerator)
    chat = RagtuneChatModel(generator=generator, adapter="alpha", max_new_tokens=20)
    messages = [SystemMessage("Be brief."), HumanMessage("from langchain")]
    reply = chat.invoke(messages)
    assert reply.content == "[alpha] you said: from langchain END"
    assert reply.usage_metadata["output_tokens"] == 6
    assert chat.invoke(messages, adapter=None).content.startswith(f"[{BASE}]")
    streamed = "".join(chunk.content for chunk in chat.stream(messages))
    assert streamed == reply.content

    async def astreamed() -> str:
        return "".join([chunk.content async for chunk in chat.astream(messages)])

    assert asyncio.run(astreamed()) == reply.content
