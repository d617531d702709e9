"""The feedback loop end to end, as a support team would run it, on the shared support data.

1. The app runs (real database, generator and router, in this process, over HTTP with FastAPI's client).
2. The team asks N customer messages from support-replies on the skill route and corrects each answer with
   the reply the team actually sent (`POST /v1/feedback`, rating down, correction).
3. `ragtune train --from-feedback --route skill --name NAME` with the default training settings.
4. The team goes on: FRESH more messages are answered and corrected after training. `ragtune adapters compare
   NAME base --since <then>`: both answer the held-out split and the fresh corrections; similarity to the team's
   reply, trained-form rate ({{slot}} placeholders and the openings the team's replies use), length, paired
   bootstrap CIs.
5. `ragtune adapters promote NAME --route skill`; the running app's next skill answer is served by it, no restart.

Prints each step's time and the compare report; writes bench/results/feedback_loop.json.
Run: `.venv/bin/python -m bench.demo_feedback_loop [--n 160] [--fresh 32] [--name support-tone]`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATA = ROOT.parent / "shared" / "data" / "support-replies" / "support_replies.csv"
KEY = "demo-key"


def support_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    with DATA.open(newline="") as handle:
        rows = [(r["instruction"], r["response"]) for r in csv.DictReader(handle)]
    return random.Random(seed).sample(rows, n)


def ragtune(home: Path, *args: str) -> tuple[str, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=ROOT,
        env={**os.environ, "RAGTUNE_HOME": str(home)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"ragtune {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout, time.perf_counter() - started


def correct(client: Any, headers: dict[str, str], rows: list[tuple[str, str]], max_tokens: int) -> None:
    """Each message answered on the skill route, then rated down with the team's reply as the correction."""
    for message, reply in rows:
        answer = client.post(
            "/v1/chat/completions",
            headers=headers,
            json={"model": "skill", "max_tokens": max_tokens, "messages": [{"role": "user", "content": message}]},
        )
        answer.raise_for_status()
        session = answer.json()["ragtune"]["session_id"]
        rated = client.post(
            "/v1/feedback",
            headers=headers,
            json={"session_id": session, "turn": 1, "rating": "down", "correction": reply},
        )
        rated.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=160, help="customer messages the team corrects")
    parser.add_argument("--fresh", type=int, default=32, help="messages corrected after training (scored too)")
    parser.add_argument("--name", default="support-tone")
    parser.add_argument("--max-tokens", type=int, default=48, help="length of the app's answers before correction")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fastapi.testclient import TestClient

    from bench.load import scratch_home
    from bot.config import load_settings
    from bot.conversation.services import build_services
    from bot.server.app import create_app

    home = scratch_home("ragtune-demo-")
    timings: dict[str, float] = {}
    settings = load_settings(home=home, api_keys=[KEY])
    started = time.perf_counter()
    services = build_services(settings)
    timings["app start s"] = time.perf_counter() - started
    try:
        client = TestClient(create_app(services))
        headers = {"Authorization": f"Bearer {KEY}"}
        rows = support_rows(args.n + args.fresh)
        trained_rows, fresh_rows = rows[: args.n], rows[args.n :]
        started = time.perf_counter()
        correct(client, headers, trained_rows, args.max_tokens)
        timings[f"{args.n} answers corrected through the API s"] = time.perf_counter() - started

        trained, timings["ragtune train --from-feedback s"] = ragtune(
            home, "train", "--from-feedback", "--route", "skill", "--name", args.name
        )
        then = datetime.now(UTC).isoformat(timespec="seconds")
        started = time.perf_counter()
        correct(client, headers, fresh_rows, args.max_tokens)
        timings[f"{args.fresh} more corrected after training s"] = time.perf_counter() - started
        compared, timings["ragtune adapters compare s"] = ragtune(
            home, "adapters", "compare", args.name, "base", "--since", then
        )
        promoted, timings["ragtune adapters promote s"] = ragtune(
            home, "adapters", "promote", args.name, "--route", "skill"
        )

        started = time.perf_counter()
        adapter = None
        while time.perf_counter() - started < 30:  # hot-load (2 s scan) and the promotion cache (2 s)
            answer = client.post(
                "/v1/chat/completions",
                headers=headers,
                json={"model": "skill", "max_tokens": 48, "messages": [{"role": "user", "content": rows[0][0]}]},
            ).json()
            adapter = answer["ragtune"]["adapter"]
            if adapter == args.name:
                break
            time.sleep(0.5)
        timings["promotion to first answer served by it s"] = time.perf_counter() - started
    finally:
        services.close()
        from bot.db import server as pg

        pg.stop(home / "pgdata")
    report = {
        "n": args.n,
        "fresh": args.fresh,
        "timings": timings,
        "train_output": trained,
        "compare_output": compared,
        "promote_output": promoted,
        "served_by": adapter,
        "sample_answer": answer["choices"][0]["message"]["content"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "feedback_loop.json").write_text(json.dumps(report, indent=2))
    width = max(len(k) for k in timings)
    for name, seconds in timings.items():
        print(f"{name:<{width}}  {seconds:7.1f}")
    print(
        "\n--- train\n" + trained.strip() + "\n--- compare\n" + compared.strip() + "\n--- promote\n" + promoted.strip()
    )
    print(f"\nnext skill answer served by: {adapter}\n{report['sample_answer']}")
    print(f"wrote {RESULTS / 'feedback_loop.json'}")


if __name__ == "__main__":
    main()
