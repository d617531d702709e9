"""End-to-end answer evaluation: every question through the real pipeline in each mode, scored against gold.

Modes (each a `Conversation.ask` on the product's own services, one fresh session per question and mode):
- base:   the skill path without an adapter (the bare model, no documents);
- rag:    the knowledge path on the data set's collection;
- lora:   the skill path with the adapter;
- routed: no forced route: the router decides. Its skill route is bound to the adapter (as a user would in a
          routes file), so "routed" means "rag or lora, chosen per message".
Decoding is greedy, so when the router's choice gives exactly the prompt of a mode already run for this question
(same route, adapter and retrieved passages), the pipeline is stopped after its routing step (the `TurnStart`
event) and that mode's answer is reused; latency is then the routing time plus that mode's generation time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bot.evaluate.faithfulness import FaithfulnessScorer, cited_numbers
from bot.evaluate.metrics import bootstrap_ci, contains_answer, token_f1
from knowledge.evaluation import percentile

log = logging.getLogger(__name__)

MODES = ("base", "rag", "lora", "routed")
OWNER = "ragtune-eval"
DEFAULT_MAX_NEW_TOKENS = 24  # gold answers in extractive QA are short (COVID-QA: median 10 words)
# Roughly the on-demand hourly price of a 2-vCPU general-purpose cloud VM (the machine the default model targets).
DEFAULT_PRICE_PER_HOUR = 0.10


@dataclass
class QAItem:
    id: str
    question: str
    answer: str
    gold_passages: set[str] = field(default_factory=set)


@dataclass
class QAConfig:
    modes: Sequence[str] = MODES
    adapter: str | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    seed: int = 0
    price_per_hour: float = DEFAULT_PRICE_PER_HOUR
    faithfulness_threshold: float = 0.6


def read_answers(directory: Path) -> list[tuple[str, str, str]]:
    """(id, question, answer) rows of DIR/answers.jsonl, in file order; bad lines name their line number."""
    path = Path(directory) / "answers.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a QA folder holds answers.jsonl ({{_id, question, answer}})")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                rows.append((str(record["_id"]), str(record["question"]).strip(), str(record["answer"]).strip()))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: need a JSON object with _id, question, answer ({exc})") from None
    rows = [r for r in rows if r[1] and r[2]]
    if not rows:
        raise ValueError(f"{path}: no question with an answer")
    return rows


def read_qrels(directory: Path, split: str = "test") -> dict[str, set[str]]:
    """Gold passages per question from qrels/<split>.tsv (empty when the folder has none)."""
    path = Path(directory) / "qrels" / f"{split}.tsv"
    gold: dict[str, set[str]] = {}
    if not path.is_file():
        return gold
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0] != "query-id" and parts[2].strip() not in ("", "0"):
            gold.setdefault(parts[0], set()).add(parts[1])
    return gold


def load_qa(directory: Path, limit: int | None = None, split: str = "test") -> list[QAItem]:
    """The first `limit` questions of answers.jsonl (file order, so a limit is the same subset every time)."""
    qrels = read_qrels(directory, split)
    rows = read_answers(directory)[: limit or None]
    return [QAItem(qid, q, a, qrels.get(qid, set())) for qid, q, a in rows]


def record_id(source: dict[str, Any]) -> str:
    """The corpus `_id` of a cited source: record loaders store sources as `<file>#<record id>`."""
    return str(source.get("source", "")).rsplit("#", 1)[-1]


@dataclass
class Answer:
    """One question answered in one mode."""

    id: str
    mode: str
    answer: str
    route: str
    action: str
    adapter: str | None
    not_found: bool
    sources: list[str]
    cited: list[str]
    latency_s: float
    generate_s: float
    tokens: int
    f1: float = 0.0
    contains: bool = False
    gold_retrieved: bool | None = None
    gold_cited: bool | None = None
    faithfulness: float | None = None
    reused_from: str | None = None
    confidence: float | None = None
    chunk_ids: list = field(default_factory=list)


class QARunner:
    """Runs the modes over the items with the product's services; `routed_conversation` binds skill to the adapter."""

    def __init__(self, services: Any, collection: str, config: QAConfig, routed_conversation: Any = None) -> None:
        unknown = [m for m in config.modes if m not in MODES]
        if unknown:
            raise ValueError(f"mode {unknown[0]!r}: unknown (choose from {', '.join(MODES)})")
        if "lora" in config.modes and not config.adapter:
            raise ValueError("mode 'lora' needs an adapter (--adapter NAME or --adapter auto)")
        self.services = services
        self.collection = collection
        self.config = config
        self.routed = routed_conversation or services.conversation
        self.scorer = FaithfulnessScorer(services.embedder, config.faithfulness_threshold)
        self._chunk_text: dict[int, str] = {}

    # --- one answer ----------------------------------------------------------------------------
    def _options(self, mode: str) -> Any:
        from bot.conversation import TurnOptions

        common = {"max_new_tokens": self.config.max_new_tokens, "temperature": 0.0}
        if mode == "base":
            return TurnOptions(route="skill", **common)
        if mode == "rag":
            return TurnOptions(route="knowledge", collection=self.collection, **common)
        if mode == "lora":
            return TurnOptions(adapter=self.config.adapter, **common)
        return TurnOptions(collection=self.collection, **common)

    def _tokens(self, text: str) -> int:
        count = getattr(self.services.generator, "count_tokens", None)
        return int(count(text)) if count and text else len(text.split())

    def ask(self, item: QAItem, mode: str, done_modes: dict[str, Answer]) -> Answer:
        conversation = self.routed if mode == "routed" else self.services.conversation
        session = self.services.memory.create_session(OWNER)
        try:
            return self._ask(conversation, session, item, mode, done_modes)
        finally:  # scratch sessions: an evaluation must not leave hundreds of conversations in the memory
            self.services.memory.delete_session(session, OWNER)

    def _ask(self, conversation: Any, session: str, item: QAItem, mode: str, done_modes: dict[str, Answer]) -> Answer:
        from bot.conversation import TurnDone, TurnStart

        started = time.perf_counter()
        events = conversation.stream(session, OWNER, item.question, self._options(mode))
        start: TurnStart | None = None
        done: TurnDone | None = None
        for event in events:
            if isinstance(event, TurnStart):
                start = event
                reuse = self._same_prompt(event, done_modes) if mode == "routed" else None
                if reuse is not None:
                    events.close()  # routing is done; greedy decoding would repeat `reuse` word for word
                    routing_s = time.perf_counter() - started
                    return self._reused(item, event, reuse, routing_s)
            elif isinstance(event, TurnDone):
                done = event
        assert done is not None and start is not None
        elapsed = time.perf_counter() - started
        sources = [record_id(s) for s in done.sources]
        answer = Answer(
            id=item.id, mode=mode, answer=done.answer, route=done.route, action=done.action, adapter=done.adapter,
            not_found=done.not_found, sources=sources, cited=self._cited(done.answer, sources), latency_s=elapsed,
            generate_s=float(done.timings.get("generate_s", 0.0)), confidence=float(done.confidence),
            tokens=0 if done.not_found else self._tokens(done.answer),
        )  # fmt: skip
        self._score(item, answer, done.sources)
        return answer

    def _same_prompt(self, start: Any, done_modes: dict[str, Answer]) -> Answer | None:
        chunk_ids = [s.get("chunk_id") for s in start.sources]
        for previous in done_modes.values():
            if previous.reused_from or previous.action != start.action or previous.adapter != start.adapter:
                continue
            if previous.not_found != start.not_found:
                continue
            if previous.chunk_ids == chunk_ids:
                return previous
        return None

    def _reused(self, item: QAItem, start: Any, previous: Answer, routing_s: float) -> Answer:
        answer = Answer(**{k: v for k, v in asdict(previous).items() if k in Answer.__dataclass_fields__})
        answer.mode, answer.route, answer.reused_from = "routed", start.route, previous.mode
        answer.confidence = float(start.confidence)
        answer.latency_s = routing_s + previous.generate_s
        return answer

    @staticmethod
    def _cited(answer: str, sources: list[str]) -> list[str]:
        """Sources the answer cites as [n]; when it cites none, every source shown with it (the UI lists them)."""
        numbers = cited_numbers(answer)
        picked = [s for n, s in enumerate(sources, start=1) if n in numbers]
        return picked if numbers else list(sources)

    def _score(self, item: QAItem, answer: Answer, sources: list[dict]) -> None:
        answer.f1 = 0.0 if answer.not_found else token_f1(answer.answer, item.answer)
        answer.contains = (not answer.not_found) and contains_answer(answer.answer, item.answer)
        answer.chunk_ids = [s.get("chunk_id") for s in sources]
        if answer.action == "knowledge" or sources:
            if item.gold_passages:
                answer.gold_retrieved = bool(item.gold_passages & set(answer.sources))
                answer.gold_cited = bool(item.gold_passages & set(answer.cited))
            cited_ids = {s.get("chunk_id") for n, s in enumerate(sources, 1) if record_id(s) in answer.cited}
            passages = [(str(cid), self._text(cid)) for cid in cited_ids if cid is not None]
            support = None if answer.not_found else self.scorer.score(answer.answer, passages)
            answer.faithfulness = None if support is None else support.fraction

    def _text(self, chunk_id: int) -> str:
        """The chunk's text as the prompt showed it (the turn record keeps only a short snippet)."""
        if chunk_id not in self._chunk_text:
            from bot.conversation.prompts import trim_snippet

            with self.services.db.pool.connection() as conn:
                row = conn.execute("SELECT text FROM chunks WHERE id = %s", (chunk_id,)).fetchone()
            self._chunk_text[chunk_id] = trim_snippet(row[0] if row else "")
        return self._chunk_text[chunk_id]

    # --- the run -------------------------------------------------------------------------------
    def run(self, items: Sequence[QAItem], progress: bool = True) -> list[Answer]:
        from tqdm.auto import tqdm

        order = [m for m in MODES if m in self.config.modes]  # routed last: it may reuse the others
        answers: list[Answer] = []
        bar = tqdm(total=len(items) * len(order), desc="qa", unit="answer", disable=not progress)
        for item in items:
            done: dict[str, Answer] = {}
            for mode in order:
                bar.set_postfix_str(f"{item.id} {mode}")
                done[mode] = self.ask(item, mode, done)
                answers.append(done[mode])
                bar.update(1)
        bar.close()
        return answers


