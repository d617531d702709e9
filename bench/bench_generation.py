"""Generation through `bot.llm` against bare `model.generate` (the ceiling) on the same prompt.

Measures: tokens/s (greedy, same tokens), time to first token for a 500-token prompt, first start
(de-quantising the GGUF into an empty cache) and warm start (cached safetensors) in fresh
processes, and RSS. Run: `.venv/bin/python -m bench.bench_generation [--threads 2] [--new-tokens 128]`.
Writes bench/results/generation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LONG_PROMPT_TOKENS = 500
FILLER = (
    "The harbour office keeps a log of every ship that enters the bay, with its tonnage, cargo, crew and the "
    "weather at the time of arrival. Inspectors compare the log against customs declarations each week. "
)

# Phases of one start, from the script's first line to a generator ready for its first request. The
# transformers import is timed on its own only to show where the time goes: loading imports it anyway.
START_SCRIPT = """
import json, sys, time
started = time.perf_counter()
import torch
torch.set_num_threads({threads})
torch_done = time.perf_counter()
from pathlib import Path
from bot.llm.loading import load_base_model
from bot.llm.local import LocalGenerator
imported = time.perf_counter()
import transformers.modeling_utils
from transformers import AutoModelForCausalLM, AutoTokenizer
transformers_done = time.perf_counter()
loaded = load_base_model("smollm2", Path(sys.argv[1]), device="cpu", dtype="float32")
LocalGenerator(loaded)
done = time.perf_counter()
print(json.dumps({{
    "torch_import_s": torch_done - started,
    "imports_s": imported - started,
    "transformers_import_s": transformers_done - imported,
    "load_s": done - transformers_done,
    "ready_s": done - started,
    "from_cache": loaded.from_cache,
}}))
"""


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_in_fresh_process(cache: Path, threads: int) -> dict:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", START_SCRIPT.format(threads=threads), str(cache)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started  # also counts interpreter start-up and exit
    return result


def long_prompt(generator) -> list[dict[str, str]]:
    """A user message whose templated prompt is exactly LONG_PROMPT_TOKENS tokens."""
    tokenizer = generator.tokenizer
    ids = tokenizer(FILLER * 40, add_special_tokens=False)["input_ids"]
    overhead = len(generator.render([{"role": "user", "content": ""}]))
    size = LONG_PROMPT_TOKENS - overhead
    for _ in range(5):  # decoding and re-encoding can shift the count by a token or two
        message = [{"role": "user", "content": tokenizer.decode(ids[:size])}]
        actual = len(generator.render(message))
        if actual == LONG_PROMPT_TOKENS:
            break
        size += LONG_PROMPT_TOKENS - actual
    return message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=None, help="warm model cache (default: the state dir's)")
    args = parser.parse_args()
    if args.cache is None:
        from bot.config import load_settings

        args.cache = load_settings().model_cache_dir
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory(prefix="ragtune-bench-") as empty:
        first = start_in_fresh_process(Path(empty), args.threads)
        warm = start_in_fresh_process(Path(empty), args.threads)

    import torch
    from transformers import TextIteratorStreamer

    from bot.llm.loading import load_base_model
    from bot.llm.local import LocalGenerator

    torch.set_num_threads(args.threads)
    rss_before = rss_mb()
    loaded = load_base_model("smollm2", args.cache, device="cpu", dtype="float32")
    generator = LocalGenerator(loaded, max_new_tokens=args.new_tokens, threads=args.threads)
    rss_loaded = rss_mb()
    model, eos = loaded.model, sorted(generator.eos_token_ids)

    def bare(ids: torch.Tensor, new: int, min_new: int = 0) -> tuple[float, int]:
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=new, min_new_tokens=min_new, do_sample=False, eos_token_id=eos)
        return time.perf_counter() - started, out.shape[1] - ids.shape[1]

    def streamer_thread(ids: torch.Tensor, new: int) -> tuple[float, int]:
        streamer = TextIteratorStreamer(generator.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = {"max_new_tokens": new, "do_sample": False, "eos_token_id": eos, "streamer": streamer}
        started = time.perf_counter()
        worker = threading.Thread(target=lambda: model.generate(ids, **kwargs))
        worker.start()
        for _ in streamer:
            pass
        worker.join()
        return time.perf_counter() - started, 0

    # Throughput: a prompt that makes the model talk; greedy, so both paths produce the same tokens.
    story = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]
    story_ids = torch.tensor([generator.render(story)])
    generator.generate(story, max_new_tokens=4)  # warm-up
    runs: dict[str, list[float]] = {"bare": [], "module": [], "streamer": []}
    tokens = {}
    for _ in range(args.repeats):  # interleaved, best of N: the cores are shared with other work
        seconds, tokens["bare"] = bare(story_ids, args.new_tokens)
        runs["bare"].append(seconds)
        result = generator.generate(story, max_new_tokens=args.new_tokens)
        runs["module"].append(result.seconds)
        tokens["module"] = result.completion_tokens
        runs["streamer"].append(streamer_thread(story_ids, args.new_tokens)[0])
    tokens["streamer"] = tokens["bare"]
    rate = {name: tokens[name] / min(times) for name, times in runs.items()}

    # Time to first token, 500-token prompt.
    prompt = long_prompt(generator)
    prompt_ids = torch.tensor([generator.render(prompt)])
    ttft_bare, ttft_module = [], []
    for _ in range(args.repeats):
        ttft_bare.append(bare(prompt_ids, 1, 1)[0])
        stream = generator.stream(prompt, max_new_tokens=2)
        next(stream)
        ttft_module.append(stream.stats.time_to_first_token_s)
        stream.close()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    report = {
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "tokens_generated": tokens,
        "tokens_per_s": rate,
        "streaming_overhead_pct": 100 * (1 - rate["module"] / rate["bare"]),
        "ttft_prompt_tokens": prompt_ids.shape[1],
        "ttft_s": {"bare": statistics.median(ttft_bare), "module": statistics.median(ttft_module)},
        "ttft_s_all": {"bare": ttft_bare, "module": ttft_module},
        "first_start": first,
        "warm_start": warm,
        "rss_mb": {"before_load": rss_before, "after_load": rss_loaded, "peak": peak_rss},
        "load_avg_1min": os.getloadavg()[0],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "generation.json").write_text(json.dumps(report, indent=2))

    rows = [
        ("tokens/s bare model.generate (ceiling)", f"{rate['bare']:.1f}"),
        ("tokens/s bot.llm stream", f"{rate['module']:.1f}"),
        ("tokens/s generate + TextIteratorStreamer thread", f"{rate['streamer']:.1f}"),
        ("streaming overhead vs ceiling (target <= 10%)", f"{report['streaming_overhead_pct']:.1f}%"),
        (f"TTFT {prompt_ids.shape[1]}-token prompt, bare", f"{report['ttft_s']['bare']:.3f} s"),
        (f"TTFT {prompt_ids.shape[1]}-token prompt, bot.llm (target <= 0.5 s)", f"{report['ttft_s']['module']:.3f} s"),
        ("first start: start -> ready (process incl. exit)", f"{first['ready_s']:.1f} s ({first['process_s']:.1f} s)"),
        (
            "warm start: start -> ready (target <= 2 s; process incl. exit)",
            f"{warm['ready_s']:.2f} s ({warm['process_s']:.1f} s)",
        ),
        (
            "  warm: torch / transformers import / load + tokenizer",
            f"{warm['torch_import_s']:.2f} / {warm['transformers_import_s']:.2f} / {warm['load_s']:.2f} s",
        ),
        ("RSS after load / peak", f"{rss_loaded:.0f} / {peak_rss:.0f} MB"),
        ("threads / 1-min load average", f"{args.threads} / {report['load_avg_1min']:.1f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"wrote {RESULTS / 'generation.json'}")


if __name__ == "__main__":
    main()
