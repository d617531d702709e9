"""End-to-end answer evaluation: every question through the real pipeline in each mode, scored against gold.

Modes (each a `Conversation.ask` on the product's own services, one fresh session per question and mode):
- base:   the skill path without an adapter (the bare model, no documents);
- rag:    the knowledge path on the data set's collection;
- lora:   the skill path with the adapter;
- routed: no forced route: the router decides. Its skill route is bound to the adapter (as a user would in a
          routes file), so "routed" means "rag or lora, chosen per message".
Each answer is scored against gold (F1, containment), its inline citations, and sentence by sentence against the
passages it cites (bot.answer.support). Questions of another data set (`--unanswerable`) are asked in the modes
that retrieve and scored only on whether they abstain.
Decoding is greedy, so when the router's choice gives exactly the prompt of a mode already run for this question
(same route, adapter and retrieved passages), the pipeline is stopped after its routing step (the `TurnStart`
event) and that mode's answer is reused; latency is then the routing time plus that mode's generation time.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bot.answer.support import DEFAULT_SUPPORT_THRESHOLD, Passage, SupportChecker, cited_numbers
from bot.evaluate.metrics import bootstrap_ci, contains_answer, token_f1
from knowledge.evaluation import percentile

log = logging.getLogger(__name__)

MODES = ("base", "rag", "lora", "routed")
RETRIEVING = ("rag", "routed")  # the modes that search the corpus: unanswerable questions are asked in these
OWNER = "ragtune-eval"
DEFAULT_MAX_NEW_TOKENS = 24  # gold answers in extractive QA are short (COVID-QA: median 10 words)
# Roughly the on-demand hourly price of a 2-vCPU general-purpose cloud VM (the machine the default model targets).
DEFAULT_PRICE_PER_HOUR = 0.10


@dataclass
class QAItem:
    id: str
    question: str
    answer: str  # the gold answer F1 and containment compare with ("" for an unanswerable question)
    gold_passages: set[str] = field(default_factory=set)
    label: str | None = None  # PubMedQA's final_decision (yes/no/maybe), kept beside the long answer
    unanswerable: bool = False  # asked against a corpus that does not hold the answer: abstaining is right


@dataclass
class QAConfig:
    modes: Sequence[str] = MODES
    adapter: str | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    seed: int = 0
    price_per_hour: float = DEFAULT_PRICE_PER_HOUR
    support_threshold: float = DEFAULT_SUPPORT_THRESHOLD


ID_KEYS = ("_id", "pubid", "id")
LAYOUTS = "{_id, question, answer}, or PubMedQA's {pubid or _id, question, final_decision, long_answer}"


def _jsonl(path: Path):
    """(line number, object) for each non-blank line; a line that is not a JSON object stops with its number."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.args[0].split(':')[0]})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: need a JSON object, got {type(record).__name__}")
            yield number, record


def _qa_record(path: Path, number: int, record: dict) -> QAItem:
    """One answers.jsonl line in either layout. PubMedQA: the gold answer is `long_answer` (what F1 and containment
    compare with) and `final_decision` is kept as the label; without a long answer the decision is the gold."""
    qid = next((record[k] for k in ID_KEYS if record.get(k) not in (None, "")), None)
    if qid is None:
        raise ValueError(f"{path}:{number}: missing key '_id' (or 'pubid'); answers.jsonl lines are {LAYOUTS}")
    if "question" not in record:
        raise ValueError(f"{path}:{number}: missing key 'question'; answers.jsonl lines are {LAYOUTS}")
    label = record.get("final_decision")
    gold = record.get("answer", record.get("long_answer", label))
    if gold is None:
        raise ValueError(
            f"{path}:{number}: missing key 'answer' (or 'long_answer'/'final_decision'); "
            f"answers.jsonl lines are {LAYOUTS}"
        )
    if isinstance(gold, list):  # some exports keep the long answer as a list of sentences
        gold = " ".join(map(str, gold))
    return QAItem(
        str(qid),
        str(record["question"]).strip(),
        str(gold).strip(),
        label=str(label).strip().lower() if label is not None else None,
    )


def read_answers(directory: Path) -> list[QAItem]:
    """The questions of DIR/answers.jsonl in file order (no qrels); a bad line stops with file, line and key."""
    path = Path(directory) / "answers.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a QA folder holds answers.jsonl ({LAYOUTS})")
    items = [_qa_record(path, number, record) for number, record in _jsonl(path)]
    items = [item for item in items if item.question and item.answer]
    if not items:
        raise ValueError(f"{path}: no question with an answer")
    return items


