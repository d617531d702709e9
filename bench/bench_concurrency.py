"""Concurrent sessions through the HTTP API on loopback: time to first token, full-turn latency, errors, isolation.

Starts the real app (database, embedder, router, generator) in this process on a free loopback port, runs N
sessions at once, each with T streamed turns (a knowledge question, then "make that shorter"), under a time
limit, then checks that no session's stored memory holds another session's turns and that a second API key
cannot read the first key's sessions. Prints a table and writes bench/results/concurrency.json.

    .venv/bin/python -m bench.bench_concurrency --sessions 20 --turns 2 --max-tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402

from bench.load import free_port, stop_app  # noqa: E402
from bench.load import start_app as start_loaded_app  # noqa: E402
from knowledge.evaluation import percentile  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
QUESTIONS = [
    "How do I train an adapter?",
    "How do I add documents to a collection?",
    "What file types are supported?",
    "How do I set an API key?",
    "How does the router decide?",
]
KEYS = ["bench-key-a", "bench-key-b"]


def start_app(home: Path, port: int, max_tokens: int):
    from bot.config import load_settings
    from bot.conversation.services import load_demo_docs

    settings = load_settings(home=home, api_keys=KEYS, chat_max_new_tokens=max_tokens, pool_max_size=30, port=port)
    services, server, thread = start_loaded_app(settings, port)
    load_demo_docs(services, REPO / "docs")
    return services, server, thread


async def run_session(client: httpx.AsyncClient, index: int, turns: int, max_tokens: int, deadline: float) -> dict:
    key = KEYS[index % 2]
    marker = f"S{index:02d}"
    headers = {"Authorization": f"Bearer {key}"}
    session_id, results = None, []
    for turn in range(turns):
        if time.monotonic() > deadline:
            break
        text = QUESTIONS[index % len(QUESTIONS)] if turn == 0 else "make that shorter"
        body = {"model": "ragtune", "stream": True, "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": f"{text} ({marker})"}]}  # fmt: skip
        if session_id:
            body["session_id"] = session_id
        started = time.perf_counter()
        ttft, error, route = None, None, None
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
                if response.status_code != 200:
                    error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                else:
                    async for line in response.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            error = chunk["error"]["message"]
                            continue
                        if "ragtune" in chunk:
                            session_id = chunk["ragtune"]["session_id"]
                            route = chunk["ragtune"]["route"]
                        if ttft is None and chunk["choices"][0]["delta"].get("content"):
                            ttft = time.perf_counter() - started
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        results.append({"turn": turn + 1, "ttft_s": ttft, "total_s": time.perf_counter() - started,
                        "error": error, "route": route})  # fmt: skip
    return {"index": index, "marker": marker, "key": key, "session_id": session_id, "turns": results}


async def check_isolation(client: httpx.AsyncClient, sessions: list[dict]) -> list[str]:
    problems = []
    for s in sessions:
        if not s["session_id"]:
            problems.append(f"{s['marker']}: no session id")
            continue
        own = await client.get(f"/v1/sessions/{s['session_id']}", headers={"Authorization": f"Bearer {s['key']}"})
        if own.status_code != 200:
            problems.append(f"{s['marker']}: own session answered {own.status_code}")
            continue
        users = [m["content"] for m in own.json()["messages"] if m["role"] == "user"]
        foreign = [u for u in users if f"({s['marker']})" not in u]
        if foreign or len(users) != sum(1 for t in s["turns"] if not t["error"]):
            problems.append(f"{s['marker']}: memory holds {len(users)} user turns, foreign: {foreign[:2]}")
        other = KEYS[1] if s["key"] == KEYS[0] else KEYS[0]
        cross = await client.get(f"/v1/sessions/{s['session_id']}", headers={"Authorization": f"Bearer {other}"})
        if cross.status_code != 404:
            problems.append(f"{s['marker']}: another key read it ({cross.status_code})")
    return problems


async def main_async(args: argparse.Namespace, base_url: str) -> dict:
    deadline = time.monotonic() + args.time_limit
    limits = httpx.Limits(max_connections=args.sessions + 5)
    async with httpx.AsyncClient(base_url=base_url, timeout=args.time_limit + 60, limits=limits) as client:
        started = time.perf_counter()
        sessions = await asyncio.gather(
            *(run_session(client, i, args.turns, args.max_tokens, deadline) for i in range(args.sessions))
        )
        wall = time.perf_counter() - started
        problems = await check_isolation(client, sessions)
    turns = [t for s in sessions for t in s["turns"]]
    ok = [t for t in turns if not t["error"]]
    ttfts = [t["ttft_s"] for t in ok if t["ttft_s"] is not None]
    totals = [t["total_s"] for t in ok]
    return {
        "sessions": args.sessions,
        "turns_per_session": args.turns,
        "max_tokens": args.max_tokens,
        "turns_done": len(turns),
        "turns_planned": args.sessions * args.turns,
        "errors": len(turns) - len(ok),
        "error_samples": [t["error"] for t in turns if t["error"]][:5],
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "turn_p50_s": percentile(totals, 50),
        "turn_p95_s": percentile(totals, 95),
        "turn_mean_s": statistics.fmean(totals) if totals else float("nan"),
        "wall_s": wall,
        "turns_per_minute": len(ok) / wall * 60 if wall else 0.0,
        "routes": {r: sum(1 for t in ok if t["route"] == r) for r in {t["route"] for t in ok}},
        "isolation_problems": problems,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument(
        "--time-limit", type=float, default=180.0, help="Seconds; turns not started by then are skipped."
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="ragtune-bench-", dir="/tmp"))
    cached = REPO / ".ragtune" / "models"
    if (cached / "dequantised").is_dir():  # reuse the de-quantised model instead of converting the GGUF again
        (home / "models").symlink_to(cached)
    port = free_port()
    services, server, thread = start_app(home, port, args.max_tokens)
    try:
        report = asyncio.run(main_async(args, f"http://127.0.0.1:{port}"))
    finally:
        stop_app(services, server, thread)
        from bot.db import server as pg

        pg.stop(home / "pgdata")
        shutil.rmtree(home, ignore_errors=True)
    report["device"] = "cpu" if services.settings.device != "cuda" else "cuda"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "concurrency.json").write_text(json.dumps(report, indent=2))
    rows = [
        (
            "sessions x turns",
            f"{report['sessions']} x {report['turns_per_session']} (max_tokens {report['max_tokens']})",
        ),
        ("turns done / planned", f"{report['turns_done']} / {report['turns_planned']}"),
        ("errors", str(report["errors"])),
        ("TTFT p50 / p95", f"{report['ttft_p50_s']:.2f} s / {report['ttft_p95_s']:.2f} s"),
        ("turn p50 / p95", f"{report['turn_p50_s']:.2f} s / {report['turn_p95_s']:.2f} s"),
        ("throughput", f"{report['turns_per_minute']:.1f} turns/min over {report['wall_s']:.0f} s"),
        ("routes", ", ".join(f"{k}: {v}" for k, v in sorted(report["routes"].items(), key=str))),
        ("memory isolation", "ok" if not report["isolation_problems"] else "; ".join(report["isolation_problems"][:3])),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"written: {RESULTS / 'concurrency.json'}")
    if report["errors"] or report["isolation_problems"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
