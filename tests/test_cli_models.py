"""The first minutes with ragtune from the terminal: `ragtune models prepare` builds the embedder's ONNX export at
set-up with one line of output, commands load only the models they need, and a failed upload or ingest leaves no
empty collection behind. Real database, real embedder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from bot.cli import cli
from bot.cli.common import GPU_DEVICE_FILES

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "sentence_transformers", "onnxruntime", "gradio", "xllamacpp", "peft")


def _env(home: Path, database_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGTUNE_") and k != "DATABASE_URL"}
    env["RAGTUNE_HOME"] = str(home)
    if database_url:
        env["RAGTUNE_DATABASE_URL"] = database_url
    return env


@pytest.mark.slow
def test_models_prepare_builds_the_export_once_with_one_line(tmp_path: Path):
    home = tmp_path / "home"
    command = [sys.executable, "-m", "bot", "models", "prepare"]
    first = subprocess.run(command, cwd=REPO, env=_env(home), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    lines = (first.stdout + first.stderr).strip().splitlines()
    assert len(lines) == 2, "one progress line per step, no library output:\n" + first.stdout + first.stderr
    assert lines[0].startswith("embedder: preparing (ONNX export + int8, once)… ready in ")
    assert "all-MiniLM-L6-v2 (onnx int8)" in lines[0]
    assert lines[1].startswith("generator: preparing (weights for the configured backend, once)… ready in ")
    assert lines[1].endswith(".Q8_0.gguf for llama.cpp")
    assert len(list((home / "models" / "gguf").glob("*.Q8_0.gguf"))) == 1
    exported = list((home / "models" / "onnx").glob("*/model_int8.onnx"))
    assert len(exported) == 1

    again = subprocess.run(command, cwd=REPO, env=_env(home), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and str(exported[0].parent) in again.stdout
    assert list((home / "models" / "onnx").glob("*/model_int8.onnx")) == exported


def _modules_after(args: list[str], env: dict[str, str]) -> tuple[dict, str]:
    """Run `ragtune ARGS` in a fresh interpreter; which heavy libraries did it import?"""
    probe = (
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "from bot.cli import cli\n"
        f"result = CliRunner().invoke(cli, {args!r})\n"
        f"loaded = {{name: name in sys.modules for name in {HEAVY!r}}}\n"
        "print(json.dumps({'exit': result.exit_code, 'loaded': loaded}))\n"
        "print(result.output, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report, done.stderr


def test_commands_load_only_the_models_they_need(settings, database_url):
    env = _env(settings.home, database_url)
    report, output = _modules_after(["config", "show"], env)
    assert report["exit"] == 0 and not any(report["loaded"].values()), report

    report, output = _modules_after(["db", "status", "--json"], env)
    assert report["exit"] == 0 and not any(report["loaded"].values()), (report, output)

    report, output = _modules_after(["models", "prepare"], env)  # set-up's step: later commands reuse the export
    assert report["exit"] == 0, output
    report, output = _modules_after(["search", "how do I train an adapter", "-k", "2"], env)
    assert report["exit"] == 0, output
    assert report["loaded"]["onnxruntime"], "search embeds the query"
    needless = ["transformers", "sentence_transformers", "gradio", "xllamacpp", "peft"]
    if not any(Path(path).exists() for path in GPU_DEVICE_FILES):  # with a GPU, device=auto asks torch about CUDA
        needless.append("torch")
    assert not any(report["loaded"][name] for name in needless), report

    report, output = _modules_after(["route", "make that shorter"], env)
    assert report["exit"] == 0, output
    assert "why:" in output and "log-odds" not in output and "nearest examples" not in output, output
    assert not any(report["loaded"][name] for name in needless), report


@pytest.fixture(scope="module")
def store(db, settings):
    from bot.embedder import configured_embedder
    from knowledge.store import KnowledgeStore

    return KnowledgeStore(db.pool, configured_embedder(settings))


def test_a_failed_upload_leaves_no_empty_collection(store, settings, tmp_path: Path):
    from bot.server.uploads import ingest_uploads

    services = SimpleNamespace(settings=settings, store=store)
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 this is not really a pdf")
    name = f"new-{uuid.uuid4().hex[:8]}"
    report = ingest_uploads(services, name, {broken: "Quarterly report.pdf"})
    assert report.failed and report.failed[0][0] == "Quarterly report.pdf" and not report.added
    assert name not in [c.name for c in store.list_collections()]

    good = tmp_path / "notes.txt"
    good.write_text("The brontal kettle boils water in ninety seconds.", encoding="utf-8")
    report = ingest_uploads(services, name, {broken: "Quarterly report.pdf", good: "notes.txt"})
    assert report.added == ["notes.txt"] and len(report.failed) == 1
    assert name in [c.name for c in store.list_collections()]
    report = ingest_uploads(services, name, {broken: "Quarterly report.pdf"})  # an existing collection stays
    assert name in [c.name for c in store.list_collections()]
    store.delete_collection(name)


def test_a_failed_cli_ingest_leaves_no_empty_collection(store, settings, database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("RAGTUNE_HOME", str(settings.home))
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", database_url)
    broken = tmp_path / "broken.docx"
    broken.write_bytes(b"not a zip")
    name = f"cli-{uuid.uuid4().hex[:8]}"
    result = CliRunner().invoke(cli, ["ingest", str(broken), "-c", name, "--quiet"])
    assert result.exit_code == 1, result.output
    assert name not in [c.name for c in store.list_collections()]
