"""Concurrent sessions through the HTTP API on loopback: time to first token, full-turn latency, errors, isolation.

Starts the real app (database, embedder, router, generator) in this process on a free loopback port, runs N
sessions at once, each with T streamed turns (a knowledge question, then "make that shorter"), under a time
limit, then checks that no session's stored memory holds another session's turns and that a second API key
cannot read the first key's sessions. Runs once per generator backend (llama.cpp, the default, against the
transformers baseline) on the same database and documents, and reports their ratio. Prints a table and
writes bench/results/concurrency.json (`--workload skill`: every turn a generated writing request, to
concurrency-skill.json).

    .venv/bin/python -m bench.bench_concurrency --sessions 20 --turns 2 --max-tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402

from bench.load import free_port, scratch_home, stop_app  # noqa: E402
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
# The `skill` workload: writing requests sent to the skill route, so every turn is generated (in the default
# `mixed` workload a knowledge answer quotes its sources and only the follow-up is generated).
WRITING = [
    "Write a short thank-you note to the support team",
    "Draft a friendly reminder about tomorrow's meeting",
    "Write two sentences welcoming a new colleague",
    "Write a polite reply declining an invitation",
    "Write a short apology for a late delivery",
]
KEYS = ["bench-key-a", "bench-key-b"]


def start_app(home: Path, port: int, max_tokens: int, backend: str):
    from bot.config import load_settings
    from bot.conversation.services import load_demo_docs

    settings = load_settings(
        home=home,
        api_keys=KEYS,
        chat_max_new_tokens=max_tokens,
        pool_max_size=30,
        port=port,
        generator_backend=backend,
    )
    services, server, thread = start_loaded_app(settings, port)
    load_demo_docs(services, REPO / "docs")
    return services, server, thread


async def run_session(
    client: httpx.AsyncClient, index: int, turns: int, max_tokens: int, deadline: float, workload: str
) -> dict:
    key = KEYS[index % 2]
    marker = f"S{index:02d}"
    headers = {"Authorization": f"Bearer {key}"}
    session_id, results = None, []
    for turn in range(turns):
        if time.monotonic() > deadline:
            break
        if workload == "skill":
            text, model = WRITING[(index + turn) % len(WRITING)], "skill"
        else:
            text, model = (QUESTIONS[index % len(QUESTIONS)] if turn == 0 else "make that shorter"), "ragtune"
        body = {"model": model, "stream": True, "max_tokens": max_tokens,
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
            *(
                run_session(client, i, args.turns, args.max_tokens, deadline, args.workload)
                for i in range(args.sessions)
            )
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


def run_backend(args: argparse.Namespace, home: Path, backend: str) -> dict:
    port = free_port()
    services, server, thread = start_app(home, port, args.max_tokens, backend)
    try:
        report = asyncio.run(main_async(args, f"http://127.0.0.1:{port}"))
    finally:
        stop_app(services, server, thread)
    report["backend"] = type(services.generator).__name__
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--backends", default="llamacpp,transformers", help="comma-separated; the first is compared")
    parser.add_argument(
        "--workload", choices=("mixed", "skill"), default="mixed", help="mixed: a question, then 'make that shorter'"
    )
    parser.add_argument(
        "--time-limit", type=float, default=180.0, help="Seconds per backend; turns not started by then are skipped."
    )
    args = parser.parse_args()

    home = scratch_home("ragtune-bench-")
    reports = {}
    try:
        for backend in args.backends.split(","):
            reports[backend] = run_backend(args, home, backend)
    finally:
        from bot.db import server as pg

        pg.stop(home / "pgdata")
        shutil.rmtree(home, ignore_errors=True)
    names = list(reports)
    result = {"backends": reports, "load_avg_1min": os.getloadavg()[0]}
    if len(names) > 1:
        first, baseline = reports[names[0]], reports[names[-1]]
        result["throughput_ratio"] = first["turns_per_minute"] / max(baseline["turns_per_minute"], 1e-9)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result["workload"] = args.workload
    output = RESULTS / ("concurrency.json" if args.workload == "mixed" else f"concurrency-{args.workload}.json")
    output.write_text(json.dumps(result, indent=2))
    rows: list[tuple[str, ...]] = [("", *names)]
    rows += [
        ("generator", *(r["backend"] for r in reports.values())),
        ("sessions x turns", *(f"{r['sessions']} x {r['turns_per_session']}" for r in reports.values())),
        ("turns done / planned", *(f"{r['turns_done']} / {r['turns_planned']}" for r in reports.values())),
        ("errors", *(str(r["errors"]) for r in reports.values())),
        ("TTFT p50 / p95 s", *(f"{r['ttft_p50_s']:.2f} / {r['ttft_p95_s']:.2f}" for r in reports.values())),
        ("turn p50 / p95 s", *(f"{r['turn_p50_s']:.2f} / {r['turn_p95_s']:.2f}" for r in reports.values())),
        ("turns/min", *(f"{r['turns_per_minute']:.1f} ({r['wall_s']:.0f} s)" for r in reports.values())),
        (
            "routes",
            *(", ".join(f"{k}: {v}" for k, v in sorted(r["routes"].items(), key=str)) for r in reports.values()),
        ),
        (
            "memory isolation",
            *(
                "ok" if not r["isolation_problems"] else "; ".join(r["isolation_problems"][:2])
                for r in reports.values()
            ),
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    if "throughput_ratio" in result:
        print(f"turns/min {names[0]} / {names[-1]}: {result['throughput_ratio']:.2f}x (max_tokens {args.max_tokens})")
    print(f"written: {output}")
    if any(r["errors"] or r["isolation_problems"] for r in reports.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