def summarise(answers: Sequence[Answer], config: QAConfig) -> dict[str, dict[str, Any]]:
    """Per-mode means with bootstrap CIs, latency percentiles, tokens and cost per 1,000 questions."""
    out: dict[str, dict[str, Any]] = {}
    for mode in [m for m in MODES if any(a.mode == m for a in answers)]:
        rows = [a for a in answers if a.mode == mode]
        f1 = bootstrap_ci([a.f1 for a in rows], seed=config.seed)
        contains = bootstrap_ci([float(a.contains) for a in rows], seed=config.seed)
        latencies = [a.latency_s for a in rows]
        faith = [a.faithfulness for a in rows if a.faithfulness is not None]
        retrieved = [a.gold_retrieved for a in rows if a.gold_retrieved is not None]
        cited = [a.gold_cited for a in rows if a.gold_cited is not None]
        compute_s = sum(latencies)
        out[mode] = {
            "n": len(rows),
            "f1": f1[0],
            "f1_ci": [f1[1], f1[2]],
            "contains": contains[0],
            "contains_ci": [contains[1], contains[2]],
            "gold_retrieved": sum(retrieved) / len(retrieved) if retrieved else None,
            "gold_cited": sum(cited) / len(cited) if cited else None,
            "abstention": sum(a.not_found for a in rows) / len(rows),
            "faithfulness": sum(faith) / len(faith) if faith else None,
            "faithfulness_n": len(faith),
            "latency_p50_s": percentile(latencies, 50),
            "latency_p95_s": percentile(latencies, 95),
            "latency_mean_s": compute_s / len(rows),
            "tokens_mean": sum(a.tokens for a in rows) / len(rows),
            "compute_s": compute_s,
            "cost_per_1000": compute_s / len(rows) * 1000 / 3600 * config.price_per_hour,
            "reused": sum(1 for a in rows if a.reused_from),
            "routes": _count(a.route for a in rows) if mode == "routed" else None,
        }
    return out


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def answers_json(answers: Sequence[Answer]) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(a).items() if k != "chunk_ids"} for a in answers]


def routed_conversation(services: Any, adapter: str | None) -> Any:
    """The product's pipeline with its router's adapter-less skill routes bound to `adapter` (None: unchanged)."""
    if not adapter:
        return services.conversation
    from dataclasses import replace

    from bot.conversation import Conversation
    from router import Router, classifier_location, load_routes

    settings, base = services.settings, services.conversation
    routes = [
        replace(r, adapter=adapter) if r.action == "skill" and not r.adapter else r
        for r in load_routes(settings.routes_file)
    ]
    router = Router(
        routes,
        services.embedder,
        known_adapters=base.adapters(),
        default_route=settings.router_default_route,
        min_confidence=settings.router_min_confidence,
        classifier_path=classifier_location(settings.state_dir),
    )
    return Conversation(
        services.memory, services.generator, router, services.store, min_score=base.min_score,
        sources_k=base.sources_k, search_mode=base.search_mode, max_new_tokens=base.max_new_tokens,
        temperature=base.temperature,
    )  # fmt: skip
