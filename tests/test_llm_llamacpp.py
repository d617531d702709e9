"""The llama.cpp generator on the real packaged GGUF (SmolLM2-135M Q4_1), with real peft adapters converted to GGUF.

The adapters are random (seeded) peft LoRAs built on the transformers copy of the same model, so the
converted GGUF can be checked against peft itself. Answers are compared with each other, never with
expected wording. The main generator runs with `cache_prompt=False`, which makes greedy output
independent of what ran before, so "the same request alone" is an exact reference.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.llm import ContextOverflow, UnknownAdapter, create_generator
from bot.llm.llamacpp import LlamaCppGenerator
from bot.llm.weights import default_gguf
from training.gguf_lora import GGUF_FILE, AdapterConversionError, convert_adapter, gguf_adapter

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
LLM_HOME = REPO_ROOT / "test-artifacts" / "llm-home"  # shared with test_llm_local: de-quantised once
QUESTION = [{"role": "user", "content": "Tell me about the moon."}]
NEW = 12


@pytest.fixture(scope="module")
def model_path() -> Path:
    return default_gguf(LLM_HOME / "models")


@pytest.fixture(scope="module")
def peft_base() -> Iterator[object]:
    """The transformers copy of the packaged model (de-quantised from the same GGUF), on one torch thread."""
    import torch

    from bot.llm.loading import load_base_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two OpenMP threads spin-wait badly when the two cores are shared with others
    yield load_base_model("smollm2", LLM_HOME / "models", device="cpu", dtype="float32")
    torch.set_num_threads(threads)


def _make_adapter(base: object, target: Path, seed: int, modules: list[str], size: float = 0.1) -> object:
    """Save a real peft LoRA directory with random lora_A and lora_B, large enough to change greedy output.

    Both are drawn from the seed (peft's own lora_A init uses the global RNG), so every run builds the
    same adapters. Returns the base model with the LoRA layers taken out again (peft injects in place).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=modules))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                scale = size if "lora_B" in name else 0.03
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    peft_model.save_pretrained(target)
    return peft_model.unload()


@pytest.fixture(scope="module")
def adapter_dirs(peft_base, tmp_path_factory) -> dict[str, Path]:
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("llamacpp-adapters")
    plans = {
        "alpha": (1, ["q_proj", "k_proj", "v_proj", "o_proj"]),
        "beta": (2, ["q_proj", "v_proj", "gate_proj"]),
        "gamma": (3, ["k_proj", "down_proj"]),
    }
    dirs = {}
    for name, (seed, modules) in plans.items():
        peft_base.model = _make_adapter(peft_base.model, root / name, seed, modules)
        dirs[name] = root / name
    tiny = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=100
    )
    _make_adapter(LlamaForCausalLM(tiny), root / "foreign", 4, ["q_proj", "v_proj"])
    dirs["foreign"] = root / "foreign"
    return dirs


@pytest.fixture(scope="module")
def generator(model_path, adapter_dirs) -> Iterator[LlamaCppGenerator]:
    built = LlamaCppGenerator(
        model_path,
        adapters={name: adapter_dirs[name] for name in ("alpha", "beta")},
        max_new_tokens=NEW,
        threads=1,
        parallel=4,
        cache_prompt=False,
    )
    yield built
    built.close()


def _busy_slots(generator: LlamaCppGenerator) -> list[int]:
    return [slot["id"] for slot in generator._runtime.http.get("/slots").json() if slot["is_processing"]]


def test_stream_yields_text_and_real_token_counts(generator: LlamaCppGenerator, peft_base) -> None:
    stream = generator.stream(QUESTION, max_new_tokens=NEW)
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces).strip()
    templated = peft_base.tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    expected_prompt = peft_base.tokenizer(templated, add_special_tokens=False)["input_ids"]  # transformers' count
    assert stream.stats.prompt_tokens == len(expected_prompt) == len(generator.render(QUESTION))
    assert stream.stats.completion_tokens == NEW and stream.stats.finish_reason == "length"
    assert 0 < stream.stats.time_to_first_token_s <= stream.stats.seconds
    assert generator.count_tokens("hello world") == len(peft_base.tokenizer("hello world")["input_ids"])


