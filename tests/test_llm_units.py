"""Backend-independent parts of generation: stop sequences, incremental decoding, the context guard."""

from __future__ import annotations

import asyncio
import json
import os
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.llm.adapters import check_adapter_name, find_adapter_dirs, read_adapter_config
from bot.llm.context import fit_messages
from bot.llm.local import resolve_dtype
from bot.llm.streaming import StopFilter, iterate_in_thread
from bot.llm.types import ContextOverflow
from knowledge.cpu_share import default_threads


def _run(pieces: list[str], stops: list[str]) -> str:
    stopper = StopFilter(stops)
    out = "".join(stopper.feed(piece) for piece in pieces)
    return out + stopper.flush()


@given(
    text=st.text(alphabet="ab <|>", max_size=40),
    stops=st.lists(st.text(alphabet="ab <|>", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
)
def test_stop_filter_is_independent_of_chunking(text: str, stops: list[str], cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    positions = [text.find(stop) for stop in stops if stop in text]
    expected = text[: min(positions)] if positions else text
    assert _run(pieces, stops) == expected


def test_stop_filter_holds_back_only_possible_prefixes() -> None:
    stopper = StopFilter(["<|end|>"])
    assert stopper.feed("Hello <|") == "Hello "
    assert stopper.feed("x") == "<|x"
    assert stopper.feed(" done <|en") == " done "
    assert stopper.feed("d|> ignored") == ""
    assert stopper.stopped and stopper.feed("more") == "" and stopper.flush() == ""


def _count(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].split()) + 2 for m in messages)


def test_fit_messages_keeps_system_and_current_and_newest_turns() -> None:
    system = {"role": "system", "content": "rules " * 5}
    turns = []
    for i in range(5):
        turns += [{"role": "user", "content": f"q{i} " * 10}, {"role": "assistant", "content": f"a{i} " * 10}]
    current = {"role": "user", "content": "now " * 5}
    messages = [system, *turns, current]
    assert fit_messages(messages, max_new_tokens=10, context_length=1000, count_prompt=_count) == messages
    fitted = fit_messages(messages, max_new_tokens=10, context_length=60, count_prompt=_count)
    assert fitted == [system, *turns[-2:], current]  # a3 would fit too, but not as an orphan answer
    with pytest.raises(ContextOverflow, match="need 14 tokens but only 3 fit"):
        fit_messages([system, current], max_new_tokens=10, context_length=13, count_prompt=_count)
    with pytest.raises(ContextOverflow, match="leaves no room"):
        fit_messages([current], max_new_tokens=10, context_length=10, count_prompt=_count)


def test_fit_messages_never_starts_history_with_an_orphan_answer() -> None:
    turns = [{"role": "user", "content": "q " * 10}, {"role": "assistant", "content": "a " * 3}]
    messages = [*turns, {"role": "user", "content": "x"}]
    fitted = fit_messages(messages, max_new_tokens=1, context_length=12, count_prompt=_count)
    assert fitted == [messages[-1]]


@pytest.mark.parametrize("bad", [[], [{"role": "user"}], [{"role": "robot", "content": "x"}], ["hi"]])
def test_malformed_messages_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="messages"):
        fit_messages(bad, max_new_tokens=1, context_length=100, count_prompt=_count)


