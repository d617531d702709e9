"""Does an adapter served by llama.cpp answer as the same peft adapter does on transformers?

Builds a LoRA adapter on the packaged model with peft (seeded random A and B, large enough to change greedy text;
a trained adapter would do as well, but none ships with the project), then generates 16 greedy tokens for 10
prompts three ways: transformers fp32 with the peft adapter (the reference), llama.cpp with the adapter converted
to a GGUF LoRA, and, for scale, llama.cpp and transformers without any adapter. A prompt agrees when the first 16
tokens are equal. Run: `.venv/bin/python -m bench.bench_adapter_agreement [--quantization q8_0]`.
Writes bench/results/adapter_agreement.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from bench.bench_quantization import AGREE_TOKENS, PROMPTS, common_prefix

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def make_adapter(base, target: Path, seed: int = 7) -> None:
    """A peft LoRA on the attention projections with seeded random weights, saved to `target`."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                scale = 0.1 if "lora_B" in name else 0.03
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    model.save_pretrained(target)
    model.unload()


def tokens(generator, tokenizer, adapter: str | None) -> list[list[int]]:
    out = []
    for prompt in PROMPTS:
        text = generator.generate(
            [{"role": "user", "content": prompt}], adapter=adapter, max_new_tokens=AGREE_TOKENS
        ).text
        out.append(tokenizer.encode(text, add_special_tokens=False))
    return out


def agreement(got: list[list[int]], reference: list[list[int]]) -> dict:
    prefixes = [common_prefix(a, b) for a, b in zip(got, reference, strict=True)]
    agreeing = sum(1 for p, r in zip(prefixes, reference, strict=True) if p >= min(AGREE_TOKENS, len(r)))
    return {"prompts_agreeing": agreeing, "of": len(reference), "mean_prefix_tokens": sum(prefixes) / len(prefixes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantization", default="q8_0", help="format llama.cpp serves (see bench_quantization)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from bot.config import load_settings
    from bot.llm.llamacpp import LlamaCppGenerator
    from bot.llm.loading import load_base_model
    from bot.llm.local import LocalGenerator
    from bot.llm.quantize import requantize
    from bot.llm.weights import default_gguf

    torch.set_num_threads(1)
    cache = load_settings().model_cache_dir
    loaded = load_base_model("smollm2", cache, device="cpu", dtype="float32")
    tokenizer = loaded.tokenizer
    with tempfile.TemporaryDirectory(prefix="ragtune-agree-") as scratch:
        adapter_dir = Path(scratch) / "probe"
        make_adapter(loaded.model, adapter_dir)
        local = LocalGenerator(loaded, max_new_tokens=AGREE_TOKENS, threads=1)
        base_reference = tokens(local, tokenizer, None)
        local.load_adapter("probe", adapter_dir)
        adapter_reference = tokens(local, tokenizer, "probe")
        served = requantize(default_gguf(cache), args.quantization, cache)
        llama = LlamaCppGenerator(
            served, adapters={"probe": adapter_dir}, max_new_tokens=AGREE_TOKENS, parallel=1, cache_prompt=False
        )
        try:
            llama_base, llama_adapter = tokens(llama, tokenizer, None), tokens(llama, tokenizer, "probe")
        finally:
            llama.close()
    report = {
        "quantization": args.quantization,
        "with_adapter": agreement(llama_adapter, adapter_reference),
        "without_adapter": agreement(llama_base, base_reference),
        "adapter_changes_transformers_output": sum(
            a != b for a, b in zip(adapter_reference, base_reference, strict=True)
        ),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "adapter_agreement.json").write_text(json.dumps(report, indent=2))
    for name in ("with_adapter", "without_adapter"):
        row = report[name]
        print(
            f"llama.cpp ({args.quantization}) vs transformers fp32, {name.replace('_', ' ')}: "
            f"{row['prompts_agreeing']}/{row['of']} prompts agree on {AGREE_TOKENS} tokens "
            f"(mean common prefix {row['mean_prefix_tokens']:.1f}) (target with adapter >= 8/10)"
        )
    print(f"the adapter changed transformers' output on {report['adapter_changes_transformers_output']}/10 prompts")
    print(f"wrote {RESULTS / 'adapter_agreement.json'}")


if __name__ == "__main__":
    main()
