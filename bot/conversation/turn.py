"""The typed records of one turn: what the caller may force, the routing choice, the turn itself, its events.

A `Turn` is created when a message arrives and filled in by each step of the pipeline (memory, probe, route,
retrieve, prompt, answer) until it is stored; the events a caller sees (`TurnStart`, `Token`, `TurnDone`) are
views of it. One shape from entry to storage, so a reader can follow a message without chasing dict keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bot.answer.sentences import strip_markdown
from bot.conversation.prompts import trim_snippet

Action = Literal["knowledge", "skill"]


@dataclass
class TurnOptions:
    """What the caller may force: a route name or action, an adapter, a collection, a length."""

    route: str | None = None
    adapter: str | None = None
    collection: str | list[str] | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None  # the answer ends before the first of these (generated answers)
    instructions: str | None = None  # a client's system/developer text, added to the system prompt (generated answers)
    response_format: dict | None = None  # OpenAI json_object / json_schema: a generated answer constrained to it


@dataclass
class RouteChoice:
    """Which route answers, with which adapter and collection, whether it retrieves, and why."""

    route: str
    action: Action
    adapter: str | None = None
    collection: str | None = None
    retrieve: bool = False
    confidence: float = 1.0
    reason: str = ""
    fallback: bool = False
    reworks_previous: bool = False  # "make that shorter": the answer reworks the previous one, from its sources

    @classmethod
    def forced(
        cls,
        route: str,
        action: Action,
        reason: str,
        *,
        adapter: str | None = None,
        collection: str | None = None,
        retrieve: bool | None = None,
        confidence: float = 1.0,
        fallback: bool = False,
    ) -> RouteChoice:
        """A choice made without the router (the user forced it, or there is no router)."""
        return cls(
            route,
            action,
            adapter,
            collection,
            action == "knowledge" if retrieve is None else retrieve,
            confidence,
            reason,
            fallback,
        )

    @classmethod
    def from_decision(cls, decision: Any) -> RouteChoice:
        """The router's `Decision` (or anything with its fields) as a choice."""
        return cls(
            route=decision.route,
            action=decision.action,
            adapter=decision.adapter,
            collection=getattr(decision, "collection", None),
            retrieve=bool(getattr(decision, "retrieve", False)),
            confidence=float(decision.confidence or 0.0),
            reason=decision.reason or "",
            fallback=bool(getattr(decision, "fallback", False)),
            reworks_previous=getattr(decision, "memory", None) == "transform",
        )


@dataclass
class Probe:
    """The raw message's search, kept so retrieval can reuse it when the condensed query is the same text."""

    query: str
    collection: str | list[str] | None
    hits: list[Any]


def public_source(n: int, hit: Any) -> dict[str, Any]:
    """A SearchHit as stored with the answer and shown in the UI (`text` is kept only for the prompt)."""
    return {
        "n": n,
        "title": getattr(hit, "title", "") or getattr(hit, "source", ""),
        "source": getattr(hit, "source", ""),
        "page": getattr(hit, "page", None),
        "heading": getattr(hit, "heading", "") or "",
        "snippet": trim_snippet(strip_markdown(getattr(hit, "text", "")), 300),
        "score": round(float(getattr(hit, "score", 0.0)), 4),
        "chunk_id": getattr(hit, "chunk_id", None),
        "collection": getattr(hit, "collection", None),
        "text": trim_snippet(getattr(hit, "text", "")),
    }


