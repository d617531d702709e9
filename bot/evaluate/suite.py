"""Assemble the parts of a report: QA on an answers.jsonl folder, retrieval on a BEIR folder, router on labelled
messages. Each part is a plain dict, so `eval qa`, `eval all` and CI read the same JSON."""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import random
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.evaluate.qa import (
    MODES,
    RETRIEVING,
    Answer,
    QAConfig,
    QAItem,
    QARunner,
    answers_json,
    load_qa,
    read_answers,
    read_unanswerable,
    routed_conversation,
    summarise,
)
from bot.evaluate.report import qa_chart
from bot.evaluate.verdict import decide

log = logging.getLogger(__name__)

SAMPLES_PER_MODE = 8  # answers shown beside their gold in the HTML, a seeded sample (not picked by hand)
UNANSWERABLE_SAMPLES = 3
AUTO_TRAIN_ROWS = 320  # held-out pairs `--adapter auto` trains on (40 steps of 8 = one pass), the file's last ones
MIN_AUTO_ROWS = 4


def collection_for(directory: Path) -> str:
    """The scratch collection of a data folder (the same name `eval retrieval` uses, so both share one ingest)."""
    directory = Path(directory).resolve()
    slug = re.sub(r"[^A-Za-z0-9_-]", "-", directory.name)[:60]
    return f"eval-{slug}-{hashlib.sha256(str(directory).encode()).hexdigest()[:8]}"


def ingest_corpus(store: Any, directory: Path, collection: str) -> dict[str, Any]:
    """Ingest DIR/corpus.jsonl (unchanged records are skipped, so a rerun costs seconds)."""
    corpus = Path(directory) / "corpus.jsonl"
    if not corpus.is_file():
        raise FileNotFoundError(f"{corpus} is missing: the rag mode needs the folder's corpus.jsonl")
    report = store.ingest([corpus], collection, progress=True)
    if report.failed:
        raise ValueError(f"cannot ingest {corpus}: {report.failed[0][1]}")
    log.info("corpus: %s", report.summary())
    return {"chunks": report.chunks, "embedded": report.embedded, "seconds": round(report.seconds, 2)}


def machine() -> str:
    return f"{platform.machine()} · {os.cpu_count()} CPU cores · Python {platform.python_version()}"


