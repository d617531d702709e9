"""The local generator on the real default model (SmolLM2-135M from its GGUF), offline, with real peft adapters.

The de-quantised weights are cached under test-artifacts/ so only the very first run pays ~30 s.
Tests never assert on the wording of answers (the model is tiny), only on what must hold.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.llm import ContextOverflow, UnknownAdapter, create_generator
from bot.llm.loading import load_base_model
from bot.llm.local import LocalGenerator, MissingChatTemplate

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
LLM_HOME = REPO_ROOT / "test-artifacts" / "llm-home"
QUESTION = [{"role": "user", "content": "Tell me about the moon."}]
NEW = 8  # tokens per answer: enough to differ, cheap on two shared cores


def _make_adapter(base: object, target: Path, seed: int) -> Path:
    """A real peft LoRA directory: random (seeded) lora_B so it changes outputs, no training needed."""
    import torch
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def adapter_sources(tmp_path_factory) -> dict[str, Path]:
    """Adapters built on a throw-away copy of the base (peft injects into the model it wraps)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    pristine = load_base_model("smollm2", LLM_HOME / "models", device="cpu", dtype="float32").model
    sources = {
        name: _make_adapter(copy.deepcopy(pristine), root / name, seed)
        for name, seed in (("alpha", 1), ("beta", 2), ("gamma", 3))
    }
    del pristine
    tiny = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=100
    )
    sources["foreign"] = _make_adapter(LlamaForCausalLM(tiny), root / "foreign", 4)
    return sources


@pytest.fixture(scope="module")
def generator(adapter_sources: dict[str, Path]) -> Iterator[LocalGenerator]:
    """The generator as the app builds it: from settings, auto-loading <state>/adapters/* (offline)."""
    import torch

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    adapters_dir = LLM_HOME / "adapters"
    shutil.rmtree(adapters_dir, ignore_errors=True)
    adapters_dir.mkdir(parents=True)
    for name in ("alpha", "beta", "foreign"):
        shutil.copytree(adapter_sources[name], adapters_dir / name)
    (adapters_dir / "notes").mkdir()  # not an adapter: ignored
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two OpenMP threads spin-wait badly when the two cores are shared with others
    settings = load_settings(
        home=LLM_HOME,
        generator_backend="transformers",
        device="cpu",
        generator_dtype="float32",
        max_new_tokens=NEW,
        generator_threads=1,
    )
    built = create_generator(settings)
    assert isinstance(built, LocalGenerator)
    yield built
    torch.set_num_threads(threads)


def test_default_model_loads_offline_from_cache(generator: LocalGenerator) -> None:
    assert generator.loaded.from_cache  # the fixture's adapter builder loaded it first, so this start was cached
    assert generator.loaded.location.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert generator.tokenizer.convert_tokens_to_ids("<|im_end|>") in generator.eos_token_ids
    assert generator.device == "cpu"


def test_adapters_auto_loaded_and_foreign_one_skipped(generator: LocalGenerator, adapter_sources) -> None:
    assert generator.adapters() == ["alpha", "beta"]
    with pytest.raises(ValueError, match="another base model"):
        generator.load_adapter("foreign", adapter_sources["foreign"])
    with pytest.raises(ValueError, match="no adapter_config.json"):
        generator.load_adapter("empty", LLM_HOME / "adapters" / "notes")
    with pytest.raises(ValueError, match="already loaded"):
        generator.load_adapter("alpha", adapter_sources["alpha"])
    with pytest.raises(UnknownAdapter, match="not loaded"):
        generator.stream(QUESTION, adapter="nope")


