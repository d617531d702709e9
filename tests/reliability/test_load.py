"""Load: N concurrent clients against the real app on loopback for a bounded time; 0 errors, no leakage.

Real uvicorn, PostgreSQL and default model. Defaults 50 clients x 60 s; override with LOAD_TEST_CLIENTS and
LOAD_TEST_SECONDS (and LOAD_TEST_MAX_TOKENS); not RAGTUNE_*, which tests/conftest.py clears. Figures go to stdout
and bench/results/load_test.json.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from bench.load import all_keys, format_report, free_port, run_load, start_app, stop_app, write_report
from tests.reliability.conftest import REPO_ROOT

pytestmark = pytest.mark.slow
CLIENTS = int(os.environ.get("LOAD_TEST_CLIENTS", "50"))
SECONDS = float(os.environ.get("LOAD_TEST_SECONDS", "60"))
MAX_TOKENS = int(os.environ.get("LOAD_TEST_MAX_TOKENS", "4"))


def test_concurrent_clients_get_no_errors_and_no_leakage(settings):
    port = free_port()
    config = settings.model_copy(update={"api_keys": all_keys(CLIENTS), "port": port, "pool_max_size": 16,
                                         "chat_max_new_tokens": MAX_TOKENS})  # fmt: skip
    services, server, thread = start_app(config, port)
    try:
        report = asyncio.run(run_load(f"http://127.0.0.1:{port}", CLIENTS, SECONDS, MAX_TOKENS))
    finally:
        stop_app(services, server, thread)
    write_report(report, REPO_ROOT / "bench" / "results" / "load_test.json")
    print("\n" + format_report(report))
    assert report["errors"] == 0, report["error_samples"]
    assert not report["isolation_problems"], report["isolation_problems"]
    assert report["chat"]["count"] >= CLIENTS  # every client got at least one answer: concurrency was exercised
