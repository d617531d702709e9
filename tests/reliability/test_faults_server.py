"""Fault: the embedded server's data dir across clean restarts and a SIGKILL of the postmaster (WAL recovery)."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil

from bot.db import server
from bot.db.connection import connect, open_database
from bot.memory import MemoryStore
from tests.reliability.conftest import private_settings

OWNER = "restart-user"


def test_data_dir_survives_restarts_and_a_killed_postmaster(fault_home):
    settings = private_settings(fault_home, connect_timeout_s=2)
    pgdata = settings.pgdata_dir
    database = open_database(settings)
    memory = MemoryStore(database.pool)
    sid = memory.create_session(OWNER)
    try:
        for i in range(3):  # clean stop/start cycles, a turn stored before each
            memory.save_turn(sid, OWNER, f"question {i}", f"answer {i}")
            assert server.stop(pgdata) is True
            assert server.start(pgdata) == database.url
        memory.save_turn(sid, OWNER, "committed before the crash", "kept")
        open_tx = connect(database.url)  # a transaction that is open when the server dies must vanish
        open_tx.execute("INSERT INTO sessions (id, owner) VALUES ('uncommitted-session-000000000000', %s)", (OWNER,))
        pid = server.status(pgdata).pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # the fault: no checkpoint, no clean shutdown
        with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
            psutil.Process(pid).wait(timeout=10)
        open_tx.close()
        deadline = time.monotonic() + 20
        while server.status(pgdata).running and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not server.status(pgdata).running

        assert server.start(pgdata) == database.url  # crash recovery replays the WAL
        stored = memory.messages(sid, OWNER)  # the app's pool reconnects by itself
        assert [m.content for m in stored if m.role == "user"] == [
            "question 0",
            "question 1",
            "question 2",
            "committed before the crash",
        ]
        with connect(database.url) as conn:
            lost = conn.execute("SELECT count(*) FROM sessions WHERE id = 'uncommitted-session-000000000000'")
            assert lost.fetchone()[0] == 0
        memory.save_turn(sid, OWNER, "after recovery", "works")
        assert len(memory.messages(sid, OWNER)) == 10
        print("\nserver restarts: 3 clean stop/start + 1 SIGKILL of the postmaster survived, 8 rows before, 0 lost")
    finally:
        database.close()
