"""Evaluation maths on hand-made cases: SQuAD F1 and containment, bootstrap intervals, verdicts, faithfulness, SVG."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import numpy as np
import pytest

from bot.evaluate.faithfulness import FaithfulnessScorer, cited_numbers, split_sentences
from bot.evaluate.metrics import (
    bootstrap_ci,
    contains_answer,
    normalize_answer,
    paired_bootstrap_diff,
    token_f1,
)
from bot.evaluate.qa import QARunner
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


class WordsEmbedder:
    """Bag of words (hashed): cosine 1 for the same words, about 0 for disjoint ones."""

    name = "words"

    def embed_documents(self, texts):
        rows = []
        for text in texts:
            vec = np.zeros(997)
            for word in normalize_answer(text).split():
                vec[sum(map(ord, word)) % 997] += 1
            rows.append(vec / (np.linalg.norm(vec) or 1.0))
        return np.array(rows)


def test_faithfulness_counts_supported_sentences():
    scorer = FaithfulnessScorer(WordsEmbedder(), threshold=0.9)
    passage = "Mother to child transmission is the main cause of infection. Other routes are rare."
    support = scorer.score(
        "Mother to child transmission is the main cause of infection [1]. Bananas grow on tall green trees.",
        [("p1", passage)],
    )
    assert support.sentences == 2 and support.supported == 1 and support.fraction == 0.5
    assert scorer.score("Short.", [("p1", passage)]) is None
    assert scorer.score("A long enough sentence here.", []) is None
    with pytest.raises(ValueError, match="threshold"):
        FaithfulnessScorer(WordsEmbedder(), threshold=0)


def test_sentences_and_citations():
    assert split_sentences("First one is here. Second one [2] is here! ok") == [
        "First one is here.",
        "Second one [2] is here! ok",
    ]
    assert cited_numbers("as [1] and [3] say") == {1, 3}
    assert QARunner._cited("see [2]", ["a", "b", "c"]) == ["b"]
    assert QARunner._cited("no marks", ["a", "b"]) == ["a", "b"]


def test_scatter_is_valid_svg_and_report_escapes_text():
    svg = scatter_svg([{"label": "rag", "x": 2.0, "y": 0.4, "y_low": 0.3, "y_high": 0.5}], "latency", "F1")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and len(root.findall("{http://www.w3.org/2000/svg}circle")) == 1
    report = {"generated": "now", "seed": 0, "machine": "m", "retrieval": [], "router": [], "qa": [
        {"dataset": "<d>", "questions": 1, "summary": {}, "verdict": {"text": ["<script>x</script>"]}, "chart": svg,
         "notes": [], "samples": []}]}  # fmt: skip
    page = render_html(report)
    assert "&lt;script&gt;" in page and "<script>" not in page and "<svg" in page


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
        "qa": [{"dataset": "/d/covid-qa", "summary": {"rag": {"f1": 0.5, "faithfulness": None, "contains": 0.25}}}],
        "router": [{"file": "/r/dev.jsonl", "accuracy": 0.875}],
    }
    assert trend_metrics(report) == {
        "qa/covid-qa/rag/f1": 0.5,
        "qa/covid-qa/rag/contains": 0.25,
        "router/dev/accuracy": 0.875,
    }