def test_adapter_names_and_directories(tmp_path) -> None:
    assert check_adapter_name("support-voice_2") == "support-voice_2"
    for bad in ("", "a.b", "-x", "x" * 65, "a/b"):
        with pytest.raises(ValueError, match="adapter name"):
            check_adapter_name(bad)
    with pytest.raises(ValueError, match="no such directory"):
        read_adapter_config(tmp_path / "missing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        read_adapter_config(tmp_path / "broken")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ValueError, match="no adapter_model.safetensors"):
        read_adapter_config(tmp_path / "noweights")
    (tmp_path / "plain").mkdir()
    assert sorted(find_adapter_dirs(tmp_path)) == ["broken", "noweights"]
    assert find_adapter_dirs(tmp_path / "absent") == {}


def test_resolve_dtype_explicit_choice_wins() -> None:
    assert resolve_dtype("float16", "cpu") == "float16"
    assert resolve_dtype("auto", "cpu") in {"float32", "bfloat16"}


def test_iterate_in_thread_runs_iterator_on_one_thread_and_stops_early() -> None:
    seen_threads: set[int] = set()
    closed = threading.Event()

    def pieces():
        try:
            for i in range(1000):
                seen_threads.add(threading.get_ident())
                yield str(i)
        finally:
            closed.set()

    async def take_three() -> list[str]:
        out = []
        stream = iterate_in_thread(pieces)
        async for piece in stream:
            out.append(piece)
            if len(out) == 3:
                break
        await stream.aclose()
        return out

    assert asyncio.run(take_three()) == ["0", "1", "2"]
    assert closed.wait(5)
    assert len(seen_threads) == 1 and threading.get_ident() not in seen_threads


def test_iterate_in_thread_reraises_errors() -> None:
    def failing():
        yield "a"
        raise RuntimeError("boom")

    async def drain() -> list[str]:
        return [piece async for piece in iterate_in_thread(failing)]

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(drain())


def test_generator_threads_come_from_the_setting_then_omp_then_the_cores(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")  # what the embedder sets; must not leak into generation
    assert default_threads(5) == 5
    assert default_threads(None) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads(None) == len(os.sched_getaffinity(0))


class _StatsGenerator:
    """A fake generator whose streams report their token counts, as the real backends' TokenStreams do."""

    name = "fake-model"

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def stream(self, messages, **options):
        from bot.llm.types import StreamStats, TokenStream

        self.calls.append(options)
        return TokenStream(
            iter(["Hello", " there"]), StreamStats(prompt_tokens=5, completion_tokens=2, finish_reason="length")
        )


def test_chat_model_speaks_langchains_standard_parameters() -> None:
    import asyncio

    from langchain_core.messages import HumanMessage

    from bot.llm.chat_model import RagtuneChatModel

    generator = _StatsGenerator()
    chat = RagtuneChatModel(generator=generator, max_tokens=7, temperature=0.0)
    params = chat._get_ls_params(stop=["END"])
    assert params["ls_model_name"] == "fake-model" and params["ls_max_tokens"] == 7 and params["ls_stop"] == ["END"]
    chunks = list(chat.stream([HumanMessage("hi")]))
    assert generator.calls[-1]["max_new_tokens"] == 7
    whole = sum(chunks[1:], chunks[0])  # what LangChain's callers aggregate
    assert whole.content == "Hello there" and whole.response_metadata["model_name"] == "fake-model"
    assert whole.usage_metadata == {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}

    async def collect():
        return [chunk async for chunk in chat.astream([HumanMessage("hi")], max_tokens=3)]

    async_chunks = asyncio.run(collect())
    assert generator.calls[-1]["max_new_tokens"] == 3
    merged = sum(async_chunks[1:], async_chunks[0])
    assert merged.content == "Hello there" and merged.usage_metadata["total_tokens"] == 7
    assert merged.response_metadata["finish_reason"] == "length"


class _ListGenerator:
    """Records what the watcher loads; refuses names starting with 'bad' as a foreign adapter would be."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self.loads: list[tuple[str, bool]] = []

    def adapters(self) -> list[str]:
        return sorted(self.names)

    def load_adapter(self, name: str, path, *, replace: bool = False) -> None:
        self.loads.append((name, replace))
        if name.startswith("bad"):
            raise ValueError("built on another base model")
        if name not in self.names:
            self.names.append(name)


def _write_adapter(directory, weights: bytes = b"w") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text("{}")
    (directory / "adapter_model.safetensors").write_bytes(weights)


def test_adapter_watcher_loads_new_and_changed_adapters_once(tmp_path, caplog) -> None:
    import logging

    from bot.llm.adapter_watch import AdapterWatcher

    _write_adapter(tmp_path / "old")
    generator = _ListGenerator(["old"])
    watcher = AdapterWatcher(generator, tmp_path)
    assert watcher.scan() == []  # what was there at start is not loaded again
    _write_adapter(tmp_path / "new")
    (tmp_path / "notes").mkdir()  # no adapter_config.json: not an adapter
    assert watcher.scan() == ["new"]
    assert watcher.scan() == []
    _write_adapter(tmp_path / "old", b"retrained weights")
    assert watcher.scan() == ["old"]
    assert generator.loads == [("new", True), ("old", True)]
    _write_adapter(tmp_path / "bad-one")
    with caplog.at_level(logging.WARNING, logger="bot.llm.adapter_watch"):
        assert watcher.scan() == []
        assert watcher.scan() == []  # not retried, not warned again, until its files change
    assert caplog.text.count("bad-one") == 1