def test_greedy_stream_matches_bare_generate(generator: LocalGenerator) -> None:
    import torch

    stream = generator.stream(QUESTION, max_new_tokens=NEW)
    pieces = list(stream)
    prompt = torch.tensor([generator.render(QUESTION)])
    with torch.inference_mode(), generator._lock, generator._using(None):
        reference = generator.model.generate(
            prompt, max_new_tokens=NEW, do_sample=False, eos_token_id=sorted(generator.eos_token_ids)
        )
    expected = generator.tokenizer.decode(reference[0, prompt.shape[1] :], skip_special_tokens=True)
    assert "".join(pieces) == expected
    assert len(pieces) > 1
    assert stream.stats.prompt_tokens == prompt.shape[1]
    assert stream.stats.completion_tokens == reference.shape[1] - prompt.shape[1]
    assert stream.stats.time_to_first_token_s is not None and stream.stats.time_to_first_token_s <= stream.stats.seconds


def test_two_adapters_differ_and_base_is_unchanged_after_use(generator: LocalGenerator) -> None:
    base_before = generator.generate(QUESTION).text
    alpha = generator.generate(QUESTION, adapter="alpha").text
    beta = generator.generate(QUESTION, adapter="beta").text
    base_after = generator.generate(QUESTION).text
    assert len({base_before, alpha, beta}) == 3
    assert base_after == base_before


def test_concurrent_requests_never_see_another_adapter(generator: LocalGenerator) -> None:
    expected = {name: generator.generate(QUESTION, adapter=name).text for name in (None, "alpha", "beta")}
    assert len(set(expected.values())) == 3
    requests = [None, "alpha", "beta"] * 2
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(requests))

    def ask(index: int, adapter: str | None) -> None:
        try:
            barrier.wait()
            results[index] = "".join(generator.stream(QUESTION, adapter=adapter))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=pair) for pair in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    assert [results[i] for i in range(len(requests))] == [expected[adapter] for adapter in requests]


def test_async_streams_interleave_safely(generator: LocalGenerator) -> None:
    expected = {name: generator.generate(QUESTION, adapter=name).text for name in ("alpha", None)}

    async def collect(adapter: str | None) -> str:
        return "".join([piece async for piece in generator.astream(QUESTION, adapter=adapter)])

    async def both() -> list[str]:
        return await asyncio.gather(collect("alpha"), collect(None))

    assert asyncio.run(both()) == [expected["alpha"], expected[None]]


def test_hot_load_adapter_without_reloading_base(generator: LocalGenerator, adapter_sources) -> None:
    base_model = generator.model
    before = generator.generate(QUESTION).text
    generator.load_adapter("gamma", adapter_sources["gamma"])
    assert "gamma" in generator.adapters()
    assert generator.model is base_model
    assert generator.generate(QUESTION, adapter="gamma").text != before
    assert generator.generate(QUESTION).text == before


def test_stop_sequence_never_leaks(generator: LocalGenerator) -> None:
    full = generator.generate(QUESTION, max_new_tokens=12).text
    words = full.split()
    assert len(words) >= 3
    stop = " " + words[2][:3]  # a stop string that spans token boundaries mid-answer
    result = generator.generate(QUESTION, max_new_tokens=12, stop=[stop])
    assert stop not in result.text
    assert result.text == full[: full.index(stop)]
    assert result.finish_reason == "stop"


def test_max_new_tokens_and_sampling(generator: LocalGenerator) -> None:
    result = generator.generate(QUESTION, max_new_tokens=3)
    assert (result.completion_tokens, result.finish_reason) == (3, "length")
    import torch

    torch.manual_seed(0)
    sampled = generator.generate(QUESTION, temperature=1.5, top_p=0.9, max_new_tokens=NEW)
    assert sampled.completion_tokens >= 1 and sampled.text


