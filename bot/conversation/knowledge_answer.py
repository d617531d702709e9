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
import re
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
# A follow-up asking for less ("make that shorter", "tl;dr"): in extractive mode it is answered by quoting less.
_SHORTEN = re.compile(
    r"\b(shorter|shorten|brief|briefer|briefly|concise|tl;?dr|in short|one sentence|summari[sz]e)\b", re.I
)
# One cited sentence of an answer: text up to and including its first [n] (or [n, m]) marker.
_CITED_SENTENCE = re.compile(r"\S[^\[]*?\[\s*\d{1,3}(?:\s*[,;–-]\s*\d{1,3})*\s*\]")
_UNCLOSED_TAIL = re.compile(r"\s*\[[^\]]*$")  # "… [1" cut by the token limit


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

    def rework(self, turn: Turn, generate: Callable[[], Iterator[str]]) -> Iterator[str]:
        """A rework of the previous cited answer ("make that shorter", "translate it"), held to its sources.

        In extractive mode (the packaged small model) a request for less is answered by quoting less: the previous
        answer's first cited sentence, as it was; the model writes nothing it could get wrong. Any other rework is
        generated and verified; if no sentence of it survives the check, the previous answer's first quote follows.
        """
        first_quote = _first_cited_sentence(_previous_answer(turn.recent))
        if self.mode == "extractive" and first_quote and _SHORTEN.search(turn.message):
            yield first_quote
            return
        yield from self.verified(turn, generate(), fallback=first_quote)

    def verified(
        self, turn: Turn, pieces: Iterator[str], fallback: str | None = None, *, claims_only: bool = False
    ) -> Iterator[str]:
        """Generated text, released sentence by sentence once each is checked against `turn.sources`.

        Removal marks are not repeated back to back; when every sentence was removed and a `fallback` quote is
        given, it is added after them, so the answer still says what the sources say. `claims_only` (a draft
        written with documents): a sentence that is not about the sources (below REPLACE_MIN_COSINE to all of
        them) and states no number, date or name the request did not give ("Dear Ms Ray," "Thanks for your
        patience.") passes as written; every other sentence is held to the sources like an answer.
        """
        buffer, shown, kept = "", [], 0

        def release(sentence: str) -> Iterator[str]:
            nonlocal kept
            checked = self._checked(turn, sentence, claims_only=claims_only)
            if not checked or (checked == REMOVED_MARK and shown and shown[-1] == REMOVED_MARK):
                return
            kept += checked != REMOVED_MARK
            yield checked if not shown else " " + checked
            shown.append(checked)

        for piece in pieces:
            buffer += piece
            sentences = split_sentences(buffer)
            if len(sentences) < 2:
                continue
            for sentence in sentences[:-1]:  # the last one may still grow
                yield from release(sentence.text)
            buffer = buffer[sentences[-1].start :]
        for sentence in split_sentences(_UNCLOSED_TAIL.sub("", buffer)):  # what is left when the stream ends
            yield from release(sentence.text)
        if not kept and fallback:
            yield fallback if not shown else " " + fallback

    def _checked(self, turn: Turn, sentence: str, *, claims_only: bool = False) -> str:
        """The sentence with its citation, its replacement quote, or the removal mark (counted in the timings);
        with `claims_only`, a sentence about something else that states nothing specific, as written."""
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
        if claims_only and result.score < REPLACE_MIN_COSINE and not _states_specifics(sentence, turn.message):
            return sentence  # a greeting or a courtesy: not about the sources, nothing in it to check
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


def _states_specifics(sentence: str, request: str = "") -> bool:
    """Whether a sentence carries something a source must back: a number, quantity, date or name that the
    person's own request did not give (a draft may greet "Ms Ray" when asked to reply to Ms Ray)."""
    from bot.answer.support import names, quantities

    given = request.lower()
    return any(name.lower() not in given for name in names(sentence)) or any(
        q.shown() not in given for q in quantities(sentence, claim=True)
    )


def _previous_answer(recent: list[Any]) -> str:
    for message in reversed(recent):
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        if role == "assistant":
            return str(message.get("content") if isinstance(message, dict) else getattr(message, "content", ""))
    return ""


def _first_cited_sentence(answer: str) -> str | None:
    match = _CITED_SENTENCE.search(answer)
    return match.group(0).strip() if match else None


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