def run_qa_part(
    services: Any,
    directory: Path,
    config: QAConfig,
    *,
    limit: int | None = None,
    collection: str | None = None,
    train_steps: int = 40,
    progress: bool = True,
    unanswerable: Path | None = None,
    unanswerable_limit: int | None = None,
) -> dict[str, Any]:
    """Ingest, find or train the adapter, answer every question in every mode, score, and explain. Questions from
    `unanswerable` (another data set's) are asked in the modes that retrieve and scored on abstention only."""
    started = time.perf_counter()
    directory = Path(directory)
    items = load_qa(directory, limit)
    outside = read_unanswerable(unanswerable, unanswerable_limit, config.seed) if unanswerable else []
    notes: list[str] = []
    setup: dict[str, Any] = {}
    modes = [m for m in MODES if m in config.modes]
    if ("rag" in modes or "routed" in modes) and collection is None:
        collection = collection_for(directory)
        setup["ingest"] = ingest_corpus(services.store, directory, collection)
    adapter = _adapter_for(services, directory, items, config, modes, train_steps, progress, notes, setup)
    if adapter is None and "lora" in modes:
        modes.remove("lora")
    run_config = QAConfig(
        modes=modes,
        adapter=adapter,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        price_per_hour=config.price_per_hour,
        support_threshold=config.support_threshold,
    )
    runner = QARunner(services, collection or "", run_config, routed_conversation(services, adapter))
    answers = runner.run(items, progress=progress)
    outside_modes = [m for m in modes if m in RETRIEVING]
    outside_answers = runner.run_unanswerable(outside, progress=progress) if outside and outside_modes else []
    notes += _method_notes(config, collection, runner, items, outside, unanswerable, outside_modes)
    return {
        "kind": "qa",
        "dataset": str(directory),
        "questions": len(items),
        "modes": modes,
        "adapter": adapter,
        "collection": collection,
        "max_new_tokens": config.max_new_tokens,
        "price_per_hour": config.price_per_hour,
        "support_method": runner.checker.describe(),
        "support_threshold": run_config.support_threshold,
        "unanswerable": {"file": str(unanswerable), "questions": len(outside), "modes": outside_modes}
        if outside
        else None,
        "setup": setup,
        "notes": notes,
        **_results(items, answers, outside, outside_answers, run_config, config.seed),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def _results(
    items: list[QAItem],
    answers: list[Answer],
    outside: list[QAItem],
    outside_answers: list[Answer],
    run_config: QAConfig,
    seed: int,
) -> dict[str, Any]:
    """The scored part of the report: per-mode summary, verdict, samples, chart and every answer."""
    summary = summarise(answers, run_config, outside_answers)
    return {
        "summary": summary,
        "verdict": decide(summary, answers, seed=seed),
        "samples": samples(items, answers, outside, outside_answers, seed),
        "chart": qa_chart(summary),
        "answers": answers_json(answers),
        "unanswerable_answers": answers_json(outside_answers),
    }


def _adapter_for(
    services: Any,
    directory: Path,
    items: list[QAItem],
    config: QAConfig,
    modes: list[str],
    train_steps: int,
    progress: bool,
    notes: list[str],
    setup: dict[str, Any],
) -> str | None:
    """The adapter the lora and routed modes use: the named one, or (`auto`) one trained on the folder's pairs
    that are not evaluated; None when there is none. What was done is added to `notes` and `setup`."""
    adapter = None if config.adapter in (None, "", "none") else config.adapter
    held_out: list[tuple[str, str]] = []
    if adapter == "auto" and not ({"lora", "routed"} & set(modes)):
        adapter = None  # nothing would use it: do not train
    if adapter == "auto":
        evaluated = {item.id for item in items}
        held_out = [(row.question, row.answer) for row in read_answers(directory) if row.id not in evaluated]
        held_out = held_out[-AUTO_TRAIN_ROWS:]  # from the end: the same adapter serves every --limit up to N-320
        if len(held_out) < MIN_AUTO_ROWS:
            adapter = None
            notes.append(
                f"lora: skipped: --adapter auto needs at least {MIN_AUTO_ROWS} question/answer pairs that are not "
                f"evaluated, and this folder has {len(held_out)} (lower --limit, or pass --adapter NAME)."
            )
    if adapter == "auto":
        return _trained_adapter(services, directory, held_out, config, train_steps, progress, notes, setup)
    if adapter is None and "lora" in modes and not notes:
        notes.append("lora: skipped, no adapter (pass --adapter NAME, or --adapter auto to train one).")
    elif adapter is not None:
        notes.append(f"lora: adapter {adapter}.")
    return adapter


def _trained_adapter(
    services: Any,
    directory: Path,
    held_out: list[tuple[str, str]],
    config: QAConfig,
    train_steps: int,
    progress: bool,
    notes: list[str],
    setup: dict[str, Any],
) -> str:
    from bot.evaluate.adapter import ensure_adapter

    auto = ensure_adapter(
        services.settings,
        services.db.pool,
        directory.resolve().name,
        held_out,
        steps=train_steps,
        seed=config.seed,
        progress=progress,
    )
    if auto.name not in services.conversation.adapters():
        services.generator.load_adapter(auto.name, auto.record.path)
    setup["adapter_training"] = {
        "name": auto.name,
        "trained_now": auto.trained,
        "rows": auto.rows,
        "seconds": round(auto.seconds, 1),
    }
    notes.append(
        f"lora: adapter {auto.name}, trained by `--adapter auto` on {auto.rows} question/answer pairs of this folder "
        f"that are not among the evaluated questions ({train_steps} steps"
        + (f", {auto.seconds:.0f}s, not counted in per-question cost)." if auto.trained else ", cached).")
    )
    return auto.name


def _method_notes(
    config: QAConfig,
    collection: str | None,
    runner: QARunner,
    items: list[QAItem],
    outside: list[QAItem],
    unanswerable: Path | None,
    outside_modes: list[str],
) -> list[str]:
    """How each figure of the report was measured, for the report's notes."""
    notes = [
        f"Answers are greedy and capped at {config.max_new_tokens} new tokens; every question runs in a fresh session.",
        "base = skill route without adapter; rag = knowledge route on collection "
        f"{collection}; lora = skill route with the adapter; routed = the router decides, with its skill route "
        "bound to the adapter. When routed picks exactly the prompt of a mode already run, that answer is reused "
        "(greedy decoding repeats it) and its latency is routing time + that mode's generation time.",
        f"Unsupported claims: answer sentences that fail the support check ({runner.checker.describe()}) against "
        "the passages the answer cites inline, over all sentences of non-abstained knowledge answers; an answer that "
        'cites nothing has no support, and "Yes."/"No." alone is no checkable claim.',
        "Citation rate: share of non-abstained answers shown with sources that cite at least one of them inline as "
        "[n]. Gold passage retrieved/cited: a qrels passage of the question is among the sources shown / cited "
        "inline (listing a source is not citing it).",
        f"Cost per 1,000 questions = mean measured wall time per question × ${config.price_per_hour:g}/hour "
        "(assumed price of the machine; set --price-per-hour).",
    ]
    if outside:
        notes.append(
            f"Unanswerable: {len(outside)} questions from {unanswerable} (not in this corpus), asked in "
            f"{', '.join(outside_modes) or 'no mode that retrieves'}; abstaining on them is right. False abstention = "
            "share of this folder's (answerable) questions answered 'not in the documents'. Neither counts in F1."
        )
    if any(item.label for item in items):
        notes.append(
            "Gold: PubMedQA layout, so F1 and containment compare with long_answer; final_decision is kept as label."
        )
    return notes


def samples(
    items: list[QAItem], answers: list[Answer], outside: list[QAItem], outside_answers: list[Answer], seed: int
) -> list[dict[str, Any]]:
    """A seeded sample of questions (the same ones in every mode), each answer beside its gold and cited snippets;
    then a few unanswerable questions in the modes that retrieve."""
    rng = random.Random(seed)
    chosen = set(rng.sample(range(len(items)), min(SAMPLES_PER_MODE, len(items))))
    picked = [item for i, item in enumerate(items) if i in chosen]
    chosen = set(rng.sample(range(len(outside)), min(UNANSWERABLE_SAMPLES, len(outside))))
    picked += [item for i, item in enumerate(outside) if i in chosen]
    by_key = {(a.id, a.mode): a for a in [*answers, *outside_answers]}
    out = []
    for mode in MODES:
        for item in picked:
            a = by_key.get((item.id, mode))
            if a is None:
                continue
            out.append(
                {
                    "id": item.id,
                    "mode": mode,
                    "question": item.question,
                    "answer": a.answer,
                    "gold": item.answer or "(not in this corpus: abstaining is right)",
                    "label": item.label,
                    "f1": a.f1,
                    "not_found": a.not_found,
                    "unanswerable": item.unanswerable,
                    "citations": a.citations,
                    "sentences": a.sentences,
                    "unsupported": a.unsupported,
                    "problems": a.problems,
                }
            )
    return out


def run_retrieval_part(services: Any, directory: Path, split: str = "test") -> dict[str, Any]:
    """`eval retrieval` on the folder's collection (ingested if needed), all three search modes."""
    from dataclasses import asdict

    from knowledge.evaluation import evaluate_store, load_beir

    beir = load_beir(directory, split)
    collection = collection_for(directory)
    ingest = ingest_corpus(services.store, directory, collection)
    results = evaluate_store(services.store, beir, collection, ("dense", "keyword", "hybrid"))
    return {
        "kind": "retrieval",
        "dataset": str(directory),
        "queries": len(beir.queries),
        "collection": collection,
        "ingest": ingest,
        "results": [asdict(r) for r in results],
    }


def run_router_part(services: Any, file: Path) -> dict[str, Any]:
    """`router eval` with the serving router on labelled messages {"text", "route"}."""
    from router import evaluate, read_labelled

    rows = read_labelled(file)
    services.router.decide("warm up")
    result = evaluate(services.router.decide, rows)
    result.update(kind="router", file=str(file), method=services.router.method)
    return result


def new_report(seed: int) -> dict[str, Any]:
    return {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "machine": machine(),
        "qa": [],
        "retrieval": [],
        "router": [],
    }