def shown_sources(sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sources as callers see and the memory stores them: without the prompt text."""
    return [{k: v for k, v in s.items() if k != "text"} for s in sources]


@dataclass
class Turn:
    """One message on its way through the pipeline; each step fills in its part."""

    session_id: str
    owner: str
    message: str
    options: TurnOptions
    summary: str = ""
    recent: list[Any] = field(default_factory=list)  # StoredMessage rows of the session's recent turns
    message_vector: Any = None
    probe: Probe | None = None
    retrieval_strength: float | None = None
    choice: RouteChoice | None = None
    query: str | None = None
    hits: list[Any] = field(default_factory=list)
    best_score: float | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    evidence: list[Any] = field(default_factory=list)  # bot.answer.evidence.Evidence, best first
    composed: list[str] = field(default_factory=list)  # the extractive answer's sentences, each with its [n]
    not_found: bool = False
    prompt: list[dict[str, str]] = field(default_factory=list)
    generation: Any = None  # the generator's StreamStats (token counts, finish reason) when the answer was generated
    db_down: bool = False
    withheld: bool = False  # the answer began to echo a system prompt and was replaced
    notice: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def route(self) -> RouteChoice:
        assert self.choice is not None, "the turn has not been routed yet"
        return self.choice

    def record(self) -> dict[str, Any]:
        """What the memory stores beside the two texts (save_turn's and defer_turn's keyword arguments)."""
        c = self.route
        return {
            "route": c.route,
            "confidence": c.confidence,
            "reason": c.reason,
            "sources": shown_sources(self.sources),
            "adapter": c.adapter,
            "timings": self.timings,
            "action": c.action,
        }

    def start_event(self) -> TurnStart:
        c = self.route
        return TurnStart(
            session_id=self.session_id,
            route=c.route,
            action=c.action,
            adapter=c.adapter,
            confidence=c.confidence,
            reason=c.reason,
            fallback=c.fallback,
            sources=shown_sources(self.sources),
            not_found=self.not_found,
            query=self.query,
            notice=self.notice,
        )

    def done_event(self, turn: int, answer: str, notice: str | None, usage: dict[str, int], finish: str) -> TurnDone:
        c = self.route
        return TurnDone(
            session_id=self.session_id,
            turn=turn,
            answer=answer,
            route=c.route,
            action=c.action,
            adapter=c.adapter,
            confidence=c.confidence,
            reason=c.reason,
            sources=shown_sources(self.sources),
            not_found=self.not_found,
            timings=dict(self.timings),
            notice=notice,
            usage=usage,
            finish_reason=finish,
        )


@dataclass
class TurnStart:
    """Sent before the first token: the route badge and the sources."""

    session_id: str
    route: str
    action: str
    adapter: str | None
    confidence: float
    reason: str
    fallback: bool
    sources: list[dict[str, Any]]
    not_found: bool
    query: str | None
    notice: str | None = None


@dataclass
class Token:
    text: str


@dataclass
class TurnDone:
    """Sent once the turn is stored: the whole answer, its turn number and timings."""

    session_id: str
    turn: int
    answer: str
    route: str
    action: str
    adapter: str | None
    confidence: float
    reason: str
    sources: list[dict[str, Any]]
    not_found: bool
    timings: dict[str, float] = field(default_factory=dict)
    finish_reason: str = "stop"  # "length" when the token limit cut the answer
    notice: str | None = None  # set when the database was unreachable: what the user missed and whether it was saved
    usage: dict[str, int] = field(default_factory=dict)  # prompt_tokens, completion_tokens, total_tokens

    def badge(self) -> str:
        return badge_for(self).label


Event = TurnStart | Token | TurnDone


def final_event(events: Iterable[Event]) -> TurnDone:
    """Run a turn's events to the end and return its `TurnDone` (callers that do not stream)."""
    done = None
    for event in events:
        if isinstance(event, TurnDone):
            done = event
    if done is None:
        raise RuntimeError("the turn ended without an answer")
    return done


@dataclass(frozen=True)
class Badge:
    """What a reader sees above an answer: a plain label, a kind for its colour, and the details behind it."""

    label: str  # "From your documents · 3 sources", "Written by support-tone", "Not in your documents"
    kind: Literal["knowledge", "skill", "notfound", "degraded"]
    details: str  # the route, how sure the router was and why, in words: for a tooltip or an expandable part


def badge_for(turn: Mapping[str, Any] | Any) -> Badge:
    """The badge of a turn: a `TurnStart`/`TurnDone`, or a mapping with their fields (a stored answer)."""

    def get(name: str, default: Any = None) -> Any:
        value = turn.get(name, default) if isinstance(turn, Mapping) else getattr(turn, name, default)
        return default if value is None else value

    return make_badge(
        route=get("route", "?"),
        action=get("action", "knowledge"),
        confidence=float(get("confidence", 0.0)),
        reason=get("reason", ""),
        adapter=get("adapter"),
        sources=len(get("sources", [])),
        not_found=bool(get("not_found", False)),
        notice=get("notice"),
        fallback=bool(get("fallback", False)),
    )


def make_badge(
    *,
    route: str,
    action: str,
    confidence: float,
    reason: str = "",
    adapter: str | None = None,
    sources: int = 0,
    not_found: bool = False,
    notice: str | None = None,
    fallback: bool = False,
) -> Badge:
    """Plain words first ("From your documents · 3 sources"); the route, confidence and reason go to the details."""
    counted = f"{sources} source{'' if sources == 1 else 's'}"
    if notice:
        label, kind = "Without your documents", "degraded"
    elif not_found:
        label, kind = "Not in your documents", "notfound"
    elif action == "knowledge":
        label, kind = ("From your documents · " + counted if sources else "From your documents"), "knowledge"
    else:
        written = f"Written by {adapter}" if adapter else "Written by the model"
        label, kind = (f"{written} · {counted}" if sources else written), "skill"
    details = badge_details(route, confidence, reason, notice=notice, fallback=fallback, not_found=not_found)
    return Badge(label, kind, details)


def badge_details(
    route: str,
    confidence: float,
    reason: str,
    *,
    notice: str | None = None,
    fallback: bool = False,
    not_found: bool = False,
) -> str:
    """The route, how sure the router was, and its reason in words (no scores, log-odds or nearest examples)."""
    if notice:  # the database is down: that is the whole story of this answer
        return notice[:1].upper() + notice[1:] + "."
    notes = plain_reason(reason)
    if not_found:  # how sure the router was of the route is beside the point: the documents did not answer
        kept = [n for n in notes if not n.startswith(("your documents match", "the router was unsure"))]
        return " ".join(
            [f"Route {route} searched your documents; no passage answers it closely enough."]
            + [n[:1].upper() + n[1:] + "." for n in kept]
        )
    chosen_by_user = any(n.endswith("chosen by the user") for n in notes)
    if chosen_by_user:
        head = f"Route {route}, chosen by you."
        notes = [n for n in notes if not n.endswith("chosen by the user")]
    elif fallback or any(n.startswith("the router was unsure") for n in notes):
        head = f"Route {route}: the router was unsure ({confidence:.0%}), so the default route answered."
        notes = [n for n in notes if not n.startswith("the router was unsure")]
    else:
        head = f"Route {route}, chosen by the router ({confidence:.0%} sure)."
    return " ".join([head] + [n[:1].upper() + n[1:] + "." for n in notes])


_NOTE_SPLIT = re.compile(r"\.\s+|;\s+(?=asks to rework|a short follow-up|retrieval strength)")
_SHIFT = re.compile(r"by ([+-]?\d+(?:\.\d+)?) log-odds")
_NOT_LOADED = re.compile(r"\(adapter (\S+) not loaded: base model\)")


def plain_reason(reason: str) -> list[str]:
    """The router's reason as short sentences a user can read: its scores, log-odds and nearest examples left out."""
    notes: list[str] = []
    for part in _NOTE_SPLIT.split(reason.split("nearest examples:", 1)[0]):
        part = part.strip().rstrip(".").strip()
        if not part or part.startswith(("example similarity", "the nearest route is unknown")):
            continue
        if part.startswith("low confidence"):
            notes.append("the router was unsure")
        elif " with confidence " in part and " by " in part:
            continue  # "knowledge with confidence 0.96 by similarity [knowledge 0.96, skill 0.04]": the head says it
        elif part.startswith("retrieval strength"):
            shift = _SHIFT.search(part)
            value = float(shift.group(1)) if shift else 0.0
            if abs(value) >= 0.05:
                notes.append(f"your documents match this message {'well' if value > 0 else 'poorly'}")
        elif part.startswith("asks to rework"):
            notes.append("it asks to rework the previous answer")
        elif part.startswith("a short follow-up"):
            notes.append("a short follow-up, so it stays with the previous turn's route")
        else:
            notes.append(_NOT_LOADED.sub("", part).strip())
    missing = _NOT_LOADED.search(reason)
    if missing:
        notes.append(f"adapter {missing.group(1)} is not loaded, so the base model answered")
    return [n for n in notes if n]


def badge_text(
    route: str,
    confidence: float,
    reason: str,
    adapter: str | None = None,
    *,
    action: str = "knowledge",
    sources: int = 0,
    not_found: bool = False,
    notice: str | None = None,
) -> str:
    """The badge's plain label (see `make_badge`)."""
    return make_badge(
        route=route,
        action=action,
        confidence=confidence,
        reason=reason,
        adapter=adapter,
        sources=sources,
        not_found=not_found,
        notice=notice,
    ).label