def test_max_new_tokens_stop_sequences_and_bad_arguments(generator: LlamaCppGenerator) -> None:
    result = generator.generate(QUESTION, max_new_tokens=3)
    assert (result.completion_tokens, result.finish_reason) == (3, "length")
    full = generator.generate(QUESTION, max_new_tokens=NEW).text
    words = full.split()
    assert len(words) >= 4
    stop = " " + words[3][:3]  # a stop string that spans token boundaries mid-answer
    cut = generator.generate(QUESTION, max_new_tokens=NEW, stop=[stop])
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"
    with pytest.raises(UnknownAdapter, match="not loaded"):
        generator.stream(QUESTION, adapter="nope")
    for bad in ({"max_new_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}):
        with pytest.raises(ValueError):
            generator.stream(QUESTION, **bad)
    first = generator.generate(QUESTION, temperature=1.2, top_p=0.9, seed=7).text
    assert first and generator.generate(QUESTION, temperature=1.2, top_p=0.9, seed=7).text == first


def test_adapters_change_output_and_no_adapter_is_the_base(generator: LlamaCppGenerator, model_path) -> None:
    """(a) each adapter changes greedy output; (b) adapter=None equals a server that never loaded one."""
    outputs = {name: generator.generate(QUESTION, adapter=name).text for name in (None, "alpha", "beta")}
    assert len(set(outputs.values())) == 3
    bare = LlamaCppGenerator(model_path, max_new_tokens=NEW, threads=1, parallel=1, cache_prompt=False)
    try:
        assert bare.adapters() == []
        assert bare.generate(QUESTION).text == outputs[None]
    finally:
        bare.close()


def test_concurrent_requests_each_get_their_own_adapter(generator: LlamaCppGenerator) -> None:
    """(c) requests in parallel slots, each with another adapter, answer as they do alone."""
    alone = {name: generator.generate(QUESTION, adapter=name).text for name in (None, "alpha", "beta")}
    results: dict[str | None, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def ask(adapter: str | None) -> None:
        try:
            barrier.wait()
            results[adapter] = "".join(generator.stream(QUESTION, adapter=adapter))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(name,)) for name in alone]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert results == alone

    async def both() -> list[str]:
        async def collect(adapter: str | None) -> str:
            return "".join([piece async for piece in generator.astream(QUESTION, adapter=adapter)])

        return await asyncio.gather(collect("beta"), collect(None))

    assert asyncio.run(both()) == [alone["beta"], alone[None]]


def test_closing_a_stream_frees_its_slot(generator: LlamaCppGenerator) -> None:
    stream = generator.stream(QUESTION, max_new_tokens=2000)
    assert next(stream) and next(stream)
    assert _busy_slots(generator)
    stream.close()
    deadline = time.monotonic() + 5
    while _busy_slots(generator) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _busy_slots(generator) == []
    started = time.perf_counter()
    assert generator.generate(QUESTION, max_new_tokens=4).completion_tokens == 4
    assert time.perf_counter() - started < 10  # the 2000-token answer would take far longer


def test_converted_adapter_matches_peft_on_transformers(generator: LlamaCppGenerator, peft_base, adapter_dirs) -> None:
    """First-token log-probabilities with the GGUF adapter stay as close to peft's as the base models are.

    Greedy text is a poor check here (llama.cpp's Q4_1 kernels and fp32 torch tie-break differently); a
    wrong conversion (e.g. q/k rows in HF order) drifts several times further than the base does.
    """
    import torch
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(peft_base.model, str(adapter_dirs["alpha"])).eval()
    tokenizer = peft_base.tokenizer
    prompts = ["Tell me about the moon.", "Write a haiku about rain.", "What is 2+2?"]

    def llama_top(prompt: str, adapter: str | None) -> dict[str, float]:
        ids = generator._runtime.adapter_ids
        request = {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 10,
            "lora": [{"id": index, "scale": 1.0 if name == adapter else 0.0} for name, index in ids.items()],
        }
        reply = generator._runtime.server.handle_chat_completions(request)
        top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        return {entry["token"]: entry["logprob"] for entry in top}

    def gap(adapter: str | None) -> float:
        diffs = []
        for prompt in prompts:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
            with torch.inference_mode():
                if adapter is None:
                    with peft_model.disable_adapter():
                        logits = peft_model(ids).logits[0, -1]
                else:
                    logits = peft_model(ids).logits[0, -1]
            reference = torch.log_softmax(logits.float(), dim=-1)
            for token, logprob in llama_top(prompt, adapter).items():
                token_ids = tokenizer.encode(token, add_special_tokens=False)
                if len(token_ids) == 1:
                    diffs.append(abs(logprob - float(reference[token_ids[0]])))
        return sum(diffs) / len(diffs)

    try:
        base_gap, adapter_gap = gap(None), gap("alpha")
    finally:
        peft_base.model = peft_model.unload()
    assert adapter_gap < 2 * base_gap, (adapter_gap, base_gap)


def test_load_adapter_restarts_with_the_new_list(model_path, adapter_dirs) -> None:
    plain = LlamaCppGenerator(model_path, max_new_tokens=NEW, threads=1, parallel=2, cache_prompt=False)
    try:
        before = plain.generate(QUESTION).text
        plain.load_adapter("gamma", adapter_dirs["gamma"])
        assert plain.adapters() == ["gamma"]
        assert plain.generate(QUESTION, adapter="gamma").text != before
        assert plain.generate(QUESTION).text == before
        with pytest.raises(ValueError, match="already loaded"):
            plain.load_adapter("gamma", adapter_dirs["gamma"])
        with pytest.raises(ValueError, match="another base model"):
            plain.load_adapter("foreign", adapter_dirs["foreign"])
        with pytest.raises(ValueError, match="adapter name"):
            plain.load_adapter("../x", adapter_dirs["gamma"])
        assert plain.adapters() == ["gamma"]
    finally:
        plain.close()


def test_reloading_adapters_while_prompts_are_rendered_never_hangs(model_path, adapter_dirs) -> None:
    """The adapter watcher swaps servers while chat requests render prompts on the old one: the old server must
    outlive those calls (destroying it under one deadlocked a running app)."""
    plain = LlamaCppGenerator(model_path, max_new_tokens=NEW, threads=1, parallel=2, cache_prompt=False)
    stop, rendered, errors = threading.Event(), [], []

    def render_until_stopped() -> None:
        while not stop.is_set():
            try:
                rendered.append(len(plain.render(QUESTION)))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    renderers = [threading.Thread(target=render_until_stopped, daemon=True) for _ in range(2)]
    try:
        for thread in renderers:
            thread.start()
        for _ in range(4):
            plain.load_adapter("gamma", adapter_dirs["gamma"], replace=True)
        stop.set()
        for thread in renderers:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in renderers), "a render hung across an adapter reload"
        assert not errors, errors
        assert rendered and len(set(rendered)) == 1
        assert plain.generate(QUESTION, adapter="gamma").text
    finally:
        stop.set()
        plain.close()


