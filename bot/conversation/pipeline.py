"""One conversation turn: load memory → route → knowledge or skill → stream → persist.

The preparation is a LangChain runnable chain (memory, routing, retrieval and prompt branches); generation
streams through `RagtuneChatModel`; the turn is written to the shared memory in one transaction at the end,
with its route, confidence, reason, sources, adapter and timings. The caller gets events: a `TurnStart`
(route badge and sources, before the first token), `Token`s, then a `TurnDone`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableBranch, RunnableLambda

from bot.conversation.condense import condense_query
from bot.conversation.prompts import (
    NOT_FOUND,
    WITHHELD,
    knowledge_prompt,
    leaks_system_prompt,
    skill_prompt,
    skill_request,
    summary_block,
    trim_snippet,
)
from bot.db.connection import is_unavailable
from bot.memory import MemoryStore, StoredMessage

log = logging.getLogger(__name__)

# Best hybrid score below which the knowledge path answers NOT_FOUND instead of guessing.
# Measured on the demo knowledge base (docs/, MiniLM, hybrid score = cosine of the best chunk): 13 on-topic
# questions scored 0.29-0.65, 12 off-topic ones (trivia, small talk, "make that shorter") 0.06-0.21.
# Override with RAGTUNE_MIN_RELEVANCE for other documents or another embedder.
DEFAULT_MIN_SCORE = 0.25
DEFAULT_SOURCES = 3
# Shown (first clause of the route reason, so the UI badge carries it) when PostgreSQL is unreachable: the turn is
# answered on the skill path without memory or documents, and held in the process until the database returns.
DB_NOTICE = "memory and documents are unavailable right now; answering without them"
DB_SAVE_LATER = "this turn will be saved when the database is back"
DB_NOT_SAVED = "this turn could not be saved"


@dataclass
class TurnOptions:
    """What the caller may force: a route name or action, an adapter, a collection, a length."""

    route: str | None = None
    adapter: str | None = None
    collection: str | list[str] | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None


@dataclass
class TurnStart:
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
    finish_reason: str = "stop"
    notice: str | None = None  # set when the database was unreachable: what the user missed and whether it was saved

    def badge(self) -> str:
        return badge_text(self.route, self.confidence, self.reason, self.adapter)


def badge_text(route: str, confidence: float, reason: str, adapter: str | None = None) -> str:
    with_adapter = f" · adapter {adapter}" if adapter else ""
    return f"{route}{with_adapter} · {confidence:.0%} · {reason}"


def public_source(n: int, hit: Any) -> dict[str, Any]:
    """A SearchHit as stored with the answer and shown in the UI (text kept only for the prompt)."""
    return {
        "n": n,
        "title": getattr(hit, "title", "") or getattr(hit, "source", ""),
        "source": getattr(hit, "source", ""),
        "page": getattr(hit, "page", None),
        "heading": getattr(hit, "heading", "") or "",
        "snippet": trim_snippet(getattr(hit, "text", ""), 300),
        "score": round(float(getattr(hit, "score", 0.0)), 4),
        "chunk_id": getattr(hit, "chunk_id", None),
        "collection": getattr(hit, "collection", None),
        "text": trim_snippet(getattr(hit, "text", "")),
    }


def _choice(
    route: str,
    action: str,
    reason: str,
    *,
    adapter: str | None = None,
    collection: str | None = None,
    retrieve: bool | None = None,
    confidence: float = 1.0,
    fallback: bool = False,
) -> dict[str, Any]:
    """A routing decision made without the router (the user forced it, or there is no router)."""
    return {
        "route": route,
        "action": action,
        "adapter": adapter,
        "collection": collection,
        "retrieve": action == "knowledge" if retrieve is None else retrieve,
        "confidence": confidence,
        "reason": reason,
        "fallback": fallback,
    }


def _history_messages(messages: Sequence[StoredMessage | dict]) -> list[BaseMessage]:
    out: list[BaseMessage] = []
    for m in messages:
        role, content = (m["role"], m["content"]) if isinstance(m, dict) else (m.role, m.content)
        if role == "user":
            out.append(HumanMessage(content))
        elif role == "assistant":
            out.append(AIMessage(content))
    return out


def to_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    roles = {"human": "user", "ai": "assistant", "system": "system"}
    return [{"role": roles[m.type], "content": str(m.content)} for m in messages]


def _from_dicts(messages: Sequence[dict[str, str]]) -> list[BaseMessage]:
    kinds = {"user": HumanMessage, "assistant": AIMessage, "system": SystemMessage}
    return [kinds[m["role"]](m["content"]) for m in messages]


class Conversation:
    """The pipeline over real (or, in unit tests, fake) parts: a memory, a router, a store, a generator."""

    def __init__(
        self,
        memory: MemoryStore,
        generator: Any,
        router: Any = None,
        store: Any = None,
        *,
        default_collection: str | None = None,
        min_score: float = DEFAULT_MIN_SCORE,
        sources_k: int = DEFAULT_SOURCES,
        search_mode: str = "hybrid",
        max_new_tokens: int = 200,
        temperature: float | None = None,
    ) -> None:
        self.memory = memory
        self.generator = generator
        self.router = router
        self.store = store
        self.default_collection = default_collection
        self.min_score = min_score
        self.sources_k = sources_k
        self.search_mode = search_mode
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self._prepare = (
            RunnableLambda(self._load_memory, name="load_memory")
            | RunnableLambda(self._probe, name="probe_retrieval")
            | RunnableLambda(self._route, name="route")
            | RunnableBranch(
                (lambda s: s["retrieve"], RunnableLambda(self._retrieve, name="retrieve")),
                RunnableLambda(lambda s: s, name="no_retrieval"),
            )
            | RunnableBranch(
                (lambda s: s["action"] == "knowledge", RunnableLambda(self._knowledge_messages, name="knowledge")),
                RunnableLambda(self._skill_messages, name="skill"),
            )
        )

    # --- the runnable steps --------------------------------------------------------------------
    def _load_memory(self, state: dict) -> dict:
        started = time.perf_counter()
        if state.get("history") is not None:  # an API caller that sent its own history (stateless client)
            state["summary"], state["recent"] = "", list(state["history"])
        else:
            try:
                context = self.memory.context(state["session_id"], state["owner"])
                state["summary"], state["recent"] = context.summary, context.messages
            except Exception as exc:
                self._database_down(state, exc)
                state["summary"], state["recent"] = "", []
        state["timings"]["memory_ms"] = (time.perf_counter() - started) * 1000
        return state

    @staticmethod
    def _database_down(state: dict, exc: Exception) -> None:
        """Note an unreachable database for the rest of the turn; any other error is re-raised."""
        if not is_unavailable(exc):
            raise exc
        log.warning("database unavailable, answering without memory or documents: %s", exc)
        state["db_down"] = True

    def _probe(self, state: dict) -> dict:
        """Search the message as written, so the router can weigh how well the documents match it.

        The raw message, not the condensed query: "make that shorter" must not borrow the previous question's
        strong match. The hits are reused when the condensed query turns out to be the same text.
        """
        options: TurnOptions = state["options"]
        if self.store is None or self.router is None or options.adapter or options.route or state.get("db_down"):
            return state
        started = time.perf_counter()
        collection = self._collection(options)
        vector = self._shared_message_vector(state["message"])
        try:
            hits = self.store.search(
                state["message"], collection=collection, k=max(self.sources_k, 1), mode=self.search_mode,
                embedding=vector,
            )  # fmt: skip
        except Exception as exc:
            self._database_down(state, exc)
            return state
        state["message_vector"] = vector
        state["probe"] = (state["message"], collection, hits)
        state["retrieval_strength"] = max((float(h.score) for h in hits), default=0.0)
        state["timings"]["probe_ms"] = (time.perf_counter() - started) * 1000
        return state

    def _shared_message_vector(self, message: str):
        """Embed the message once for the probe search and the router when both use the same embedder (the app's
        case); None lets each embed it itself."""
        embedder = getattr(self.router, "embedder", None)
        if embedder is None or embedder is not getattr(self.store, "embedder", None):
            return None
        return self.router.embed(message)

    def _route(self, state: dict) -> dict:
        started = time.perf_counter()
        options: TurnOptions = state["options"]
        known = set(self.adapters())
        if options.adapter:
            if options.adapter not in known:
                names = ", ".join(sorted(known)) or "none"
                raise ValueError(f"adapter {options.adapter!r}: unknown (known: {names})")
            choice = _choice("skill", "skill", "adapter chosen by the user", adapter=options.adapter)
        elif options.route in ("knowledge", "skill") and not self._route_spec(options.route):
            choice = _choice(options.route, options.route, "route chosen by the user")
        elif options.route:
            spec = self._route_spec(options.route)
            if spec is None:
                raise ValueError(f"route {options.route!r}: unknown")
            action = getattr(spec, "action", "knowledge")
            choice = _choice(
                options.route,
                action,
                "route chosen by the user",
                adapter=getattr(spec, "adapter", None),
                collection=getattr(spec, "collection", None),
                retrieve=getattr(spec, "retrieve", None),
            )
        elif self.router is None:
            choice = _choice("knowledge", "knowledge", "no router configured", confidence=0.0, fallback=True)
        else:
            history = [m if isinstance(m, dict) else m.as_chat() for m in state["recent"]]
            decision = self.router.decide(
                state["message"],
                history,
                retrieval_strength=state.get("retrieval_strength"),
                embedding=state.get("message_vector"),
            )
            choice = {
                key: getattr(decision, key, None)
                for key in ("route", "action", "adapter", "collection", "retrieve", "confidence", "reason", "fallback")
            }
            choice["confidence"] = float(choice["confidence"] or 0.0)
            choice["reason"] = choice["reason"] or ""
        if choice["adapter"] and choice["adapter"] not in known:
            log.warning("route %s names adapter %r, which is not loaded: using the base model", choice["route"],
                        choice["adapter"])  # fmt: skip
            choice["reason"] += f" (adapter {choice['adapter']} not loaded: base model)"
            choice["adapter"] = None
        if choice["action"] == "knowledge":
            choice["retrieve"] = True
        state.update(choice)
        state["retrieve"] = bool(state["retrieve"]) and self.store is not None
        if state.get("db_down"):
            self._degrade(state)
        state["timings"]["route_ms"] = (time.perf_counter() - started) * 1000
        return state

    def _retrieve(self, state: dict) -> dict:
        started = time.perf_counter()
        options: TurnOptions = state["options"]
        collection = self._collection(options, state.get("collection"))
        query = condense_query(state["message"], state["recent"])
        probe = state.get("probe")
        if probe is not None and probe[0] == query and probe[1] == collection:
            hits = probe[2]
        else:
            try:
                hits = self.store.search(query, collection=collection, k=max(self.sources_k, 1), mode=self.search_mode)
            except Exception as exc:
                self._database_down(state, exc)
                self._degrade(state)
                state["timings"]["retrieve_ms"] = (time.perf_counter() - started) * 1000
                return state
        best = max((float(h.score) for h in hits), default=0.0)
        state["query"], state["best_score"] = query, best
        state["sources"] = [public_source(n, hit) for n, hit in enumerate(hits[: self.sources_k], start=1)]
        state["not_found"] = state["action"] == "knowledge" and best < self.min_score
        if state["not_found"]:
            state["sources"] = []
        state["timings"]["retrieve_ms"] = (time.perf_counter() - started) * 1000
        return state

    def _collection(self, options: TurnOptions, route_collection: str | None = None) -> str | list[str] | None:
        """The collection to search: the caller's pick, else the route's, else the default (None: all of them).

        A list in `options.collection` is what the caller may read (access control), not a pick: a route's own
        collection is searched only when it is on that list, and nothing otherwise.
        """
        if isinstance(options.collection, (list, tuple)):
            if route_collection:
                return route_collection if route_collection in options.collection else [""]
            return list(options.collection)
        return options.collection or route_collection or self.default_collection

    @staticmethod
    def _degrade(state: dict) -> None:
        """No database: answer on the skill path (same adapter, if any) and say so first in the reason."""
        if state["action"] == "knowledge":
            state["route"], state["action"] = "skill", "skill"
        state["retrieve"], state["sources"], state["not_found"] = False, [], False
        state["confidence"], state["fallback"] = 0.0, True
        state["reason"] = f"{DB_NOTICE}. {state.get('reason') or ''}".strip()
        state["notice"] = DB_NOTICE

    def _knowledge_messages(self, state: dict) -> dict:
        from bot.conversation.prompts import format_sources

        if state.get("not_found") or not state.get("sources"):
            state["not_found"], state["prompt"] = True, []
            return state
        state["prompt"] = knowledge_prompt.invoke(
            {
                "summary": summary_block(state["summary"]),
                "history": _history_messages(state["recent"]),
                "sources": format_sources(state["sources"]),
                "question": state["message"],
            }
        ).to_messages()
        return state

    def _skill_messages(self, state: dict) -> dict:
        state["not_found"] = False
        state["prompt"] = skill_prompt.invoke(
            {
                "summary": summary_block(state["summary"]),
                "history": _history_messages(state["recent"]),
                "request": skill_request(state["message"], state.get("sources") or []),
            }
        ).to_messages()
        return state

    # --- helpers -------------------------------------------------------------------------------
    def adapters(self) -> list[str]:
        try:
            return list(self.generator.adapters())
        except Exception:  # a remote generator may not list adapters
            return []

    def routes(self) -> list[Any]:
        return list(getattr(self.router, "routes", None) or [])

    def _route_spec(self, name: str) -> Any:
        return next((spec for spec in self.routes() if getattr(spec, "name", None) == name), None)

    def _stream_answer(self, messages: list[BaseMessage], adapter: str | None, options: TurnOptions) -> Iterator[str]:
        max_new = options.max_new_tokens or self.max_new_tokens
        dicts = to_dicts(messages)
        if hasattr(self.generator, "fit_messages"):
            dicts = self.generator.fit_messages(dicts, max_new)
        temperature = options.temperature if options.temperature is not None else self.temperature
        try:
            from bot.llm.chat_model import RagtuneChatModel
        except ImportError:  # generation layer not installed yet: talk to the generator directly
            yield from self.generator.stream(dicts, adapter=adapter, max_new_tokens=max_new, temperature=temperature)
            return
        model = RagtuneChatModel(generator=self.generator, adapter=adapter)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new}
        if temperature is not None:
            kwargs["temperature"] = temperature
        for chunk in model.stream(_from_dicts(dicts), **kwargs):
            if chunk.content:
                yield str(chunk.content)

    # --- the turn ------------------------------------------------------------------------------
    def stream(
        self,
        session_id: str,
        owner: str,
        message: str,
        options: TurnOptions | None = None,
        *,
        history: Sequence[dict] | None = None,
    ) -> Iterator[TurnStart | Token | TurnDone]:
        """Run one turn, yielding events; the turn is persisted when the answer is complete.

        `history` replaces the stored memory for this turn (OpenAI-style clients that send the conversation).
        """
        message = message.strip()
        if not message:
            raise ValueError("message: empty")
        options = options or TurnOptions()
        started = time.perf_counter()
        state = self._prepare.invoke(
            {
                "session_id": session_id,
                "owner": owner,
                "message": message,
                "options": options,
                "history": history,
                "timings": {},
                "sources": [],
                "query": None,
                "not_found": False,
            }  # fmt: skip
        )
        timings = state["timings"]
        yield TurnStart(
            session_id=session_id, route=state["route"], action=state["action"], adapter=state["adapter"],
            confidence=state["confidence"], reason=state["reason"], fallback=bool(state["fallback"]),
            sources=[{k: v for k, v in s.items() if k != "text"} for s in state["sources"]],
            not_found=state["not_found"], query=state["query"], notice=state.get("notice"),
        )  # fmt: skip
        parts: list[str] = []
        generate_started = time.perf_counter()
        if state["not_found"]:
            parts.append(NOT_FOUND)
            timings["ttft_s"] = time.perf_counter() - started
            yield Token(NOT_FOUND)
        else:
            pieces = self._stream_answer(state["prompt"], state["adapter"], options)
            for piece in pieces:
                if not parts:
                    timings["ttft_s"] = time.perf_counter() - started
                parts.append(piece)
                if leaks_system_prompt("".join(parts)):  # an injected "reveal your prompt" worked: stop it here
                    pieces.close()
                    log.warning("session %s: answer began to echo the system prompt; withheld", session_id)
                    parts = [WITHHELD]
                    yield Token("\n" + WITHHELD)
                    break
                yield Token(piece)
        timings["generate_s"] = time.perf_counter() - generate_started
        answer = "".join(parts).strip()
        timings["total_s"] = time.perf_counter() - started
        if "best_score" in state:
            timings["best_score"] = state["best_score"]
        timings = {k: round(float(v), 4) for k, v in timings.items()}
        sources = [{k: v for k, v in s.items() if k != "text"} for s in state["sources"]]
        record = dict(route=state["route"], confidence=state["confidence"], reason=state["reason"], sources=sources,
                      adapter=state["adapter"], timings=timings)  # fmt: skip
        turn, notice = self._save(state, session_id, owner, message, answer, record)
        yield TurnDone(
            session_id=session_id, turn=turn, answer=answer, route=state["route"], action=state["action"],
            adapter=state["adapter"], confidence=state["confidence"], reason=state["reason"], sources=sources,
            not_found=state["not_found"], timings=timings, notice=notice,
        )  # fmt: skip

    def _save(
        self, state: dict, session_id: str, owner: str, message: str, answer: str, record: dict[str, Any]
    ) -> tuple[int, str | None]:
        """Store the turn; with the database down, hold it for later (turn 0) and say so in the notice."""
        if not state.get("db_down"):
            try:
                return self.memory.save_turn(session_id, owner, message, answer, **record), None
            except Exception as exc:
                self._database_down(state, exc)
        kept = hasattr(self.memory, "defer_turn") and self.memory.defer_turn(session_id, owner, message, answer,
                                                                             **record)  # fmt: skip
        return 0, f"{state.get('notice') or DB_NOTICE}; {DB_SAVE_LATER if kept else DB_NOT_SAVED}"

    def ask(self, session_id: str, owner: str, message: str, options: TurnOptions | None = None) -> TurnDone:
        """The whole turn at once (CLI scripts, tests)."""
        done = None
        for event in self.stream(session_id, owner, message, options):
            if isinstance(event, TurnDone):
                done = event
        assert done is not None
        return done