def test_context_guard_drops_oldest_memory_first(generator: LocalGenerator) -> None:
    system = {"role": "system", "content": "You are terse."}
    history = []
    for turn in range(6):
        history += [
            {"role": "user", "content": f"Question {turn}: " + "tell me more " * 20},
            {"role": "assistant", "content": f"Answer {turn}: " + "here is more " * 20},
        ]
    current = {"role": "user", "content": "And now?"}
    messages = [system, *history, current]
    full = len(generator.render(messages))
    small = LocalGenerator(generator.loaded, context_length=full // 2 + NEW)
    fitted = small.fit_messages(messages, NEW)
    assert fitted[0] == system and fitted[-1] == current
    assert 1 < len(fitted) < len(messages)
    assert fitted[1]["role"] == "user"
    assert fitted[1:-1] == history[len(history) - (len(fitted) - 2) :]  # the newest turns survive
    assert len(small.render(fitted)) + NEW <= small.context_length
    assert small.generate(messages, max_new_tokens=2).prompt_tokens == len(small.render(fitted))
    with pytest.raises(ContextOverflow, match="current message"):
        small.fit_messages([system, {"role": "user", "content": "long " * 2000}], NEW)


def test_missing_chat_template_is_a_clear_error(generator: LocalGenerator) -> None:
    saved = generator.tokenizer.chat_template
    try:
        generator.tokenizer.chat_template = None
        with pytest.raises(MissingChatTemplate, match="RAGTUNE_GENERATOR_CHAT_TEMPLATE"):
            LocalGenerator(generator.loaded)
        custom = LocalGenerator(generator.loaded, chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
        assert (
            custom.render(QUESTION)
            == generator.tokenizer("Tell me about the moon.", add_special_tokens=False)["input_ids"]
        )
    finally:
        generator.tokenizer.chat_template = saved


def test_chat_model_wrapper_streams_with_adapter(generator: LocalGenerator) -> None:
    from langchain_core.messages import HumanMessage

    from bot.llm.chat_model import RagtuneChatModel

    chat = RagtuneChatModel(generator=generator, adapter="beta")
    reply = chat.invoke([HumanMessage("Tell me about the moon.")])
    assert reply.content == generator.generate(QUESTION, adapter="beta").text
    assert reply.usage_metadata["output_tokens"] >= 1
    streamed = "".join(str(chunk.content) for chunk in chat.stream([HumanMessage("Tell me about the moon.")]))
    assert streamed == reply.content


def test_auto_load_warns_about_foreign_adapter(generator: LocalGenerator, tmp_path, adapter_sources, caplog) -> None:
    shutil.copytree(adapter_sources["foreign"], tmp_path / "foreign2")
    with caplog.at_level(logging.WARNING, logger="bot.llm.local"):
        assert generator.load_adapters_from(tmp_path) == []
    assert "skipping adapter foreign2" in caplog.text and "another base model" in caplog.text


def test_cached_load_is_the_same_model_as_from_pretrained(generator: LocalGenerator) -> None:
    """The warm-start shortcut (meta device + assigned safetensors) must not change a single logit."""
    import torch

    from bot.llm.loading import _cache_dir_for, _load_pretrained

    cached = _cache_dir_for(generator.loaded.location, LLM_HOME / "models")
    reference, _ = _load_pretrained(str(cached), None, torch.float32)
    fast = load_base_model("smollm2", LLM_HOME / "models", device="cpu", dtype="float32")
    assert fast.from_cache
    assert fast.model.generation_config.eos_token_id == reference.generation_config.eos_token_id
    assert fast.model.lm_head.weight.data_ptr() == fast.model.model.embed_tokens.weight.data_ptr()  # still tied
    ids = torch.tensor([generator.render(QUESTION)])
    with torch.inference_mode():
        assert torch.equal(fast.model(ids).logits, reference.eval()(ids).logits)


def test_generation_runs_on_its_configured_threads(generator: LocalGenerator) -> None:
    """Other code in the process (the embedder) changes torch's thread count; generation sets its own."""
    import torch

    seen: list[int] = []

    def worker() -> None:
        torch.set_num_threads(2 if generator.threads == 1 else 1)
        generator.generate(QUESTION, max_new_tokens=2)
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [generator.threads]