def test_context_guard_drops_oldest_turns(generator: LlamaCppGenerator) -> None:
    system = {"role": "system", "content": "You are terse."}
    history = []
    for turn in range(6):
        history += [
            {"role": "user", "content": f"Question {turn}: " + "tell me more " * 20},
            {"role": "assistant", "content": f"Answer {turn}: " + "here is more " * 20},
        ]
    current = {"role": "user", "content": "And now?"}
    messages = [system, *history, current]
    small = copy.copy(generator)  # the same server, judged against a smaller window
    small.context_length = len(generator.render(messages)) // 2 + 4
    fitted = small.fit_messages(messages, 4)
    assert fitted[0] == system and fitted[-1] == current and 1 < len(fitted) < len(messages)
    assert fitted[1]["role"] == "user"
    assert len(small.render(fitted)) + 4 <= small.context_length
    assert small.generate(messages, max_new_tokens=2).prompt_tokens == len(small.render(fitted))
    with pytest.raises(ContextOverflow, match="current message"):
        small.fit_messages([system, {"role": "user", "content": "long " * 2000}], 4)


def test_gguf_lora_file_and_its_cache(adapter_dirs, model_path, tmp_path) -> None:
    import gguf

    source = tmp_path / "beta"
    shutil.copytree(adapter_dirs["beta"], source)
    converted = gguf_adapter(source, model_path)
    assert converted == source / GGUF_FILE
    reader = gguf.GGUFReader(converted)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 16.0
    names = {tensor.name for tensor in reader.tensors}
    assert {"blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b", "blk.29.ffn_gate.weight.lora_b"} <= names
    assert len(names) == 30 * 3 * 2
    written = converted.stat().st_mtime_ns
    assert gguf_adapter(source, model_path).stat().st_mtime_ns == written  # fresh: reused
    weights = source / "adapter_model.safetensors"
    os.utime(weights, (time.time() + 5, time.time() + 5))  # a retrained adapter
    assert gguf_adapter(source, model_path).stat().st_mtime_ns != written
    with pytest.raises(AdapterConversionError, match="another base model"):
        convert_adapter(adapter_dirs["foreign"], model_path, tmp_path / "foreign.gguf")
    assert not (tmp_path / "foreign.gguf").exists() and not list(tmp_path.glob("*.part"))