def read_unanswerable(file: Path, limit: int | None = None, seed: int = 0) -> list[QAItem]:
    """Questions the corpus cannot answer, from a .jsonl of {"question"} or {"text"} lines. A router-style file
    ({"text", "route"}) keeps only route == "knowledge" (fact questions; the rest is small talk and tasks). With
    `limit`, a seeded sample (file order kept), so the data set's first topic does not fill it."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing (--unanswerable needs a .jsonl of questions)")
    items = []
    for number, record in _jsonl(file):
        text = record.get("question", record.get("text"))
        if text is None:
            raise ValueError(f"{file}:{number}: missing key 'question' (or 'text')")
        if "route" in record and record["route"] != "knowledge":
            continue
        qid = next((record[k] for k in ID_KEYS if record.get(k) not in (None, "")), f"line{number}")
        if str(text).strip():
            items.append(QAItem(f"unanswerable:{qid}", str(text).strip(), "", unanswerable=True))
    if not items:
        raise ValueError(f"{file}: no question (a router file needs lines with route 'knowledge')")
    if limit is not None and limit < len(items):
        keep = set(random.Random(seed).sample(range(len(items)), limit))
        items = [item for i, item in enumerate(items) if i in keep]
    return items


def validate_qa(directory: Path, modes: Sequence[str], unanswerable: Path | None = None) -> None:
    """Everything a QA run reads, checked before any model loads (a bad folder used to fail after minutes)."""
    directory = Path(directory)
    read_answers(directory)
    if set(modes) & set(RETRIEVING) and not (directory / "corpus.jsonl").is_file():
        raise FileNotFoundError(f"{directory / 'corpus.jsonl'} is missing: the rag and routed modes need a corpus")
    if unanswerable is not None:
        read_unanswerable(unanswerable)


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
    items = read_answers(directory)[: limit or None]
    for item in items:
        item.gold_passages = qrels.get(item.id, set())
    return items


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
    cites_shown: bool | None = None  # at least one inline [n] naming a shown source (None: nothing was shown)
    sentences: int | None = None  # answer sentences checked against the cited passages (knowledge answers)
    unsupported: int | None = None  # of those, how many the support check rejected
    problems: list[str] = field(default_factory=list)  # "sentence: why", for the unsupported ones (first few)
    citations: list[dict] = field(default_factory=list)  # the cited sources: n, record id, snippet
    unanswerable: bool = False
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
        self.checker = SupportChecker(services.embedder, config.support_threshold)
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
            id=item.id,
            mode=mode,
            answer=done.answer,
            route=done.route,
            action=done.action,
            adapter=done.adapter,
            not_found=done.not_found,
            sources=sources,
            cited=self._cited(done.answer, done.sources),
            latency_s=elapsed,
            generate_s=float(done.timings.get("generate_s", 0.0)),
            confidence=float(done.confidence),
            tokens=0 if done.not_found else self._tokens(done.answer),
        )
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
    def _numbered(sources: list[dict]) -> list[tuple[int, dict]]:
        """(n, source) as the answer's [n] markers name them: a source's own `n`, else its 1-based position."""
        return [(int(s.get("n") or position), s) for position, s in enumerate(sources, start=1)]

    @classmethod
    def _cited(cls, answer: str, sources: list[dict]) -> list[str]:
        """Record ids of the sources the answer cites inline as [n]. Only inline citations count: listing sources
        beside an answer is not citing them (counting every shown source made "gold cited" equal "gold retrieved")."""
        numbers = cited_numbers(answer)
        return [record_id(s) for n, s in cls._numbered(sources) if n in numbers]

    def _score(self, item: QAItem, answer: Answer, sources: list[dict]) -> None:
        answered = not answer.not_found
        answer.unanswerable = item.unanswerable
        answer.f1 = token_f1(answer.answer, item.answer) if answered and not item.unanswerable else 0.0
        answer.contains = answered and not item.unanswerable and contains_answer(answer.answer, item.answer)
        answer.chunk_ids = [s.get("chunk_id") for s in sources]
        numbers = cited_numbers(answer.answer)
        cited = [(n, s) for n, s in self._numbered(sources) if n in numbers]
        answer.citations = [{"n": n, "id": record_id(s), "snippet": s.get("snippet", "")} for n, s in cited]
        if sources and answered:
            answer.cites_shown = bool(cited)
        if answer.action == "knowledge" or sources:
            if item.gold_passages:
                answer.gold_retrieved = bool(item.gold_passages & set(answer.sources))
                answer.gold_cited = bool(item.gold_passages & set(answer.cited))
            if answered and not item.unanswerable:  # only what the answer cites inline supports it
                passages = [Passage(str(n), self._text(s["chunk_id"])) for n, s in cited if s.get("chunk_id")]
                results = self.checker.check_answer(answer.answer, passages)
                answer.sentences = len(results)
                answer.unsupported = sum(not r.supported for r in results)
                answer.problems = [f"{r.sentence} ({'; '.join(r.problems)})" for r in results if not r.supported][:4]

    def _text(self, chunk_id: int) -> str:
        """The cited chunk's whole text (the turn record keeps only a short snippet): a citation names the chunk."""
        if chunk_id not in self._chunk_text:
            with self.services.db.pool.connection() as conn:
                row = conn.execute("SELECT text FROM chunks WHERE id = %s", (chunk_id,)).fetchone()
            self._chunk_text[chunk_id] = row[0] if row else ""
        return self._chunk_text[chunk_id]

    # --- the run -------------------------------------------------------------------------------
    def run(self, items: Sequence[QAItem], progress: bool = True, modes: Sequence[str] | None = None) -> list[Answer]:
        """Every item in every mode (or in `modes`), routed last: it may reuse the answer of another mode."""
        from tqdm.auto import tqdm

        wanted = self.config.modes if modes is None else modes
        order = [m for m in MODES if m in self.config.modes and m in wanted]
        answers: list[Answer] = []
        desc = "unanswerable" if items and items[0].unanswerable else "qa"
        bar = tqdm(total=len(items) * len(order), desc=desc, unit="answer", disable=not progress)
        for item in items:
            done: dict[str, Answer] = {}
            for mode in order:
                bar.set_postfix_str(f"{item.id} {mode}")
                done[mode] = self.ask(item, mode, done)
                answers.append(done[mode])
                bar.update(1)
        bar.close()
        return answers

    def run_unanswerable(self, items: Sequence[QAItem], progress: bool = True) -> list[Answer]:
        """The unanswerable questions in the modes that search the corpus (the others never abstain)."""
        return self.run(items, progress, modes=RETRIEVING)


