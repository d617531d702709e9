"""Is each answer sentence supported by the passages it cites? An embedding proxy, not NLI.

No NLI model ships with ragtune and nothing may be downloaded at run time, so support is judged with the embedder
the product already has (all-MiniLM-L6-v2 by default): a sentence counts as supported when its best cosine
similarity against any sentence of the cited passages reaches `threshold`. This catches answers that wander off
the sources; it cannot catch a sentence that reuses the source's words but contradicts it ("X does not cause Y").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.6
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
_CITATION = re.compile(r"\[(\d{1,2})\]")
MIN_SENTENCE_CHARS = 12  # "[1]." or "Yes." carries no claim worth checking


def split_sentences(text: str) -> list[str]:
    """Sentences of a short answer or passage: split after . ! ? when a capital, digit or bracket follows."""
    text = " ".join(text.split())
    return [s.strip() for s in _SENTENCE_END.split(text) if len(_CITATION.sub("", s).strip()) >= MIN_SENTENCE_CHARS]


def cited_numbers(answer: str) -> set[int]:
    """The source numbers an answer cites as [n]."""
    return {int(n) for n in _CITATION.findall(answer)}


@dataclass
class Support:
    sentences: int
    supported: int
    best: list[float]

    @property
    def fraction(self) -> float | None:
        return self.supported / self.sentences if self.sentences else None


class FaithfulnessScorer:
    """Scores answers against passages with one embedder; passage sentence vectors are cached by passage key."""

    method = "embedding"

    def __init__(self, embedder, threshold: float = DEFAULT_THRESHOLD) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"faithfulness threshold must be in (0, 1], got {threshold}")
        self.embedder = embedder
        self.threshold = threshold
        self._passages: dict[str, np.ndarray] = {}

    def describe(self) -> str:
        name = getattr(self.embedder, "name", type(self.embedder).__name__)
        return f"embedding proxy ({name}, sentence cosine >= {self.threshold:g}), not NLI"

    def _passage_vectors(self, key: str, text: str) -> np.ndarray:
        if key not in self._passages:
            sentences = split_sentences(text) or [text]
            self._passages[key] = np.asarray(self.embedder.embed_documents(sentences), dtype=np.float32)
        return self._passages[key]

    def score(self, answer: str, passages: Sequence[tuple[str, str]]) -> Support | None:
        """`passages` are (key, text) pairs; None when there is nothing to check (no passages, no sentences)."""
        sentences = split_sentences(_CITATION.sub("", answer))
        if not passages or not sentences:
            return None
        evidence = np.vstack([self._passage_vectors(key, text) for key, text in passages])
        vectors = np.asarray(self.embedder.embed_documents(sentences), dtype=np.float32)
        best = (vectors @ evidence.T).max(axis=1)
        supported = int((best >= self.threshold).sum())
        return Support(len(sentences), supported, [round(float(b), 4) for b in best])