def test_conversion_reads_bf16_and_folds_peft_scaling_variants(adapter_dirs, model_path, tmp_path) -> None:
    """bf16 weights read exactly; rsLoRA (alpha/sqrt(r)) and alpha_pattern end up in lora_b, since llama.cpp
    scales every pair by alpha/r."""
    import json

    import gguf
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    def tensors(path: Path) -> dict:
        return {tensor.name: tensor.data.copy() for tensor in gguf.GGUFReader(path).tensors}

    plain = tensors(convert_adapter(adapter_dirs["beta"], model_path, tmp_path / "plain.gguf"))
    variant = tmp_path / "variant"
    shutil.copytree(adapter_dirs["beta"], variant)
    weights = load_file(str(variant / "adapter_model.safetensors"))
    bf16 = {name: value.to(torch.bfloat16) for name, value in weights.items()}
    save_file(bf16, str(variant / "adapter_model.safetensors"))
    config = json.loads((variant / "adapter_config.json").read_text())
    config.update(use_rslora=True, alpha_pattern={"gate_proj": 32})
    (variant / "adapter_config.json").write_text(json.dumps(config))
    folded = tensors(convert_adapter(variant, model_path, tmp_path / "variant.gguf"))
    assert folded.keys() == plain.keys()
    for name, value in plain.items():
        # rsLoRA scales by alpha/sqrt(r) where llama.cpp applies alpha/r; gate_proj has alpha 32, the file says 16
        factor = 1.0 if name.endswith(".lora_a") else 8**0.5 * (2 if ".ffn_gate." in name else 1)
        assert np.allclose(folded[name], value * factor, rtol=2**-7, atol=1e-7), name  # bf16 keeps 8 bits


def test_create_generator_picks_llamacpp_and_loads_adapters(adapter_dirs, tmp_path, caplog) -> None:
    home = tmp_path / "home"
    for name in ("alpha", "foreign"):
        shutil.copytree(adapter_dirs[name], home / "adapters" / name)
    (home / "adapters" / "notes").mkdir()  # not an adapter: ignored
    settings = load_settings(home=home, generator_backend="llamacpp", generator_threads=1, max_new_tokens=3)
    with caplog.at_level(logging.WARNING):
        built = create_generator(settings)
    try:
        assert isinstance(built, LlamaCppGenerator)
        assert built.adapters() == ["alpha"]
        assert "skipping adapter foreign" in caplog.text and "another base model" in caplog.text
        assert (home / "adapters" / "alpha" / GGUF_FILE).is_file()  # converted beside the peft files
        assert built.generate(QUESTION, adapter="alpha").completion_tokens == 3
        assert built.name == "smollm2"
        assert built.model_path.name.endswith(".Q8_0.gguf")  # the default quantization, prepared into the cache
        assert built.model_path.parent == home / "models" / "gguf"
    finally:
        built.close()


def test_not_a_gguf_falls_back_to_transformers_with_one_warning(peft_base, tmp_path, caplog) -> None:
    from bot.llm.loading import _cache_dir_for
    from bot.llm.local import LocalGenerator

    hf_dir = _cache_dir_for(peft_base.location, LLM_HOME / "models")  # a plain transformers model directory
    settings = load_settings(home=tmp_path, generator_backend="llamacpp", generator_model=str(hf_dir))
    with caplog.at_level(logging.WARNING, logger="bot.llm"):
        built = create_generator(settings)
    assert isinstance(built, LocalGenerator)
    warnings = [record for record in caplog.records if record.name == "bot.llm"]
    assert len(warnings) == 1 and "not a GGUF" in warnings[0].getMessage()


def test_serving_process_never_imports_torch(tmp_path) -> None:
    script = (
        "import sys\n"
        "from bot.config import load_settings\n"
        "from bot.llm import create_generator\n"
        f"settings = load_settings(home={str(tmp_path)!r}, generator_quantization='as-packaged')\n"
        "g = create_generator(settings)\n"
        "assert type(g).__name__ == 'LlamaCppGenerator'\n"
        "assert g.generate([{'role': 'user', 'content': 'Hi'}], max_new_tokens=2).completion_tokens == 2\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_new_adapter_is_hot_loaded_into_the_running_generator(model_path, adapter_dirs, tmp_path) -> None:
    """A folder renamed into the adapters dir (as `ragtune train` does) is served within seconds, no restart."""
    from bot.llm.adapter_watch import AdapterWatcher

    root = tmp_path / "adapters"
    root.mkdir()
    plain = LlamaCppGenerator(model_path, max_new_tokens=NEW, threads=1, parallel=2, cache_prompt=False)
    watcher = AdapterWatcher(plain, root, interval=0.2).start()
    try:
        before = plain.generate(QUESTION).text
        shutil.copytree(adapter_dirs["gamma"], tmp_path / "staging")
        (tmp_path / "staging").rename(root / "gamma")
        deadline = time.monotonic() + 30
        while "gamma" not in plain.adapters() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert plain.adapters() == ["gamma"]
        assert plain.generate(QUESTION, adapter="gamma").text != before
        assert plain.generate(QUESTION).text == before
        shutil.copytree(adapter_dirs["foreign"], root / "foreign")  # does not fit: skipped, the rest keeps serving
        time.sleep(1.0)
        assert plain.adapters() == ["gamma"]
    finally:
        watcher.stop()
        plain.close()
