"""One conversation turn, top to bottom: load memory → probe → route → retrieve → prompt → answer → store.

Each step is a plain method that fills in its part of the typed `Turn`; `Conversation.stream` runs them in
order and yields the caller's events: a `TurnStart` (route badge and sources, before the first token), `Token`s,
then a `TurnDone` once the turn is written to the shared memory in one transaction, with its route, confidence,
reason, sources, adapter and timings. How a knowledge answer is composed from the evidence lives in
`bot.conversation.knowledge_answer`; the prompts in `bot.conversation.prompts`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from bot.answer import thresholds
from bot.conversation.condense import condense_query
from bot.conversation.guards import RepetitionGuard
from bot.conversation.knowledge_answer import KnowledgeAnswerer, previous_sources
from bot.conversation.messages import clean_message
from bot.conversation.prompts import (
    NOT_FOUND,
    WITHHELD,
    instructions_block,
    knowledge_prompt,
    leaks_system_prompt,
    skill_prompt,
    skill_request,
    summary_block,
)
from bot.conversation.protocols import Memory, Router, Store
from bot.conversation.turn import (
    Event,
    Probe,
    RouteChoice,
    Token,
    Turn,
    TurnDone,
    TurnOptions,
    TurnStart,
    final_event,
    public_source,
)
from bot.db.connection import is_unavailable
from bot.llm.chat_model import to_chat_messages
from bot.llm.types import Generator
from bot.logs import log_turn
from bot.promotion import PromotedAdapters, Serving

log = logging.getLogger(__name__)

# Best retrieved passage's score below which the knowledge path answers NOT_FOUND (one home: bot/answer/thresholds.py).
DEFAULT_MIN_SCORE = thresholds.MIN_RELEVANCE["standard"]
DEFAULT_SOURCES = 3
# Shown (first clause of the route reason, so the UI badge carries it) when PostgreSQL is unreachable: the turn is
# answered on the skill path without memory or documents, and held in the process until the database returns.
DB_NOTICE = "memory and documents are unavailable right now; answering without them"
DB_SAVE_LATER = "this turn will be saved when the database is back"
DB_NOT_SAVED = "this turn could not be saved"

__all__ = ["Conversation", "Event", "Token", "TurnDone", "TurnOptions", "TurnStart"]


def _history_messages(messages: Sequence[Any]) -> list[BaseMessage]:
    """Stored turns (or history dicts) as the prompt templates' chat history."""
    out: list[BaseMessage] = []
    for m in messages:
        role, content = (m["role"], m["content"]) if isinstance(m, dict) else (m.role, m.content)
        if role == "user":
            out.append(HumanMessage(content))
        elif role == "assistant":
            out.append(AIMessage(content))
    return out


