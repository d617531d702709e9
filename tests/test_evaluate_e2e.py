"""`ragtune eval all` end to end on a tiny folder cut from COVID-QA: real PostgreSQL, MiniLM, SmolLM2, a LoRA
adapter trained by `--adapter auto`, the router, and a few unanswerable questions (banking and home-assistant fact
questions from the router data, which a COVID corpus cannot answer). Asserts on structure and invariants, never on
answer wording."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot.cli import cli

pytestmark = pytest.mark.slow
MODES = ["base", "rag", "lora", "routed"]


def _tiny_folder(source: Path, target: Path, n_answers: int = 12) -> Path:
    """The first `n_answers` questions (5 evaluated, the rest train the auto adapter), their qrels and passages."""
    answers = [json.loads(line) for line in (source / "answers.jsonl").read_text().splitlines()[:n_answers]]
    ids = {a["_id"] for a in answers}
    qrels = [r for r in (source / "qrels" / "test.tsv").read_text().splitlines()[1:] if r.split("\t")[0] in ids]
    gold = {r.split("\t")[1] for r in qrels}
    corpus = [
        line
        for line in (source / "corpus.jsonl").read_text().splitlines()
        if (record := json.loads(line))["_id"] in gold or record["_id"].startswith("doc0_c")
    ][:25]
    target.mkdir()
    (target / "qrels").mkdir()
    (target / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    (target / "queries.jsonl").write_text("".join(json.dumps({"_id": a["_id"], "text": a["question"]}) + "\n"
                                                  for a in answers))  # fmt: skip
    (target / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    (target / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    return target


@pytest.fixture
def env(settings, monkeypatch):
    monkeypatch.setenv("RAGTUNE_HOME", str(settings.home))
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", settings.database_url)
    return settings


def test_eval_all_writes_json_and_html_with_every_mode(env, db, shared_data, tmp_path):
    folder = _tiny_folder(shared_data / "covid-qa", tmp_path / "tiny-qa")
    router_file = tmp_path / "router.jsonl"
    router_file.write_text("".join((shared_data / "router" / "dev.jsonl").read_text().splitlines(True)[:12]))
    out_json, out_html = tmp_path / "report.json", tmp_path / "report.html"
    args = ["eval", "all", "--data", str(folder), "--data", str(router_file), "--limit", "5", "--adapter", "auto",
            "--train-steps", "2", "--max-new-tokens", "6", "--quiet", "--json", str(out_json),
            "--html", str(out_html), "--unanswerable", str(router_file), "--unanswerable-limit", "3"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output

    report = json.loads(out_json.read_text())
    (qa,) = report["qa"]
    assert qa["questions"] == 5 and list(qa["summary"]) == MODES
    assert qa["adapter"].startswith("eval-tiny-qa-") and qa["setup"]["adapter_training"]["rows"] == 7
    for mode in MODES:
        s = qa["summary"][mode]
        assert s["n"] == 5 and 0.0 <= s["f1_ci"][0] <= s["f1"] <= s["f1_ci"][1] <= 1.0
        assert 0 < s["latency_p50_s"] <= s["latency_p95_s"] and s["cost_per_1000"] > 0
    rag = qa["summary"]["rag"]
    assert rag["gold_retrieved"] is not None and rag["support_answers"] + 5 * rag["abstention"] >= 1
    assert qa["summary"]["base"]["gold_retrieved"] is None  # no sources on the skill path
    for a in qa["answers"]:  # gold cited counts inline [n] only, and only cited passages are checked for support
        if a["gold_cited"]:
            assert a["cited"] and "[" in a["answer"]
        if a["sentences"] is not None:
            assert a["mode"] in ("rag", "routed") and 0 <= a["unsupported"] <= a["sentences"]
            assert a["unsupported"] == a["sentences"] or a["citations"]  # nothing cited, nothing supported
    if rag["support_sentences"]:
        assert 0.0 <= rag["unsupported_rate"] <= 1.0
    assert rag["false_abstention"] == rag["abstention"] and qa["summary"]["base"]["false_abstention"] is None

    # unanswerable questions: asked in the modes that retrieve, scored on abstention only, never in F1
    assert qa["unanswerable"]["questions"] == 3 and qa["unanswerable"]["modes"] == ["rag", "routed"]
    assert len(qa["unanswerable_answers"]) == 6 and all(a["unanswerable"] for a in qa["unanswerable_answers"])
    assert not any(a["unanswerable"] for a in qa["answers"])
    for mode in ("rag", "routed"):
        s = qa["summary"][mode]
        assert s["unanswerable_n"] == 3 and 0.0 <= s["abstention_unanswerable"] <= 1.0
        assert f"qa/tiny-qa/{mode}/abstention_unanswerable" in report["metrics"]
    assert qa["summary"]["base"]["abstention_unanswerable"] is None
    assert {s["mode"] for s in qa["samples"]} == set(MODES) and len(qa["samples"]) == 5 * 4 + 3 * 2
    routed = [a for a in qa["answers"] if a["mode"] == "routed"]
    assert all(a["route"] in ("knowledge", "skill") for a in routed)
    by_key = {(a["id"], a["mode"]): a for a in qa["answers"]}
    for a in routed:  # a reused answer is word for word the mode it came from
        if a["reused_from"]:
            assert a["answer"] == by_key[(a["id"], a["reused_from"])]["answer"]
    assert qa["verdict"]["winner"] in MODES and qa["verdict"]["text"]
    (retrieval,) = report["retrieval"]
    assert {r["mode"] for r in retrieval["results"]} == {"dense", "keyword", "hybrid"}
    (router,) = report["router"]
    assert router["n"] == 12 and 0.0 <= router["accuracy"] <= 1.0

    page = out_html.read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and "Verdict" in page
    assert "abstains on unanswerable" in page and "Sample answers" in page and "unsupported claims" in page
    assert all(f"<td>{mode}" in page for mode in MODES)

    # a rerun with the same held-out pairs finds the adapter (--adapter auto is the default): no training again
    again = CliRunner().invoke(cli, ["eval", "qa", str(folder), "--limit", "5", "--modes", "lora", "--train-steps",
                                     "2", "--max-new-tokens", "2", "--quiet", "--json", str(out_json)])  # fmt: skip
    assert again.exit_code == 0, again.output
    rerun = json.loads(out_json.read_text())["qa"][0]
    assert rerun["adapter"] == qa["adapter"] and not rerun["setup"]["adapter_training"]["trained_now"]
    assert list(rerun["summary"]) == ["lora"]


def test_bad_input_is_one_clear_line(env, db, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["eval", "all", "--data", str(empty)])
    assert result.exit_code == 2 and "nothing to evaluate" in result.output
    result = CliRunner().invoke(cli, ["eval", "qa", str(empty), "--modes", "rag,magic"])
    assert result.exit_code == 2 and "magic" in result.output
    result = CliRunner().invoke(cli, ["eval", "qa", str(empty), "--modes", "base"])
    assert result.exit_code == 2 and "answers.jsonl is missing" in result.output
