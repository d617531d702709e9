"""What a newcomer waits for: set-up's model preparation, the first and a warm `ragtune up`, and `ragtune search`.

On a fresh state dir: `ragtune models prepare` (what `scripts/setup.sh` ends with), then `ragtune up` started
twice (first start, then warm), each timed from launch to a 200 from /healthz (the chat is ready), counting the
lines it printed until then; then `ragtune search` wall time with the database running and stopped.
Run: `.venv/bin/python -m bench.bench_first_start`. Writes bench/results/first_start.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RAGTUNE = str(ROOT / ".venv" / "bin" / "ragtune")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(env: dict, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run([RAGTUNE, *args], env=env, cwd=ROOT, capture_output=True, check=True)
    return time.perf_counter() - started


def up_until_ready(env: dict, timeout_s: float = 300) -> dict:
    """Start `ragtune up`, wait for /healthz, stop it; seconds to ready and the lines printed until then."""
    port = _port()
    started = time.monotonic()
    process = subprocess.Popen(
        [RAGTUNE, "up"],
        env={**env, "RAGTUNE_PORT": str(port)},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in process.stdout), daemon=True).start()
    ready = None
    while time.monotonic() - started < timeout_s and process.poll() is None:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200:
                ready = time.monotonic() - started
                break
        except OSError:
            time.sleep(0.1)
    time.sleep(0.3)
    shown = list(lines)
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    return {"ready_s": ready, "lines": len(shown), "output": shown}


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="ragtune-first-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGTUNE_") and k != "DATABASE_URL"}
    env["RAGTUNE_HOME"] = str(home)
    try:
        report = {"prepare_s": timed(env, "models", "prepare")}
        report["first_up"] = up_until_ready(env)
        report["warm_up"] = up_until_ready(env)
        subprocess.run([RAGTUNE, "db", "start"], env=env, cwd=ROOT, capture_output=True, check=False)
        report["search_db_running_s"] = timed(env, "search", "how do I train an adapter", "-k", "3")
        subprocess.run([RAGTUNE, "db", "stop"], env=env, cwd=ROOT, capture_output=True, check=False)
        report["search_db_stopped_s"] = timed(env, "search", "how do I train an adapter", "-k", "3")
    finally:
        subprocess.run([RAGTUNE, "db", "stop"], env=env, cwd=ROOT, capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "first_start.json").write_text(json.dumps(report, indent=2))
    rows = [
        ("ragtune models prepare (set-up) s", f"{report['prepare_s']:.1f}"),
        ("first ragtune up to ready s (target <= 15)", f"{report['first_up']['ready_s']:.1f}"),
        ("  lines printed until ready (target <= 10)", str(report["first_up"]["lines"])),
        ("warm ragtune up to ready s (target <= 5)", f"{report['warm_up']['ready_s']:.1f}"),
        ("ragtune search wall s, database running (target <= 3)", f"{report['search_db_running_s']:.2f}"),
        ("ragtune search wall s, database stopped", f"{report['search_db_stopped_s']:.2f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("first start printed:\n  " + "\n  ".join(report["first_up"]["output"]))
    print(f"wrote {RESULTS / 'first_start.json'}")


if __name__ == "__main__":
    main()