class Conversation:
    """The pipeline over real (or, in unit tests, fake) parts: a memory, a router, a store, a generator."""

    def __init__(
        self,
        memory: Memory,
        generator: Generator,
        router: Router | None = None,
        store: Store | None = None,
        *,
        default_collection: str | None = None,
        min_score: float = DEFAULT_MIN_SCORE,
        sources_k: int = DEFAULT_SOURCES,
        search_mode: str = "hybrid",
        max_new_tokens: int = 200,
        temperature: float | None = None,
        max_message_chars: int | None = None,
        top_k: int | None = None,
        answerer: KnowledgeAnswerer | None = None,
        promotions: PromotedAdapters | None = None,
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
        self.max_message_chars = max_message_chars
        self.top_k = max(top_k or sources_k, 1)  # passages retrieved; the answerer picks which to show
        self.answerer = answerer
        self.promotions = promotions  # which adapter serves a route, as `ragtune adapters promote` last set it

    def with_router(self, router: Router | None) -> Conversation:
        """The same pipeline (memory, generator, store, answerer, limits) deciding routes with another router."""
        other = copy.copy(self)
        other.router = router
        return other

    # --- the turn ------------------------------------------------------------------------------
    def stream(
        self,
        session_id: str,
        owner: str,
        message: str,
        options: TurnOptions | None = None,
    ) -> Iterator[Event]:
        """Run one turn, yielding events; the turn is persisted when the answer is complete.

        A client that sends its own conversation (the OpenAI API) has it stored as the session's turns first.
        """
        turn = Turn(session_id, owner, clean_message(message, self.max_message_chars), options or TurnOptions())
        started = time.perf_counter()
        self._prepare(turn)
        yield turn.start_event()
        generate_started = time.perf_counter()
        guard = RepetitionGuard()
        for piece in self._guarded(turn, self._answer_pieces(turn), guard):
            turn.timings.setdefault("ttft_s", time.perf_counter() - started)
            yield Token(piece)
        turn.timings["generate_s"] = time.perf_counter() - generate_started
        turn.timings["total_s"] = time.perf_counter() - started
        if turn.best_score is not None:
            turn.timings["best_score"] = turn.best_score
        turn.timings = {k: round(float(v), 4) for k, v in turn.timings.items()}
        answer = WITHHELD if turn.withheld else guard.text.strip()
        number, notice = self._save(turn, answer)
        done = turn.done_event(number, answer, notice, self._usage(turn, answer), self._finish_reason(turn, guard))
        log_turn(done)  # the operator's one line per turn (API, chat UI and terminal alike)
        yield done

    def ask(self, session_id: str, owner: str, message: str, options: TurnOptions | None = None) -> TurnDone:
        """The whole turn at once (CLI scripts, tests)."""
        return final_event(self.stream(session_id, owner, message, options))

    def _prepare(self, turn: Turn) -> None:
        """Everything before the first token: memory, probe search, route, retrieval, prompt."""
        self._load_memory(turn)
        self._probe(turn)
        self._route(turn)
        if turn.route.retrieve:
            self._retrieve(turn)
        if turn.route.action == "knowledge":
            self._knowledge_prompt(turn)
        else:
            self._skill_prompt(turn)

    # --- the steps -----------------------------------------------------------------------------
    def _load_memory(self, turn: Turn) -> None:
        started = time.perf_counter()
        try:
            context = self.memory.context(turn.session_id, turn.owner)
            turn.summary, turn.recent = context.summary, context.messages
        except Exception as exc:
            self._database_down(turn, exc)
        turn.timings["memory_ms"] = (time.perf_counter() - started) * 1000

    def _probe(self, turn: Turn) -> None:
        """Search the message as written, so the router can weigh how well the documents match it.

        The raw message, not the condensed query: "make that shorter" must not borrow the previous question's
        strong match. The hits are reused when the condensed query turns out to be the same text.
        """
        options = turn.options
        if self.store is None or self.router is None or options.adapter or options.route or turn.db_down:
            return
        started = time.perf_counter()
        collection = self._collection(options)
        vector = self._shared_message_vector(turn.message)
        try:
            hits = self.store.search(
                turn.message, collection=collection, k=self.top_k, mode=self.search_mode, embedding=vector
            )
        except Exception as exc:
            self._database_down(turn, exc)
            return
        turn.message_vector = vector
        turn.probe = Probe(turn.message, collection, hits)
        turn.retrieval_strength = max((float(h.score) for h in hits), default=0.0)
        turn.timings["probe_ms"] = (time.perf_counter() - started) * 1000

    def _shared_message_vector(self, message: str) -> Any:
        """Embed the message once for the probe search and the router when both use the same embedder (the app's
        case); None lets each embed it itself."""
        embedder = getattr(self.router, "embedder", None)
        if embedder is None or embedder is not getattr(self.store, "embedder", None):
            return None
        return self.router.embed(message)

    def _route(self, turn: Turn) -> None:
        started = time.perf_counter()
        choice = self._forced_choice(turn.options) or self._router_choice(turn)
        if self.promotions is not None and not turn.options.adapter:  # an adapter the caller named wins
            serving = self.promotions.resolve(choice.route, choice.adapter, self.adapters())
            if serving.note:
                log.warning("route %s: %s", choice.route, serving.note)
                choice.reason += f" ({serving.note})"
            choice.adapter = serving.adapter
        if choice.adapter and choice.adapter not in self.adapters():
            log.warning(
                "route %s names adapter %r, which is not loaded: using the base model", choice.route, choice.adapter
            )
            choice.reason += f" (adapter {choice.adapter} not loaded: base model)"
            choice.adapter = None
        choice.retrieve = (choice.retrieve or choice.action == "knowledge") and self.store is not None
        turn.choice = choice
        if turn.db_down:
            self._degrade(turn)
        turn.timings["route_ms"] = (time.perf_counter() - started) * 1000

    def _forced_choice(self, options: TurnOptions) -> RouteChoice | None:
        """The choice the caller forced with an adapter or a route name; None leaves it to the router.

        A structured (JSON) answer is written by the model, so it goes to a skill route: a knowledge answer
        quotes the documents sentence by sentence and cannot take the shape of a schema.
        """
        structured = options.response_format is not None
        if options.adapter:
            if options.adapter not in self.adapters():
                names = ", ".join(sorted(self.adapters())) or "none"
                raise ValueError(f"adapter {options.adapter!r}: unknown (known: {names})")
            return RouteChoice.forced("skill", "skill", "adapter chosen by the user", adapter=options.adapter)
        if not options.route:
            return (
                RouteChoice.forced("skill", "skill", "structured output is written by the model")
                if structured
                else None
            )
        spec = self._route_spec(options.route)
        if structured and (spec.action if spec else options.route) == "knowledge":
            raise ValueError(
                f"route {options.route!r} answers by quoting the documents; response_format needs a skill route or auto"
            )
        if spec is None and options.route in ("knowledge", "skill"):
            return RouteChoice.forced(options.route, options.route, "route chosen by the user")
        if spec is None:
            raise ValueError(f"route {options.route!r}: unknown")
        return RouteChoice.forced(
            options.route,
            spec.action,
            "route chosen by the user",
            adapter=spec.adapter,
            collection=spec.collection,
            retrieve=spec.retrieve,
        )

    def _router_choice(self, turn: Turn) -> RouteChoice:
        if self.router is None:
            return RouteChoice.forced("knowledge", "knowledge", "no router configured", confidence=0.0, fallback=True)
        history = [m if isinstance(m, dict) else m.as_chat() for m in turn.recent]
        decision = self.router.decide(
            turn.message, history, retrieval_strength=turn.retrieval_strength, embedding=turn.message_vector
        )
        return RouteChoice.from_decision(decision)

    def _retrieve(self, turn: Turn) -> None:
        started = time.perf_counter()
        collection = self._collection(turn.options, turn.route.collection)
        query = condense_query(turn.message, turn.recent)
        probe = turn.probe
        if probe is not None and probe.query == query and probe.collection == collection:
            hits = probe.hits
        else:
            try:
                hits = self.store.search(query, collection=collection, k=self.top_k, mode=self.search_mode)
            except Exception as exc:
                self._database_down(turn, exc)
                self._degrade(turn)
                turn.timings["retrieve_ms"] = (time.perf_counter() - started) * 1000
                return
        turn.query, turn.hits = query, list(hits)
        turn.best_score = max((float(h.score) for h in hits), default=0.0)
        turn.not_found = turn.route.action == "knowledge" and turn.best_score < self.min_score
        if turn.route.action != "knowledge":  # a draft uses only passages that are about it: weak ones mislead it
            hits = [hit for hit in hits if float(hit.score) >= self.min_score]
            turn.hits = list(hits)
        if not turn.not_found:
            turn.sources = [public_source(n, hit) for n, hit in enumerate(hits[: self.sources_k], start=1)]
        turn.timings["retrieve_ms"] = (time.perf_counter() - started) * 1000

    def _knowledge_prompt(self, turn: Turn) -> None:
        from bot.conversation.prompts import format_sources

        if self.answerer is not None and not turn.not_found:
            self.answerer.prepare(turn, self.min_score, self._render)
        elif turn.sources:
            turn.prompt = self._render(
                knowledge_prompt, turn, sources=format_sources(turn.sources), question=turn.message
            )
        if turn.not_found or not turn.sources:
            turn.not_found, turn.sources, turn.prompt = True, [], []

    def _skill_prompt(self, turn: Turn) -> None:
        turn.not_found = False
        if turn.route.reworks_previous and self.answerer is not None and not turn.sources:
            turn.sources = previous_sources(turn.recent)  # keep the facts: the rework sees what the answer quoted
        turn.prompt = self._render(skill_prompt, turn, request=skill_request(turn.message, turn.sources))

    @staticmethod
    def _render(template: Any, turn: Turn, **values: str) -> list[dict[str, str]]:
        extra = summary_block(turn.summary) + instructions_block(turn.options.instructions)
        messages = template.invoke(
            {"summary": extra, "history": _history_messages(turn.recent), **values}
        ).to_messages()
        return to_chat_messages(messages)

    # --- the answer ----------------------------------------------------------------------------
    def _answer_pieces(self, turn: Turn) -> Iterator[str]:
        if turn.not_found:
            yield NOT_FOUND
        elif turn.options.response_format is not None:  # JSON is not prose: no quoting, no sentence checks
            yield from self._generate(turn)
        elif turn.route.action == "knowledge" and self.answerer is not None:
            yield from self.answerer.pieces(turn, lambda: self._generate(turn))
        elif turn.route.reworks_previous and turn.sources and self.answerer is not None:  # "make that shorter"
            yield from self.answerer.rework(turn, lambda: self._generate(turn))
        elif turn.sources and self.answerer is not None:  # a draft from documents: its specific claims held to them
            yield from self.answerer.verified(turn, self._generate(turn), claims_only=True)
        else:
            yield from self._generate(turn)

    def _generate(self, turn: Turn) -> Iterator[str]:
        options = turn.options
        max_new = options.max_new_tokens or self.max_new_tokens
        temperature = options.temperature if options.temperature is not None else self.temperature
        messages = self.generator.fit_messages(turn.prompt, max_new)
        extra = {"stop": options.stop} if options.stop else {}
        if options.top_p is not None:
            extra["top_p"] = options.top_p
        if options.response_format is not None:
            extra["response_format"] = options.response_format
        stream = self.generator.stream(
            messages, adapter=turn.route.adapter, max_new_tokens=max_new, temperature=temperature, **extra
        )
        turn.generation = getattr(stream, "stats", None)
        return stream

    def _usage(self, turn: Turn, answer: str) -> dict[str, int]:
        """Tokens the model read and wrote; an answer it did not generate (a quote, "not found") counts its own
        tokens as completion and no prompt."""
        stats = turn.generation
        if stats is not None:
            prompt, completion = int(stats.prompt_tokens), int(stats.completion_tokens)
        else:
            prompt, completion = 0, self._count_tokens(answer)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _count_tokens(self, text: str) -> int:
        try:
            return int(self.generator.count_tokens(text)) if text else 0
        except Exception:  # a remote server that cannot count: a word count is the honest fallback
            return len(text.split())

    @staticmethod
    def _finish_reason(turn: Turn, guard: RepetitionGuard) -> str:
        """'length' when the token limit cut the answer; 'stop' when it ended, or the pipeline ended it."""
        stats = turn.generation
        if stats is None or guard.stopped or turn.withheld:
            return "stop"
        return "length" if stats.finish_reason == "length" else "stop"

    @staticmethod
    def _guarded(turn: Turn, pieces: Iterator[str], repetition: RepetitionGuard) -> Iterator[str]:
        """The answer's pieces, cut where it starts to echo a system prompt or to repeat itself."""
        try:
            for piece in pieces:
                if leaks_system_prompt(repetition.text + piece):  # an injected "reveal your prompt" worked
                    log.warning("session %s: answer began to echo the system prompt; withheld", turn.session_id)
                    turn.withheld = True
                    yield "\n" + WITHHELD
                    return
                shown = repetition.feed(piece)
                if shown:
                    yield shown
                if repetition.stopped:
                    log.info("session %s: the answer started to repeat itself; cut", turn.session_id)
                    return
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()

    # --- storing -------------------------------------------------------------------------------
    def _save(self, turn: Turn, answer: str) -> tuple[int, str | None]:
        """Store the turn; with the database down, hold it for later (turn 0) and say so in the notice."""
        record = turn.record()
        if not turn.db_down:
            try:
                return self.memory.save_turn(turn.session_id, turn.owner, turn.message, answer, **record), None
            except Exception as exc:
                self._database_down(turn, exc)
        defer = getattr(self.memory, "defer_turn", None)
        kept = defer is not None and defer(turn.session_id, turn.owner, turn.message, answer, **record)
        return 0, f"{turn.notice or DB_NOTICE}; {DB_SAVE_LATER if kept else DB_NOT_SAVED}"

    # --- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _database_down(turn: Turn, exc: Exception) -> None:
        """Note an unreachable database for the rest of the turn; any other error is re-raised."""
        if not is_unavailable(exc):
            raise exc
        log.warning("database unavailable, answering without memory or documents: %s", exc)
        turn.db_down = True

    @staticmethod
    def _degrade(turn: Turn) -> None:
        """No database: answer on the skill path (same adapter, if any) and say so first in the reason."""
        c = turn.route
        if c.action == "knowledge":
            c.route, c.action = "skill", "skill"
        c.retrieve, c.confidence, c.fallback = False, 0.0, True
        c.reason = f"{DB_NOTICE}. {c.reason or ''}".strip()
        turn.sources, turn.not_found, turn.notice = [], False, DB_NOTICE

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

    def adapters(self) -> list[str]:
        try:
            return list(self.generator.adapters())
        except Exception:  # a remote generator may not list adapters
            return []

    def route_adapters(self) -> dict[str, Serving]:
        """Route → the adapter serving it now (None: the base model) and whether it was promoted or configured:
        what `/healthz`, `/v1/models` and the UI show. A configured adapter that is not loaded serves as the base."""
        loaded = self.adapters()
        serving: dict[str, Serving] = {}
        for spec in self.routes():
            configured = getattr(spec, "adapter", None)
            now = self.promotions.resolve(spec.name, configured, loaded) if self.promotions else None
            now = now or Serving(configured, "configured")
            if now.adapter is not None and now.adapter not in loaded:
                now = Serving(None, now.source, f"adapter {now.adapter} not loaded: base model")
            serving[spec.name] = now
        return serving

    def routes(self) -> list[Any]:
        return list(getattr(self.router, "routes", None) or [])

    def _route_spec(self, name: str) -> Any:
        return next((spec for spec in self.routes() if getattr(spec, "name", None) == name), None)