def _share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def summarise(
    answers: Sequence[Answer], config: QAConfig, unanswerable: Sequence[Answer] = ()
) -> dict[str, dict[str, Any]]:
    """Per-mode means with bootstrap CIs, latency percentiles, tokens and cost per 1,000 questions, the support
    and citation figures of knowledge answers, and abstention on `unanswerable` answers (kept out of F1)."""
    out: dict[str, dict[str, Any]] = {}
    for mode in [m for m in MODES if any(a.mode == m for a in answers)]:
        rows = [a for a in answers if a.mode == mode and not a.unanswerable]
        f1 = bootstrap_ci([a.f1 for a in rows], seed=config.seed)
        contains = bootstrap_ci([float(a.contains) for a in rows], seed=config.seed)
        latencies = [a.latency_s for a in rows]
        checked = [a for a in rows if a.sentences is not None]
        sentences = sum(a.sentences or 0 for a in checked)
        unsupported = sum(a.unsupported or 0 for a in checked)
        retrieved = [a.gold_retrieved for a in rows if a.gold_retrieved is not None]
        cited = [a.gold_cited for a in rows if a.gold_cited is not None]
        outside = [a for a in unanswerable if a.mode == mode]
        abstention = sum(a.not_found for a in rows) / len(rows)
        compute_s = sum(latencies)
        out[mode] = {
            "n": len(rows),
            "f1": f1[0],
            "f1_ci": [f1[1], f1[2]],
            "contains": contains[0],
            "contains_ci": [contains[1], contains[2]],
            "gold_retrieved": _share(retrieved),
            "gold_cited": _share(cited),
            "citation_rate": _share([a.cites_shown for a in rows if a.cites_shown is not None]),
            "abstention": abstention,
            "false_abstention": abstention if mode in RETRIEVING else None,
            "abstention_unanswerable": _share([a.not_found for a in outside]),
            "unanswerable_n": len(outside),
            "unsupported_rate": unsupported / sentences if sentences else None,
            "support_sentences": sentences,
            "support_answers": len(checked),
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
    return base.with_router(router)
