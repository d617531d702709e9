"""Answer-quality metrics and the statistics behind the verdict.

Token F1 and containment follow the SQuAD evaluation script's normalisation (lower case, drop punctuation and the
articles a/an/the, collapse white space), so numbers are comparable with published extractive-QA results.
Confidence intervals come from a seeded percentile bootstrap; a difference between two modes uses a *paired*
bootstrap (the same resampled questions for both), which is what "A beats B on this data" means.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall after normalisation (1.0 when both are empty)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def contains_answer(prediction: str, gold: str) -> bool:
    """The normalised gold answer appears, as whole words, inside the normalised prediction."""
    gold_norm = normalize_answer(gold)
    if not gold_norm:
        return False
    return f" {gold_norm} " in f" {normalize_answer(prediction)} "


def bootstrap_ci(
    values: Sequence[float], *, seed: int = 0, resamples: int = 2000, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean. A single value gives a zero-width interval."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (0.0, 0.0, 0.0)
    mean = float(data.mean())
    if data.size == 1:
        return (mean, mean, mean)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return (mean, float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def paired_bootstrap_diff(
    a: Sequence[float], b: Sequence[float], *, seed: int = 0, resamples: int = 2000, level: float = 0.95
) -> dict[str, float]:
    """Mean of a-b over the same questions, its bootstrap interval, and how often a resample had a <= b."""
    first, second = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if first.shape != second.shape:
        raise ValueError(f"paired bootstrap needs the same questions: {first.size} vs {second.size} values")
    diff = first - second
    if diff.size == 0:
        return {"mean": 0.0, "low": 0.0, "high": 0.0, "p_not_better": 1.0}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return {
        "mean": float(diff.mean()),
        "low": float(np.quantile(means, alpha)),
        "high": float(np.quantile(means, 1 - alpha)),
        "p_not_better": float(np.mean(means <= 0)),
    }
