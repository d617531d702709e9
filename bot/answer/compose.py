"""An extractive answer: the evidence sentences themselves, each followed by the [n] of the source it quotes.

This is the default answer for the packaged 135M model, which cannot be trusted to copy a number: the answer is
what the documents say, in their words, so it cannot state a dose or a date that no source states. Which sources
are shown is decided here too, because the numbers in the answer must match them: the sources an answer quotes,
plus any other passage that clears the relevance threshold, ordered by retrieval score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.answer.evidence import Evidence
from bot.answer.terms import content_words

MAX_SENTENCES = 2
# A second sentence is quoted only when it scores this close to the best one and adds words the first lacks. On covid-qa
# 400-699 (bench_abstention's questions): 1.0 (never) gave containment 39.3% / F1 0.261, 0.95 43.7% / 0.260 (36% of
# answers get two sentences), 0.9 44.3% / 0.250, 0.8 46.0% / 0.236.
SECOND_SENTENCE_RATIO = 0.95
MAX_SOURCES = 5


@dataclass
class ComposedAnswer:
    sentences: list[str]  # each ends with its citation, e.g. "Refunds are accepted within 45 days. [1]"
    shown_hits: list[int]  # indices into the hits, in the order the sources are numbered (n = position + 1)
    quotes: dict[int, list[Evidence]] = field(default_factory=dict)  # hit index → the evidence quoted from it

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def choose_evidence(evidence: Sequence[Evidence], max_sentences: int = MAX_SENTENCES) -> list[Evidence]:
    """The best sentence, plus close runners-up that add something; in document order within a source."""
    if not evidence:
        return []
    best = evidence[0]
    chosen = [best]
    covered = set(content_words(best.text))
    for candidate in evidence[1:]:
        if len(chosen) >= max_sentences or candidate.score < SECOND_SENTENCE_RATIO * best.score:
            break
        words = set(content_words(candidate.text))
        if len(words - covered) >= max(2, len(words) // 2):
            chosen.append(candidate)
            covered |= words
    return sorted(chosen, key=lambda e: (e.hit, e.start if e.start is not None else 0))


def sources_to_show(hits: Sequence[Any], quoted: set[int], min_score: float, limit: int = MAX_SOURCES) -> list[int]:
    """Hit indices to show: every quoted one, then others that clear `min_score`; by retrieval score."""
    keep = [i for i, hit in enumerate(hits) if i in quoted or float(getattr(hit, "score", 0.0)) >= min_score]
    keep.sort(key=lambda i: (i not in quoted, -float(getattr(hits[i], "score", 0.0)), i))
    chosen = keep[: max(limit, len(quoted))]
    return sorted(chosen, key=lambda i: (-float(getattr(hits[i], "score", 0.0)), i))


def compose_extractive(
    evidence: Sequence[Evidence], hits: Sequence[Any], min_score: float, max_sentences: int = MAX_SENTENCES
) -> ComposedAnswer:
    """Quote the chosen evidence with inline citations numbered as the sources will be shown."""
    chosen = choose_evidence(evidence, max_sentences)
    quoted = {e.hit for e in chosen}
    order = sources_to_show(hits, quoted, min_score)
    number = {hit: n for n, hit in enumerate(order, start=1)}
    quotes: dict[int, list[Evidence]] = {}
    for e in chosen:
        quotes.setdefault(e.hit, []).append(e)
    sentences = [f"{_as_sentence(e.text)} [{number[e.hit]}]" for e in chosen]
    return ComposedAnswer(sentences, order, quotes)


def _as_sentence(text: str) -> str:
    text = text.strip()
    return text if text[-1:] in ".!?:;)\"'" else text + "."
