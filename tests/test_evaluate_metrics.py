"""Evaluation maths on hand-made cases: SQuAD F1 and containment, bootstrap intervals, verdicts, support and
citation figures, unanswerable questions, data validation, SVG and HTML."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from bot.evaluate.metrics import (
    bootstrap_ci,
    contains_answer,
    normalize_answer,
    paired_bootstrap_diff,
    token_f1,
)
from bot.evaluate.qa import Answer, QAConfig, QARunner, read_answers, read_unanswerable, summarise, validate_qa
from bot.evaluate.report import render_html, scatter_svg
from bot.evaluate.verdict import decide
from knowledge.evaluation import percentile


def test_normalisation_drops_case_punctuation_and_articles():
    assert normalize_answer("The  Quick, brown-fox!") == "quick brownfox"
    assert normalize_answer("An apple a day") == "apple day"


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("the cat sat", "a cat sat on the mat", 2 / 3),  # P = 2/2, R = 2/4
        ("Paris", "paris!", 1.0),
        ("dog dog", "dog", 2 / 3),  # repeated tokens count once per gold occurrence: P = 1/2, R = 1
        ("blue whale", "red fox", 0.0),
        ("", "something", 0.0),
        ("", "", 1.0),
        ("It is 97 infants in 2008", "97 infants", 0.5),  # P = 2/6, R = 1
    ],
)
def test_token_f1_known_values(prediction, gold, expected):
    assert math.isclose(token_f1(prediction, gold), expected, rel_tol=1e-9)


def test_containment_needs_whole_words():
    assert contains_answer("It was in Paris, France.", "paris")
    assert not contains_answer("A Parisian cafe", "paris")
    assert not contains_answer("anything", "")


def test_percentile_is_nearest_rank():
    values = list(range(1, 21))
    assert percentile(values, 50) == 10 and percentile(values, 95) == 19 and percentile([], 50) == 0.0


def test_bootstrap_interval_contains_the_mean_and_is_seeded():
    rng = np.random.default_rng(1)
    values = rng.random(50).tolist()
    mean, low, high = bootstrap_ci(values, seed=3)
    assert low < mean < high and math.isclose(mean, float(np.mean(values)))
    assert bootstrap_ci(values, seed=3) == (mean, low, high)
    assert bootstrap_ci([0.4] * 10) == (0.4, 0.4, 0.4)
    small = bootstrap_ci(values[:8], seed=3)
    assert small[2] - small[1] > high - low  # fewer questions, wider interval


def test_paired_bootstrap_of_a_constant_difference():
    base = [0.1, 0.5, 0.9, 0.3]
    diff = paired_bootstrap_diff([b + 0.2 for b in base], base)
    assert math.isclose(diff["mean"], 0.2) and math.isclose(diff["low"], 0.2) and math.isclose(diff["high"], 0.2)
    assert diff["p_not_better"] == 0.0
    with pytest.raises(ValueError, match="same questions"):
        paired_bootstrap_diff([1.0], [1.0, 2.0])


def _answers(scores: dict[str, list[float]]):
    return [SimpleNamespace(id=str(i), mode=m, f1=v) for m, vs in scores.items() for i, v in enumerate(vs)]


def _summary(scores: dict[str, list[float]]):
    return {
        m: {"n": len(v), "f1": sum(v) / len(v), "latency_p50_s": 1.0, "cost_per_1000": 0.1, "tokens_mean": 10.0,
            "routes": {"knowledge": len(v)}}
        for m, v in scores.items()
    }  # fmt: skip


def test_verdict_names_a_clear_winner_only_when_the_interval_excludes_zero():
    clear = {"rag": [0.8, 0.7, 0.9, 0.8, 0.75, 0.85], "base": [0.1, 0.2, 0.1, 0.15, 0.2, 0.1]}
    verdict = decide(_summary(clear), _answers(clear))
    assert verdict["winner"] == "rag" and verdict["clear"] and verdict["diff"]["low"] > 0
    assert verdict["text"][0].startswith("On this data RAG")
    tie = {"rag": [0.9, 0.1, 0.5, 0.4], "lora": [0.1, 0.9, 0.4, 0.5], "routed": [0.9, 0.1, 0.5, 0.4]}
    verdict = decide(_summary(tie), _answers(tie))
    assert not verdict["clear"] and verdict["text"][0].startswith("No clear winner")
    assert verdict["same_as_winner"] == ["routed"] and verdict["runner_up"] == "lora"  # a twin is not a rival
    assert verdict["routed_check"]["ok"]
    assert any("Caveats: 4 questions" in line for line in verdict["text"])


def _answer(mode: str, qid: str, **fields) -> Answer:
    base = dict(id=qid, mode=mode, answer="x", route="knowledge", action="knowledge", adapter=None, not_found=False,
                sources=[], cited=[], latency_s=1.0, generate_s=0.5, tokens=3)  # fmt: skip
    return Answer(**{**base, **fields})


def test_summary_counts_unsupported_sentences_citations_and_abstention():
    answers = [
        _answer("rag", "1", sentences=3, unsupported=1, cites_shown=True),
        _answer("rag", "2", sentences=1, unsupported=1, cites_shown=False),
        _answer("rag", "3", not_found=True),  # abstained: no sentences, no citation figure
        _answer("rag", "4", sentences=4, unsupported=0, cites_shown=True),
        _answer("base", "1", route="skill", action="skill"),
    ]
    unanswerable = [_answer("rag", f"u{i}", unanswerable=True, not_found=i < 3) for i in range(4)]
    summary = summarise(answers, QAConfig(), unanswerable)
    rag, base = summary["rag"], summary["base"]
    assert rag["n"] == 4  # the unanswerable questions are not in F1, containment or n
    assert rag["unsupported_rate"] == 2 / 8 and rag["support_sentences"] == 8 and rag["support_answers"] == 3
    assert rag["citation_rate"] == 2 / 3
    assert rag["false_abstention"] == 1 / 4 and rag["abstention_unanswerable"] == 3 / 4 and rag["unanswerable_n"] == 4
    assert base["unsupported_rate"] is None and base["citation_rate"] is None and base["false_abstention"] is None
    assert base["abstention_unanswerable"] is None


def test_only_inline_citations_count():
    """The old fallback counted every shown source as cited when the answer cited none: "gold cited" then equalled
    "gold retrieved". Listing a source is not citing it."""
    sources = [{"n": 1, "source": "c.jsonl#a"}, {"n": 2, "source": "c.jsonl#b"}, {"n": 3, "source": "c.jsonl#c"}]
    assert QARunner._cited("see [2]", sources) == ["b"]
    assert QARunner._cited("as [1] and [3] say", sources) == ["a", "c"]
    assert QARunner._cited("no marks", sources) == []
    assert QARunner._cited("see [2]", [{"source": "c.jsonl#a"}, {"source": "c.jsonl#b"}]) == ["b"]  # by position


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_answers_in_either_layout_and_bad_lines_name_file_line_and_key(tmp_path):
    _write(tmp_path / "answers.jsonl", [{"_id": "1", "question": "Q?", "answer": "A."}, "",
                                        {"pubid": 7, "question": "Does it?", "final_decision": "Yes",
                                         "long_answer": "It does, in most patients."}])  # fmt: skip
    first, second = read_answers(tmp_path)
    assert (first.id, first.answer, first.label) == ("1", "A.", None)
    assert (second.id, second.answer, second.label) == ("7", "It does, in most patients.", "yes")
    _write(tmp_path / "answers.jsonl", [{"_id": "1", "question": "Q?", "answer": "A."},
                                        {"_id": "2", "question": "Q?", "final": "no"}])  # fmt: skip
    with pytest.raises(ValueError, match=r"answers.jsonl:2: missing key 'answer'"):
        read_answers(tmp_path)
    _write(tmp_path / "answers.jsonl", [{"question": "Q?", "answer": "A."}])
    with pytest.raises(ValueError, match=r"answers.jsonl:1: missing key '_id'"):
        read_answers(tmp_path)
    _write(tmp_path / "answers.jsonl", ["{not json"])
    with pytest.raises(ValueError, match=r"answers.jsonl:1: not JSON"):
        read_answers(tmp_path)


def test_unanswerable_questions_keep_knowledge_lines_and_sample_with_a_seed(tmp_path):
    rows = [{"text": f"fact {i}?", "route": "knowledge" if i % 2 else "skill"} for i in range(20)]
    file = _write(tmp_path / "router.jsonl", rows)
    items = read_unanswerable(file)
    assert [i.question for i in items] == [f"fact {i}?" for i in range(1, 20, 2)]
    assert all(i.unanswerable and i.answer == "" for i in items)
    assert read_unanswerable(file, limit=3, seed=1) == read_unanswerable(file, limit=3, seed=1)
    assert len(read_unanswerable(file, limit=3)) == 3
    (one,) = read_unanswerable(_write(tmp_path / "q.jsonl", [{"question": "Why?", "_id": "q1"}]))
    assert one.id == "unanswerable:q1"
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing key 'question' \(or 'text'\)"):
        read_unanswerable(_write(tmp_path / "bad.jsonl", [{"text": "ok?"}, {"query": "no"}]))


def test_a_bad_folder_fails_before_any_model_loads(tmp_path):
    """`eval qa` reads and checks the data first: a PubMedQA-like file without an answer key used to fail only after
    minutes of model loading. No database or model is set up here, so reaching them would fail differently."""
    from bot.cli import cli

    folder = tmp_path / "qa"
    folder.mkdir()
    _write(folder / "answers.jsonl", [{"pubid": 1, "question": "Q?", "reasoning_required_pred": "yes"}])
    result = CliRunner().invoke(cli, ["eval", "qa", str(folder), "--modes", "base"])
    assert result.exit_code == 2 and "answers.jsonl:1: missing key 'answer'" in result.output
    _write(folder / "answers.jsonl", [{"pubid": 1, "question": "Q?", "final_decision": "no"}])
    result = CliRunner().invoke(cli, ["eval", "qa", str(folder), "--modes", "rag"])
    assert result.exit_code == 2 and "corpus.jsonl is missing" in result.output
    (folder / "corpus.jsonl").write_text("")
    bad = _write(tmp_path / "u.jsonl", [{"route": "knowledge"}])
    result = CliRunner().invoke(cli, ["eval", "all", "--data", str(folder), "--unanswerable", str(bad)])
    assert result.exit_code == 2 and "u.jsonl:1: missing key 'question'" in result.output
    validate_qa(folder, ["rag"], None)  # a valid folder passes


def test_scatter_is_valid_svg_and_report_escapes_text():
    svg = scatter_svg([{"label": "rag", "x": 2.0, "y": 0.4, "y_low": 0.3, "y_high": 0.5}], "latency", "F1")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and len(root.findall("{http://www.w3.org/2000/svg}circle")) == 1
    report = {"generated": "now", "seed": 0, "machine": "m", "retrieval": [], "router": [], "qa": [
        {"dataset": "<d>", "questions": 1, "summary": {}, "verdict": {"text": ["<script>x</script>"]}, "chart": svg,
         "notes": [], "samples": []}]}  # fmt: skip
    page = render_html(report)
    assert "&lt;script&gt;" in page and "<script>" not in page and "<svg" in page
    sample = {"id": "1", "mode": "rag", "question": "Refund window?", "answer": "45 days [1] <b>", "gold": "45 days",
              "label": "yes", "f1": 0.8, "not_found": False, "unanswerable": False, "problems": ["x (why)"],
              "citations": [{"n": 1, "id": "doc1", "snippet": "Refunds within 45 days"}]}  # fmt: skip
    report["qa"][0].update(modes=["rag"], samples=[sample])
    page = render_html(report)
    assert "Refunds within 45 days" in page and "decision: yes" in page and "&lt;b&gt;" in page


def test_eval_all_picks_the_parts_that_apply(tmp_path):
    from bot.cli.eval_commands import _kinds

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (beir / name).write_text("")
    assert _kinds(beir) == ["retrieval"]
    (beir / "answers.jsonl").write_text("")
    assert _kinds(beir) == ["retrieval", "qa"]
    labelled = tmp_path / "dev.jsonl"
    labelled.write_text("")
    assert _kinds(labelled) == ["router"] and _kinds(tmp_path) == ["router"]
    assert _kinds(tmp_path / "beir" / "qrels") == []


def test_trend_metrics_are_flat_numbers():
    from bot.evaluate.report import trend_metrics

    report = {
        "qa": [{"dataset": "/d/covid-qa", "summary": {"rag": {"f1": 0.5, "unsupported_rate": None, "contains": 0.25,
                                                              "abstention_unanswerable": 0.9, "citation_rate": 1.0,
                                                              "false_abstention": 0.05}}}],
        "router": [{"file": "/r/dev.jsonl", "accuracy": 0.875}],
    }  # fmt: skip
    assert trend_metrics(report) == {
        "qa/covid-qa/rag/f1": 0.5,
        "qa/covid-qa/rag/contains": 0.25,
        "qa/covid-qa/rag/citation_rate": 1.0,
        "qa/covid-qa/rag/abstention_unanswerable": 0.9,
        "qa/covid-qa/rag/false_abstention": 0.05,
        "router/dev/accuracy": 0.875,
    }
