"""How a knowledge answer is composed: evidence first, then a quote (extractive) or a verified generation.

- `extractive` (the default for the packaged small model): the answer is the evidence sentences that answer the
  question, each with its [n]; nothing is generated, so nothing is invented, and it is instant.
- `generative` (a bigger model, or a remote one): the model sees a short evidence prompt (the best sentences of
  each source, not whole chunks) and every sentence it writes is checked against the sources before it is shown:
  one that is not supported is replaced by the quote it should have been, or removed and marked; a supported one
  without a citation gets the [n] of the source that supports it.
Both abstain ("not in your documents") when the best evidence is too weak.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from bot.answer.compose import MAX_SENTENCES, compose_extractive
from bot.answer.evidence import Evidence, EvidenceFinder
from bot.answer.sentences import split_sentences
from bot.conversation.prompts import format_sources, knowledge_prompt
from bot.conversation.turn import Turn, public_source

log = logging.getLogger(__name__)

AnswerMode = Literal["extractive", "generative"]
ANSWER_MODES: tuple[str, ...] = ("extractive", "generative", "auto")
EVIDENCE_PER_SOURCE = 3  # sentences of each source the generative prompt shows
REMOVED_MARK = "[a sentence was removed: the sources do not support it]"
# An unsupported sentence this close (cosine) to a source sentence was a miscopy of it: the source sentence replaces
# it. Further away it was not about the sources at all, and it is removed.
REPLACE_MIN_COSINE = 0.5


@dataclass
class KnowledgeAnswerer:
    """Composes knowledge answers for the pipeline; one per process (it holds the embedder)."""

    finder: EvidenceFinder
    mode: AnswerMode = "extractive"
    min_evidence: float = 0.0  # best evidence score below which the answer is "not in your documents"
    checker: Any = None  # bot.answer.support.SupportChecker: verifies generated sentences (generative mode)
    max_sentences: int = MAX_SENTENCES

    def prepare(self, turn: Turn, min_score: float, render: Callable[..., list[dict[str, str]]]) -> None:
        """Pick the evidence, decide whether to abstain, number the sources, and (generative) build the prompt."""
        question = turn.query or turn.message
        vector = turn.message_vector if question == turn.message else None
        turn.evidence = self.finder.find(question, turn.hits, question_vector=vector)
        best = turn.evidence[0].score if turn.evidence else 0.0
        turn.timings["evidence_score"] = best
        if best < self.min_evidence or not turn.evidence:
            turn.not_found, turn.sources = True, []
            return
        composed = compose_extractive(turn.evidence, turn.hits, min_score, self.max_sentences)
        turn.composed = composed.sentences if self.mode == "extractive" else []
        turn.sources = []
        for n, index in enumerate(composed.shown_hits, start=1):
            source = public_source(n, turn.hits[index])
            source["quotes"] = [_quote(e) for e in composed.quotes.get(index, [])]
            source["text"] = _evidence_text(turn.evidence, index) if self.mode == "generative" else source["text"]
            turn.sources.append(source)
        if self.mode == "generative":
            turn.prompt = render(knowledge_prompt, turn, sources=format_sources(turn.sources), question=turn.message)

    def pieces(self, turn: Turn, generate: Callable[[], Iterator[str]]) -> Iterator[str]:
        """The answer's text: the composed quote, or the model's sentences as each one passes the check."""
        if self.mode == "extractive":
            for i, sentence in enumerate(turn.composed):
                yield sentence if i == 0 else " " + sentence
            return
        yield from self.verified(turn, generate())

    def verified(self, turn: Turn, pieces: Iterator[str]) -> Iterator[str]:
        """Generated text, released sentence by sentence once each is checked against `turn.sources`."""
        buffer, shown = "", 0
        for piece in pieces:
            buffer += piece
            sentences = split_sentences(buffer)
            if len(sentences) < 2:
                continue
            for sentence in sentences[:-1]:  # the last one may still grow
                checked = self._checked(turn, sentence.text)
                if checked:
                    yield checked if not shown else " " + checked
                    shown += 1
            buffer = buffer[sentences[-1].start :]
        for sentence in split_sentences(buffer):  # what is left when the stream ends (fragments are dropped)
            checked = self._checked(turn, sentence.text)
            if checked:
                yield checked if not shown else " " + checked
                shown += 1

    def _checked(self, turn: Turn, sentence: str) -> str:
        """The sentence with its citation, its replacement quote, or the removal mark (counted in the timings)."""
        from bot.answer.support import Passage, cited_numbers, strip_citations

        if not any(c.isalnum() for c in strip_citations(sentence)):
            return ""  # a stray citation or bracket cut off by the token limit says nothing
        if self.checker is None:
            return sentence
        passages = [Passage(str(s["n"]), s["text"]) for s in turn.sources]
        result = self.checker.check_sentence(sentence, passages)
        turn.timings["claims_checked"] = turn.timings.get("claims_checked", 0) + 1
        if result.supported:
            return sentence if cited_numbers(sentence) else f"{sentence.rstrip()} [{result.passage}]"
        log.info("session %s: unsupported sentence (%s)", turn.session_id, "; ".join(result.problems))
        if (
            result.evidence
            and result.passage
            and result.score >= REPLACE_MIN_COSINE
            and result.evidence not in turn.composed
        ):
            turn.timings["claims_replaced"] = turn.timings.get("claims_replaced", 0) + 1
            turn.composed.append(result.evidence)  # in generative mode: the quotes already put in, said once
            return f"{result.evidence} [{result.passage}]"
        turn.timings["claims_removed"] = turn.timings.get("claims_removed", 0) + 1
        return REMOVED_MARK


def previous_sources(recent: list[Any]) -> list[dict[str, Any]]:
    """The sources of the last answer in `recent`, with the text a rework may use: what it quoted, else the snippet."""
    for message in reversed(recent):
        sources = message.get("sources") if isinstance(message, dict) else getattr(message, "sources", None)
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        if role == "assistant" and sources:
            return [
                dict(s, text=" ".join(q["text"] for q in s.get("quotes") or []) or s.get("snippet", ""))
                for s in sources
            ]
        if role == "assistant":
            return []
    return []


def _quote(evidence: Evidence) -> dict[str, Any]:
    return {"text": evidence.text, "page": evidence.page, "start": evidence.start, "end": evidence.end}


def _evidence_text(evidence: list[Evidence], hit: int) -> str:
    """The best few sentences of one source, in document order: a short prompt is a fast and focused one."""
    mine = [e for e in evidence if e.hit == hit][:EVIDENCE_PER_SOURCE]
    return " ".join(e.text for e in sorted(mine, key=lambda e: e.start if e.start is not None else 0))


def resolve_mode(setting: str, packaged_small_model: bool) -> AnswerMode:
    """`auto`: extractive for the packaged 135M model (it miscopies numbers), generative for any other."""
    if setting not in ANSWER_MODES:
        raise ValueError(f"answer mode must be one of {', '.join(ANSWER_MODES)}, not {setting!r}")
    if setting == "auto":
        return "extractive" if packaged_small_model else "generative"
    return setting  # type: ignore[return-value]


__all__ = ["ANSWER_MODES", "AnswerMode", "KnowledgeAnswerer", "resolve_mode"]
