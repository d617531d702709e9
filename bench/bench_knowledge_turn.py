"""One person asking knowledge questions: the whole turn (route, retrieve, evidence, answer, store), per backend.

The app's services on a fresh state dir with the project's own docs ingested (as `ragtune up` loads them); each
question in its own session, one after another, answered in `extractive` mode (the default for the packaged
model: quoted) and in `generative` mode (written by the model and verified sentence by sentence), on llama.cpp
and on transformers. Reports p50/p95 turn latency and the generated answer's tokens.
Run: `.venv/bin/python -m bench.bench_knowledge_turn [--repeats 2]`. Writes bench/results/knowledge_turn.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from bench.bench_concurrency import QUESTIONS  # the same questions about the project's docs
from bench.load import scratch_home
from knowledge.evaluation import percentile

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def measure(home: Path, backend: str, mode: str, repeats: int) -> dict:
    from bot.config import load_settings
    from bot.conversation import TurnOptions
    from bot.conversation.services import build_services, load_demo_docs

    settings = load_settings(home=home, generator_backend=backend, answer_mode=mode)
    services = build_services(settings)
    try:
        load_demo_docs(services, ROOT / "docs")
        chat = services.conversation
        chat.ask(chat.memory.create_session("bench"), "bench", QUESTIONS[0], TurnOptions(route="knowledge"))  # warm
        seconds, tokens, not_found = [], [], 0
        for question in QUESTIONS * repeats:
            session = chat.memory.create_session("bench")
            started = time.perf_counter()
            done = chat.ask(session, "bench", question, TurnOptions(route="knowledge"))
            seconds.append(time.perf_counter() - started)
            tokens.append(done.usage["completion_tokens"])
            not_found += bool(done.not_found)
    finally:
        services.close()
    return {
        "generator": type(services.generator).__name__,
        "turns": len(seconds),
        "p50_s": percentile(seconds, 50),
        "p95_s": percentile(seconds, 95),
        "mean_completion_tokens": sum(tokens) / len(tokens),
        "not_found": not_found,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    home = scratch_home("ragtune-bench-")
    results = {}
    try:
        for backend in ("llamacpp", "transformers"):
            for mode in ("extractive", "generative"):
                results[f"{backend} {mode}"] = measure(home, backend, mode, args.repeats)
    finally:
        from bot.db import server as pg

        pg.stop(home / "pgdata")
        shutil.rmtree(home, ignore_errors=True)
    report = {"results": results, "load_avg_1min": os.getloadavg()[0]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "knowledge_turn.json").write_text(json.dumps(report, indent=2))
    print(f"{'backend, answer mode':<26}{'turns':>6}{'p50 s':>8}{'p95 s':>8}{'tokens':>8}{'not found':>10}")
    for name, r in results.items():
        print(
            f"{name:<26}{r['turns']:>6}{r['p50_s']:>8.2f}{r['p95_s']:>8.2f}"
            f"{r['mean_completion_tokens']:>8.0f}{r['not_found']:>10}"
        )
    print(f"target: knowledge turn p50 <= 1.5 s; 1-min load {report['load_avg_1min']:.1f}; wrote {RESULTS}")


if __name__ == "__main__":
    main()
