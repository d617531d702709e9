"""Evidence first: find the sentences of the retrieved passages that answer the question.

Retrieval nearly always puts the right passage first; the answer step is where a small model turns "45 days"
into "4". So the knowledge path starts from the sentences themselves: every sentence of the retrieved chunks is
scored against the question by the embedder (cosine) plus the share of the question's content words it contains
(weighted by how rare each word is among the candidate sentences) plus a little of its chunk's retrieval score.
Each piece of evidence keeps its chunk, page and character span, so a quote maps back to the page it came from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bot.answer.sentences import split_sentences, strip_markdown
from bot.answer.support import strip_citations
from bot.answer.terms import content_words

# Weights of the sentence score: cosine + OVERLAP_WEIGHT * overlap + CHUNK_WEIGHT * chunk score. Chosen on covid-qa
# questions 400-699 (held out from the evaluation's first 300) by `bench/bench_abstention.py`: the top sentence
# contained the gold answer for 24.3% with cosine alone and 41.0% with overlap 0.5 and chunk 0.2 (the best of a 5x4
# grid; every overlap weight from 0.5 to 1.0 gave 40.3-41.0%). Some sentence of the top 5 passages held it for 65.7%:
# ranking, not retrieval, is the limit.
OVERLAP_WEIGHT = 0.5
CHUNK_WEIGHT = 0.2
MIN_WORDS = 4  # a heading or a fragment ("See below.") is no answer
MAX_SENTENCE_CHARS = 600  # a "sentence" longer than this is a table or a run-on block: not quoted whole


@dataclass(frozen=True)
class Evidence:
    """One candidate sentence: where it is (hit index, chunk, page, span in the document) and how well it answers."""

    hit: int  # index into the hits it was found in
    text: str  # the sentence as a reader sees it (markdown stripped, white space collapsed)
    chunk_id: Any
    page: int | None
    start: int | None  # character span in the document (chunk offset + sentence offset), when the chunk has one
    end: int | None
    score: float
    cosine: float
    overlap: float


def _rarity(question_words: Sequence[str], sentences: Sequence[set[str]]) -> dict[str, float]:
    """IDF of each question word among the candidate sentences: a word every sentence has says little."""
    n = len(sentences)
    return {w: math.log(1 + n / (1 + sum(w in s for s in sentences))) for w in set(question_words)}


class EvidenceFinder:
    """Scores the sentences of retrieved hits against a question; `embedder=None` scores by term overlap only."""

    def __init__(
        self, embedder: Any = None, *, overlap_weight: float = OVERLAP_WEIGHT, chunk_weight: float = CHUNK_WEIGHT
    ):
        self.embedder = embedder
        self.overlap_weight = overlap_weight
        self.chunk_weight = chunk_weight

    def find(self, question: str, hits: Sequence[Any], *, question_vector: Any = None) -> list[Evidence]:
        """Every usable sentence of `hits`, best first."""
        candidates = list(self._sentences(hits))
        if not candidates:
            return []
        # A sentence is read under its section heading: "Plain text, Markdown, PDF …" answers "which file types?"
        # because it stands under "Supported file types" (bench_abstention, covid-qa 400-699: top-sentence
        # containment 40.0% without the heading, 41.0% with it).
        words = [set(content_words(text)) | set(content_words(context)) for _, text, _, _, context in candidates]
        question_words = content_words(question)
        rarity = _rarity(question_words, words)
        total = sum(rarity.values()) or 1.0
        overlaps = [sum(weight for w, weight in rarity.items() if w in s) / total for s in words]
        embedded = [f"{context}: {text}" if context else text for _, text, _, _, context in candidates]
        cosines = self._cosines(question, embedded, question_vector)
        found = []
        for (index, text, start, end, _), overlap, cosine in zip(candidates, overlaps, cosines, strict=True):
            hit = hits[index]
            prior = float(getattr(hit, "score", 0.0) or 0.0)
            score = cosine + self.overlap_weight * overlap + self.chunk_weight * prior
            found.append(
                Evidence(
                    index,
                    text,
                    getattr(hit, "chunk_id", None),
                    getattr(hit, "page", None),
                    start,
                    end,
                    round(score, 4),
                    round(cosine, 4),
                    round(overlap, 4),
                )
            )
        found.sort(key=lambda e: -e.score)
        return found

    @staticmethod
    def _sentences(hits: Sequence[Any]):
        """(hit index, display text, document start, document end, section heading) per sentence worth quoting."""
        seen: set[str] = set()
        for index, hit in enumerate(hits):
            text = getattr(hit, "text", "") or ""
            base = getattr(hit, "char_start", None)
            context = strip_markdown((getattr(hit, "heading", "") or "").split(" > ")[-1]).strip()
            for sentence in split_sentences(text):
                if sentence.text.startswith("#"):  # a heading names a topic, it does not answer a question
                    continue
                # as a reader sees it, and without the document's own [12]-style references: [n] means a source here
                shown = " ".join(strip_citations(strip_markdown(sentence.text)).split())
                key = shown.lower()
                if len(shown.split()) < MIN_WORDS or len(shown) > MAX_SENTENCE_CHARS or key in seen:
                    continue
                seen.add(key)  # overlapping chunks repeat sentences: keep the first (best-ranked) copy
                start = None if base is None else base + sentence.start
                yield index, shown, start, None if start is None else start + len(sentence.text), context

    def _cosines(self, question: str, texts: list[str], question_vector: Any) -> list[float]:
        if self.embedder is None:
            return [0.0] * len(texts)
        vector = self.embedder.embed_query(question) if question_vector is None else question_vector
        vectors = np.asarray(self.embedder.embed_documents(texts), dtype=np.float32)
        return [float(v) for v in vectors @ np.asarray(vector, dtype=np.float32)]
