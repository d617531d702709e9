"""Fault: `ragtune ingest` is killed with SIGKILL while it writes; every document is then fully in or absent.

The store writes each file in its own transaction (documents row + all its chunks); this test checks that
instead of assuming it: after the kill, each stored document has exactly the chunks a fresh chunking of its
file gives and no chunk is orphaned; a second run completes the rest with no duplicates.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from knowledge.chunking import chunk_document
from knowledge.loaders import load_file

pytestmark = pytest.mark.slow
COLLECTION = "crash-ingest"
FILES = 60
TEXT_CHARS = 700  # about one chunk per file: the kill must land in the write phase, not in embedding


def _write_corpus(shared_data: Path, target: Path) -> list[Path]:
    target.mkdir()
    paths = []
    with (shared_data / "scifact" / "corpus.jsonl").open() as lines:
        for i, line in enumerate(lines):
            if i == FILES:
                break
            record = json.loads(line)
            path = target / f"doc-{record['_id']}.md"
            path.write_text(f"# {record['title']}\n\n{record['text'][:TEXT_CHARS]}\n")
            paths.append(path)
    return paths


def _ingest(folder: Path, settings) -> subprocess.Popen:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "RAGTUNE_HOME": str(settings.home),
        "DATABASE_URL": settings.database_url,
        "OMP_NUM_THREADS": "2",
        "OPENBLAS_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "bot", "ingest", str(folder), "-c", COLLECTION, "--quiet"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _state(conn: psycopg.Connection) -> tuple[dict[str, int], int]:
    """Chunks per stored document (by file name) and the number of chunks without a document."""
    rows = conn.execute(
        "SELECT d.source, count(c.id) FROM documents d LEFT JOIN chunks c ON c.document_id = d.id"
        " WHERE d.collection = %s GROUP BY d.id, d.source",
        (COLLECTION,),
    ).fetchall()
    orphans = conn.execute(
        "SELECT count(*) FROM chunks c LEFT JOIN documents d ON d.id = c.document_id WHERE d.id IS NULL"
    ).fetchone()[0]
    names = [Path(source).name for source, _ in rows]
    assert len(names) == len(set(names)), "a file is stored twice"
    return {Path(source).name: n for source, n in rows}, orphans


def test_sigkill_during_ingest_leaves_whole_documents(db, settings, shared_data, tmp_path):
    paths = _write_corpus(shared_data, tmp_path / "corpus")
    expected = {p.name: sum(len(chunk_document(doc)) for doc in load_file(p)) for p in paths}
    with psycopg.connect(settings.database_url, autocommit=True) as watch:
        process = _ingest(tmp_path / "corpus", settings)
        deadline = time.monotonic() + 150
        stored = 0
        while process.poll() is None and time.monotonic() < deadline:
            stored = watch.execute("SELECT count(*) FROM documents WHERE collection = %s", (COLLECTION,)).fetchone()[0]
            if stored >= 3:  # some files are in, more are being written
                break
            time.sleep(0.005)
        assert process.poll() is None, f"ingest ended before the kill: {process.communicate()}"
        os.kill(process.pid, signal.SIGKILL)  # the fault: no cleanup, no rollback by the client
        process.communicate(timeout=30)
        assert process.returncode == -signal.SIGKILL

        time.sleep(0.5)  # let the server notice the dead client and abort its open transaction
        after_kill, orphans = _state(watch)
        assert orphans == 0
        assert 0 < len(after_kill) < FILES, f"the kill did not land mid-way ({len(after_kill)} of {FILES} stored)"
        half = {name: n for name, n in after_kill.items() if n != expected[name]}
        assert not half, f"half-written documents after SIGKILL: {half}"

        rerun = _ingest(tmp_path / "corpus", settings)
        out, err = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, err[-2000:]
        complete, orphans = _state(watch)
    assert orphans == 0
    assert complete == expected  # every file present once, each with all its chunks
    print(
        f"\nSIGKILL during ingest: {len(after_kill)}/{FILES} files stored at the kill, 0 half-written, "
        f"0 orphan chunks; rerun completed {FILES}/{FILES}"
    )
