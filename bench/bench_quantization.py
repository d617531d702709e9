"""Which block format the llama.cpp backend should serve the packaged model in: speed against quality.

For the packaged Q4_1 file and its re-quantised Q4_0 and Q8_0 copies (`bot.llm.quantize`):
- decode tokens/s on llama.cpp with 1 thread and with every core (greedy, best of N, same prompt);
- perplexity of the weights on shared text (covid-qa passages), computed by transformers in fp32 on each
  GGUF's de-quantised weights, so the figure is the format's, not the runtime's;
- greedy agreement with today's transformers fp32 path (the packaged weights de-quantised): on 10 prompts,
  how many of llama.cpp's first 16 tokens equal transformers' first 16.

Run: `.venv/bin/python -m bench.bench_quantization [--repeats 3] [--ppl-tokens 4096]`.
Writes bench/results/quantization.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CORPUS = ROOT.parent / "shared" / "data" / "covid-qa" / "corpus.jsonl"
STORY = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]
PROMPTS = [
    "Tell me about the moon.",
    "Write a haiku about rain.",
    "What is the capital of France?",
    "Give me three tips for a job interview.",
    "Explain what a refund policy is.",
    "Summarise why sleep matters.",
    "Write a short thank-you note to a colleague.",
    "How do vaccines work?",
    "What should I pack for a weekend hike?",
    "Describe a cup of coffee in one sentence.",
]
AGREE_TOKENS = 16


def shared_text(limit_chars: int) -> str:
    parts, size = [], 0
    with CORPUS.open() as lines:
        for line in lines:
            text = json.loads(line)["text"]
            parts.append(text)
            size += len(text)
            if size >= limit_chars:
                break
    return "\n\n".join(parts)[:limit_chars]


def perplexity(gguf_path: Path, text: str, max_tokens: int, window: int = 512) -> float:
    """Perplexity of `text`'s first `max_tokens` tokens in non-overlapping windows, fp32 transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs).eval()
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0][:max_tokens]
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start : start + window].unsqueeze(0)
            if chunk.shape[1] < 2:
                break
            loss = model(chunk, labels=chunk).loss
            total += float(loss) * (chunk.shape[1] - 1)
            count += chunk.shape[1] - 1
    return math.exp(total / count)


def reference_tokens(cache: Path, threads: int) -> tuple[list[list[int]], object]:
    """Today's transformers fp32 greedy tokens for each prompt, and the tokenizer to compare with."""
    import torch

    from bot.llm.loading import load_base_model
    from bot.llm.local import LocalGenerator

    torch.set_num_threads(threads)
    loaded = load_base_model("smollm2", cache, device="cpu", dtype="float32")
    generator = LocalGenerator(loaded, max_new_tokens=AGREE_TOKENS, threads=threads)
    tokenizer = loaded.tokenizer
    outputs = []
    for prompt in PROMPTS:
        text = generator.generate([{"role": "user", "content": prompt}], max_new_tokens=AGREE_TOKENS).text
        outputs.append(tokenizer.encode(text, add_special_tokens=False))
    return outputs, tokenizer


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def measure_llamacpp(path: Path, threads: int, repeats: int, reference: list[list[int]], tokenizer) -> dict:
    from bot.llm.llamacpp import LlamaCppGenerator

    generator = LlamaCppGenerator(path, max_new_tokens=128, threads=threads, parallel=1, cache_prompt=False)
    try:
        generator.generate(STORY, max_new_tokens=4)  # warm-up
        rates = []
        for _ in range(repeats):
            result = generator.generate(STORY, max_new_tokens=128)
            rates.append(result.completion_tokens / result.seconds)
        agreement = None
        if reference:
            prefixes = []
            for prompt, expected in zip(PROMPTS, reference, strict=True):
                text = generator.generate([{"role": "user", "content": prompt}], max_new_tokens=AGREE_TOKENS).text
                got = tokenizer.encode(text, add_special_tokens=False)
                prefixes.append(common_prefix(got, expected))
            full = sum(1 for p, e in zip(prefixes, reference, strict=True) if p >= min(AGREE_TOKENS, len(e)))
            agreement = {
                "prompts_agreeing": full,
                "of": len(PROMPTS),
                "mean_prefix_tokens": sum(prefixes) / len(prefixes),
            }
        return {"tokens_per_s": max(rates), "tokens_per_s_all": rates, "agreement": agreement}
    finally:
        generator.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ppl-tokens", type=int, default=4096)
    parser.add_argument("--cache", type=Path, default=None, help="model cache (default: the state dir's)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bot.config import load_settings
    from bot.llm.quantize import requantize
    from bot.llm.weights import default_gguf

    cache = args.cache or load_settings().model_cache_dir
    cores = len(os.sched_getaffinity(0))
    source = default_gguf(cache)
    text = shared_text(40_000)
    reference, tokenizer = reference_tokens(cache, 1)
    report: dict = {"cores": cores, "agree_tokens": AGREE_TOKENS, "formats": {}}
    with tempfile.TemporaryDirectory(prefix="ragtune-quant-") as scratch:
        for name in ("q4_1", "q4_0", "q8_0"):
            path = source if name == "q4_1" else requantize(source, name, Path(scratch))
            row = {"file_mb": path.stat().st_size / 1e6, "perplexity": perplexity(path, text, args.ppl_tokens)}
            row["threads_1"] = measure_llamacpp(path, 1, args.repeats, reference, tokenizer)
            row[f"threads_{cores}"] = measure_llamacpp(path, cores, args.repeats, [], tokenizer)
            report["formats"][name + (" (packaged)" if name == "q4_1" else "")] = row
    report["load_avg_1min"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quantization.json").write_text(json.dumps(report, indent=2))
    header = f"{'format':<18}{'MB':>6}{'ppl':>8}{'tok/s 1T':>10}{f'tok/s {cores}T':>10}  agree 16 tok (mean prefix)"
    print(header)
    for name, row in report["formats"].items():
        agree = row["threads_1"]["agreement"]
        print(
            f"{name:<18}{row['file_mb']:>6.0f}{row['perplexity']:>8.2f}{row['threads_1']['tokens_per_s']:>10.1f}"
            f"{row[f'threads_{cores}']['tokens_per_s']:>10.1f}  {agree['prompts_agreeing']}/{agree['of']}"
            f" ({agree['mean_prefix_tokens']:.1f})"
        )
    print(f"1-min load average {report['load_avg_1min']:.1f}; wrote {RESULTS / 'quantization.json'}")


if __name__ == "__main__":
    main()
