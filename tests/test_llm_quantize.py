"""Re-quantising the packaged GGUF (bot.llm.quantize): the copy holds the same weights in the new block format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bot.llm.quantize import quantized_path, requantize
from bot.llm.weights import default_gguf

REPO_ROOT = Path(__file__).resolve().parent.parent
LLM_HOME = REPO_ROOT / "test-artifacts" / "llm-home"


@pytest.fixture(scope="module")
def source() -> Path:
    return default_gguf(LLM_HOME / "models")


@pytest.fixture(scope="module")
def q8_copy(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return requantize(source, "q8_0", tmp_path_factory.mktemp("quant"))


def test_q8_copy_holds_the_same_weights(source: Path, q8_copy: Path) -> None:
    import gguf

    before, after = gguf.GGUFReader(str(source)), gguf.GGUFReader(str(q8_copy))
    assert int(after.get_field(gguf.Keys.General.FILE_TYPE).contents()) == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    assert str(after.get_field("tokenizer.chat_template").contents()) == str(
        before.get_field("tokenizer.chat_template").contents()
    )
    old = {t.name: t for t in before.tensors}
    assert {t.name for t in after.tensors} == set(old)
    for tensor in after.tensors:
        original = old[tensor.name]
        if original.tensor_type.name == "Q4_1":
            assert tensor.tensor_type.name == "Q8_0"
        else:  # norms and the 8-bit embeddings are copied as they are
            assert tensor.tensor_type == original.tensor_type
            assert np.array_equal(np.asarray(tensor.data), np.asarray(original.data))
            continue
        a = gguf.quants.dequantize(original.data, original.tensor_type)
        b = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert a.shape == b.shape
        # Q8_0 rounds each block of 32 to steps of 1/127 of its largest magnitude, with the step stored in fp16
        # (relative error 2^-11, times 127 steps): half a step plus that.
        bound = np.abs(a.reshape(-1, 32)).max(axis=1, keepdims=True) / 127 * (0.5 + 127 * 2**-11) + 1e-6
        assert (np.abs(a - b).reshape(-1, 32) <= bound).all(), tensor.name


def test_cached_and_named_by_source_and_format(source: Path, q8_copy: Path) -> None:
    assert q8_copy == quantized_path(source, "q8_0", q8_copy.parent.parent)
    stamp = q8_copy.stat().st_mtime_ns
    assert requantize(source, "q8_0", q8_copy.parent.parent) == q8_copy
    assert q8_copy.stat().st_mtime_ns == stamp  # not written again
    assert not list(q8_copy.parent.glob("*.part"))


def test_as_packaged_and_same_format_return_the_source(source: Path, tmp_path: Path) -> None:
    assert requantize(source, "as-packaged", tmp_path) == source
    assert requantize(source, "q4_1", tmp_path) == source  # the packaged file is Q4_1 already
    assert not (tmp_path / "gguf").exists()
    with pytest.raises(ValueError, match="expected one of"):
        requantize(source, "q3_k", tmp_path)


@pytest.mark.slow
def test_llama_cpp_serves_the_copy_like_the_source(source: Path, q8_copy: Path) -> None:
    """Greedy answers of the two files start alike (the formats differ in the last bits, so not exactly)."""
    from bot.llm.llamacpp import LlamaCppGenerator

    question = [{"role": "user", "content": "What is the capital of France?"}]
    answers = []
    for path in (source, q8_copy):
        generator = LlamaCppGenerator(path, max_new_tokens=8, parallel=1, cache_prompt=False)
        try:
            answers.append(generator.generate(question).text)
        finally:
            generator.close()
    assert answers[0].split()[:2] == answers[1].split()[:2], answers
