"""A bounded loopback load run against the real app: N clients, each with its own session, for S seconds.

Shared by `tests/reliability/test_load.py` and `bench/bench_load.py`. Each client sends chat completions (small
`max_tokens`: the default model is one CPU model behind a lock, so chat latency is queue-bound) and reads its
session back, with a unique token in every message; afterwards every session is checked for tokens of other
clients (cross-session leakage) and for readability with another client's key (must be 404).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from knowledge.evaluation import percentile

OWN_KEY_CLIENTS = 10  # clients 0-9 have an API key each; the others share one (same owner, separate sessions)
SHARED_KEY = "load-key-shared"
TOPICS = ["the moon", "rivers", "bread", "trains", "music", "tea", "clouds", "chess"]


def client_key(index: int) -> str:
    return f"load-key-{index:02d}" if index < OWN_KEY_CLIENTS else SHARED_KEY


def all_keys(clients: int) -> list[str]:
    return sorted({client_key(i) for i in range(clients)} | {SHARED_KEY, "load-key-outsider"})


def scratch_home(prefix: str) -> Path:
    """A fresh state dir under /tmp that reuses this checkout's prepared models (./.ragtune/models), so a bench does
    not convert the GGUF or export the embedder again; its database is its own."""
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    cached = Path(__file__).resolve().parent.parent / ".ragtune" / "models"
    if cached.is_dir():
        (home / "models").symlink_to(cached.resolve())
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(settings: Any, port: int):
    """The real app (API + UI) under uvicorn in a thread; returns (services, server, thread)."""
    import uvicorn

    from bot.conversation.services import build_services
    from bot.server.app import create_app

    services = build_services(settings)
    server = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError("the app did not start within 60 s")
    return services, server, thread


def stop_app(services: Any, server: Any, thread: threading.Thread, timeout_s: float = 15) -> None:
    """Stop what `start_app` started: uvicorn first, then the pool (the database server stays up)."""
    server.should_exit = True
    thread.join(timeout=timeout_s)
    services.close()


@dataclass
class ClientResult:
    index: int
    key: str
    token: str
    session_id: str | None = None
    chats_ok: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)


async def _request(client: httpx.AsyncClient, result: ClientResult, kind: str, method: str, url: str, **kw) -> Any:
    started = time.perf_counter()
    error, body = None, None
    try:
        response = await client.request(method, url, headers={"Authorization": f"Bearer {result.key}"}, **kw)
        if response.status_code != 200:
            error = f"HTTP {response.status_code}: {response.text[:200]}"
        else:
            body = response.json()
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    result.requests.append({"kind": kind, "seconds": time.perf_counter() - started, "error": error})
    return body


async def run_client(client: httpx.AsyncClient, index: int, deadline: float, max_tokens: int) -> ClientResult:
    result = ClientResult(index, client_key(index), f"tok{index:03d}{secrets.token_hex(4)}")
    turn = 0
    while time.monotonic() < deadline:
        text = f"Say one short thing about {TOPICS[(index + turn) % len(TOPICS)]}. [{result.token}]"
        body = {"model": "ragtune", "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]}
        if result.session_id:
            body["session_id"] = result.session_id
        answer = await _request(client, result, "chat", "POST", "/v1/chat/completions", json=body)
        if answer is not None:
            result.session_id = result.session_id or answer["ragtune"]["session_id"]
            result.chats_ok += 1
        turn += 1
        for _ in range(2):  # reads are cheap and do not wait for the model
            if result.session_id and time.monotonic() < deadline:
                await _request(client, result, "read", "GET", f"/v1/sessions/{result.session_id}")
        if time.monotonic() < deadline:
            await _request(client, result, "list", "GET", "/v1/sessions")
    return result


async def check_isolation(client: httpx.AsyncClient, results: list[ClientResult]) -> list[str]:
    """Each session holds exactly its client's turns and no other client's token; another key gets 404."""
    problems: list[str] = []
    tokens = {r.token for r in results}
    for r in results:
        if r.session_id is None:
            problems.append(f"client {r.index}: no session")
            continue
        own = await client.get(f"/v1/sessions/{r.session_id}", headers={"Authorization": f"Bearer {r.key}"})
        if own.status_code != 200:
            problems.append(f"client {r.index}: own session answered {own.status_code}")
            continue
        messages = own.json()["messages"]
        users = [m["content"] for m in messages if m["role"] == "user"]
        if len(users) != r.chats_ok or any(r.token not in u for u in users):
            problems.append(f"client {r.index}: {len(users)} user turns stored for {r.chats_ok} answered chats")
        text = " ".join(m["content"] for m in messages)
        foreign = [t for t in tokens - {r.token} if t in text]
        if foreign:
            problems.append(f"client {r.index}: holds tokens of other clients {foreign[:3]}")
        outsider = "load-key-outsider" if r.key != "load-key-outsider" else SHARED_KEY
        cross = await client.get(f"/v1/sessions/{r.session_id}", headers={"Authorization": f"Bearer {outsider}"})
        if cross.status_code != 404:
            problems.append(f"client {r.index}: another key read the session ({cross.status_code})")
    return problems


async def run_load(base_url: str, clients: int, seconds: float, max_tokens: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    timeout = httpx.Timeout(seconds + 240, connect=10)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as client:
        started = time.perf_counter()
        deadline = time.monotonic() + seconds
        results = await asyncio.gather(*(run_client(client, i, deadline, max_tokens) for i in range(clients)))
        wall = time.perf_counter() - started
        problems = await check_isolation(client, list(results))
    requests = [q for r in results for q in r.requests]
    errors = [q for q in requests if q["error"]]
    report: dict[str, Any] = {
        "clients": clients,
        "seconds_planned": seconds,
        "max_tokens": max_tokens,
        "wall_s": round(wall, 2),
        "requests": len(requests),
        "errors": len(errors),
        "error_samples": [q["error"] for q in errors][:5],
        "throughput_rps": round(len(requests) / wall, 2) if wall else 0.0,
        "isolation_problems": problems,
        "sessions_checked": len(results),
    }
    for kind in ("chat", "read", "list", "all"):
        seconds_of = [q["seconds"] for q in requests if kind == "all" or q["kind"] == kind]
        report[kind] = {
            "count": len(seconds_of),
            "p50_s": round(percentile(seconds_of, 50), 3),
            "p95_s": round(percentile(seconds_of, 95), 3),
            "per_minute": round(len(seconds_of) / wall * 60, 1) if wall else 0.0,
        }
    return report


def format_report(report: dict[str, Any]) -> str:
    rows = [
        (
            "clients x seconds",
            f"{report['clients']} x {report['seconds_planned']:g} (max_tokens {report['max_tokens']})",
        ),
        ("requests", f"{report['requests']} in {report['wall_s']:.1f} s ({report['throughput_rps']:.2f} req/s)"),
        ("errors", str(report["errors"])),
    ]
    for kind in ("chat", "read", "list", "all"):
        k = report[kind]
        rows.append((f"{kind} p50 / p95", f"{k['p50_s']:.3f} s / {k['p95_s']:.3f} s ({k['count']} requests)"))
    problems = report["isolation_problems"]
    rows.append(("isolation", "ok" if not problems else "; ".join(problems[:3])))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def write_report(report: dict[str, Any], path: Path) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
