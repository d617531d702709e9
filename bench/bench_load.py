"""Loopback load benchmark: N clients with their own sessions (some with their own API key) for S seconds.

Starts the real app (embedded PostgreSQL, embedder, router, default model) in a fresh state dir on a free port,
runs `bench.load.run_load`, prints throughput, p50/p95 per request kind, errors and the isolation check, and writes
bench/results/load.json.

    .venv/bin/python -m bench.bench_load --clients 50 --seconds 60 --max-tokens 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.load import all_keys, format_report, free_port, run_load, start_app, stop_app, write_report  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=4)
    args = parser.parse_args()

    from bot.config import load_settings
    from bot.db import server as pg

    home = Path(tempfile.mkdtemp(prefix="ragtune-load-", dir="/tmp"))
    for cached in (REPO / "test-artifacts" / "llm-home" / "models", REPO / ".ragtune" / "models"):
        if (cached / "dequantised").is_dir():  # reuse the de-quantised model instead of converting the GGUF again
            (home / "models").symlink_to(cached)
            break
    port = free_port()
    settings = load_settings(home=home, api_keys=all_keys(args.clients), port=port, pool_max_size=16,
                             chat_max_new_tokens=args.max_tokens)  # fmt: skip
    services, server, thread = start_app(settings, port)
    try:
        report = asyncio.run(run_load(f"http://127.0.0.1:{port}", args.clients, args.seconds, args.max_tokens))
    finally:
        stop_app(services, server, thread)
        pg.stop(home / "pgdata")
        shutil.rmtree(home, ignore_errors=True)
    write_report(report, REPO / "bench" / "results" / "load.json")
    print(format_report(report))
    print(f"written: {REPO / 'bench' / 'results' / 'load.json'}")
    if report["errors"] or report["isolation_problems"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
