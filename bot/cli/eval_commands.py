"""`ragtune eval ...`: measure the system on the user's own data. `eval retrieval` scores the knowledge base."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import click

from bot.cli.common import database, settings, user_errors

MODES = ("dense", "keyword", "hybrid")


@click.group("eval")
def eval_group() -> None:
    """Evaluate retrieval, routing and answers on your data."""
    from bot.cli.common import is_verbose
    from bot.logs import quiet_per_turn_logs

    if not is_verbose():
        quiet_per_turn_logs()  # hundreds of turns under one progress bar: their lines would bury it


@eval_group.command("retrieval")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--mode", "modes", multiple=True, type=click.Choice(MODES), help="Repeatable; default: all three.")
@click.option("--split", default="test", show_default=True, help="qrels/<split>.tsv to score against.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write results here.")
@click.option("--keep", is_flag=True, help="Keep the scratch collection (a re-run then skips ingestion).")
@user_errors
def eval_retrieval(directory: Path, modes, split: str, json_out: Path | None, keep: bool) -> None:
    """nDCG@10, recall@10, recall@100 and MRR@10 on a BEIR-layout DIRECTORY.

    DIRECTORY holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv. The corpus is ingested into a scratch
    collection (removed afterwards unless --keep), then every query with qrels is searched in each mode.
    """
    from bot.cli.knowledge_commands import open_store
    from bot.evaluate.suite import collection_for
    from knowledge.evaluation import evaluate_store, load_beir

    config = settings()
    beir = load_beir(directory, split)
    collection = collection_for(directory)
    db = database()
    try:
        store = open_store(db, config)
        report = store.ingest([beir.corpus], collection, progress=True)
        if report.failed:
            raise ValueError(f"cannot ingest {beir.corpus}: {report.failed[0][1]}")
        click.echo(f"corpus: {report.summary()}", err=True)
        results = evaluate_store(store, beir, collection, modes or MODES)
        if not keep:
            store.delete_collection(collection)
    finally:
        db.close()
    click.echo(f"{'mode':<8} {'nDCG@10':>8} {'R@10':>7} {'R@100':>7} {'MRR@10':>7} {'p50 ms':>7} {'p95 ms':>7}")
    for r in results:
        click.echo(
            f"{r.mode:<8} {r.ndcg_at_10:>8.4f} {r.recall_at_10:>7.4f} {r.recall_at_100:>7.4f} {r.mrr_at_10:>7.4f}"
            f" {r.latency_ms['p50']:>7.1f} {r.latency_ms['p95']:>7.1f}"
        )
    if json_out:
        payload = {
            "dataset": str(directory),
            "split": split,
            "queries": len(beir.queries),
            "embedding_model": config.embedding_model,
            "embedding_quantize": config.embedding_quantize,
            "ingest": {"chunks": report.chunks, "embedded": report.embedded, "seconds": report.seconds},
            "results": [asdict(r) for r in results],
        }
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2))
        click.echo(f"wrote {json_out}", err=True)


QA_MODES = ("base", "rag", "lora", "routed")


def _modes(value: str) -> list[str]:
    modes = [m.strip() for m in value.split(",") if m.strip()]
    unknown = [m for m in modes if m not in QA_MODES]
    if unknown or not modes:
        raise click.BadParameter(f"{unknown[0] if unknown else value!r}: choose from {', '.join(QA_MODES)}")
    return modes


def _qa_options(command):
    """Options shared by `eval qa` and `eval all`."""
    options = [
        click.option("--modes", default=",".join(QA_MODES), show_default=True, help="Comma-separated modes."),
        click.option(
            "--adapter",
            default="auto",
            show_default=True,
            help="Adapter for lora/routed: a registered NAME; 'auto' trains a small one on the folder's questions "
            "that are not evaluated (cached by data hash); 'none' skips lora.",
        ),
        click.option("--limit", type=click.IntRange(min=1), default=None, help="First N questions only (QA parts)."),
        click.option(
            "--max-new-tokens",
            type=click.IntRange(1, 2048),
            default=24,
            show_default=True,
            help="Answer length cap (CPU time is the limit; gold answers are short).",
        ),
        click.option(
            "--price-per-hour",
            type=click.FloatRange(min=0),
            default=0.10,
            show_default=True,
            help="Assumed $ per hour of the serving machine, for cost per 1,000 questions.",
        ),
        click.option(
            "--support-threshold",
            "--faithfulness-threshold",
            "support_threshold",
            type=click.FloatRange(0.01, 1.0),
            default=None,
            help="Sentence cosine at which an answer sentence can count as supported (default: the calibrated "
            "value in bot/answer/support.py). --faithfulness-threshold is the old name.",
        ),
        click.option(
            "--unanswerable",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="A .jsonl of questions the corpus cannot answer ({question} or {text}; a router file keeps route "
            "'knowledge'), asked in rag and routed: abstention on unanswerable, false abstention on the rest.",
        ),
        click.option(
            "--unanswerable-limit",
            type=click.IntRange(min=1),
            default=None,
            help="A seeded sample of N unanswerable questions (default: all).",
        ),
        click.option(
            "--train-steps", type=click.IntRange(min=1), default=40, show_default=True, help="Steps for --adapter auto."
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap and training seed."),
        click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write JSON here."),
        click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), help="Write HTML here."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _qa_config(opts: dict):
    from bot.answer.support import DEFAULT_SUPPORT_THRESHOLD
    from bot.evaluate.qa import QAConfig

    threshold = opts["support_threshold"] if opts["support_threshold"] is not None else DEFAULT_SUPPORT_THRESHOLD
    return QAConfig(
        modes=_modes(opts["modes"]),
        adapter=opts["adapter"],
        max_new_tokens=opts["max_new_tokens"],
        seed=opts["seed"],
        price_per_hour=opts["price_per_hour"],
        support_threshold=threshold,
    )


def _services():
    import os

    from bot.conversation.services import build_services

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    return build_services(settings())


def _print_qa(part: dict) -> None:
    click.echo(f"\n{part['dataset']}: {part['questions']} questions")
    if part.get("unanswerable"):
        u = part["unanswerable"]
        click.echo(f"unanswerable: {u['questions']} questions from {u['file']} in {', '.join(u['modes']) or '-'}")
    click.echo(
        f"{'mode':<7} {'F1':>6} {'95% CI':>13} {'contain':>7} {'goldret':>7} {'goldcit':>7} {'cites':>5} "
        f"{'unsup':>5} {'abst':>5} {'abst-u':>6} {'false':>5} {'p50 s':>6} {'p95 s':>6} {'tok':>5} {'$/1k q':>7}"
    )

    def pct(v):
        return "    -" if v is None else f"{v:>5.0%}"

    for mode, s in part["summary"].items():
        click.echo(
            f"{mode:<7} {s['f1']:>6.3f} {s['f1_ci'][0]:>6.3f}-{s['f1_ci'][1]:<6.3f} {pct(s['contains']):>7} "
            f"{pct(s['gold_retrieved']):>7} {pct(s['gold_cited']):>7} {pct(s.get('citation_rate'))} "
            f"{pct(s.get('unsupported_rate'))} {pct(s['abstention'])} {pct(s.get('abstention_unanswerable')):>6} "
            f"{pct(s.get('false_abstention'))} {s['latency_p50_s']:>6.2f} {s['latency_p95_s']:>6.2f} "
            f"{s['tokens_mean']:>5.1f} {s['cost_per_1000']:>7.3f}"
        )
    click.echo(
        "cites = answers citing a shown source inline; unsup = unsupported answer sentences; abst-u = abstained on "
        "unanswerable questions; false = abstained on answerable ones"
    )
    click.echo("")
    for line in part["verdict"]["text"]:
        click.echo(line)


@eval_group.command("qa")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--collection", default=None, help="Use this already-ingested collection instead of ingesting.")
@_qa_options
@user_errors
def eval_qa(directory: Path, collection: str | None, **opts) -> None:
    """Answer quality, latency and cost of base, rag, lora and routed on DIRECTORY.

    DIRECTORY holds answers.jsonl ({_id, question, answer}, or PubMedQA's {pubid, question, final_decision,
    long_answer}), corpus.jsonl and optionally qrels/test.tsv (gold passages). The corpus is ingested into a scratch
    collection that is kept, so a rerun skips ingestion. The data is checked before any model loads.
    """
    from bot.evaluate.qa import validate_qa
    from bot.evaluate.report import write_report
    from bot.evaluate.suite import new_report, run_qa_part

    started = time.perf_counter()
    config = _qa_config(opts)
    validate_qa(directory, [] if collection else config.modes, opts["unanswerable"])
    services = _services()
    try:
        part = run_qa_part(
            services,
            directory,
            config,
            limit=opts["limit"],
            collection=collection,
            train_steps=opts["train_steps"],
            progress=not opts["quiet"],
            unanswerable=opts["unanswerable"],
            unanswerable_limit=opts["unanswerable_limit"],
        )
    finally:
        services.close()
    report = new_report(opts["seed"])
    report["qa"].append(part)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    _print_qa(part)
    write_report(report, opts["json_out"], opts["html_out"])
    for out in (opts["json_out"], opts["html_out"]):
        if out:
            click.echo(f"wrote {out}", err=True)
    click.echo(f"wall time {report['wall_s']:.0f}s", err=True)


def _kinds(path: Path) -> list[str]:
    """Which parts apply to a --data path: a folder with answers.jsonl → qa, with a BEIR layout → retrieval;
    a .jsonl file (or a folder holding dev.jsonl) → router."""
    if path.is_file():
        return ["router"] if path.suffix == ".jsonl" else []
    kinds = []
    if (path / "corpus.jsonl").is_file() and (path / "queries.jsonl").is_file() and (path / "qrels").is_dir():
        kinds.append("retrieval")
    if (path / "answers.jsonl").is_file():
        kinds.append("qa")
    if not kinds and (path / "dev.jsonl").is_file():
        kinds.append("router")
    return kinds


@eval_group.command("all")
@click.option(
    "--data",
    "data",
    multiple=True,
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Repeatable: a BEIR folder (retrieval), a folder with answers.jsonl (qa, and retrieval when it is "
    "BEIR too), or a labelled .jsonl / folder with dev.jsonl (router).",
)
@click.option("--no-retrieval", is_flag=True, help="Skip retrieval even on BEIR folders.")
@_qa_options
@user_errors
def eval_all(data: tuple[Path, ...], no_retrieval: bool, **opts) -> None:
    """One HTML report and one JSON for every part that applies to each --data path."""
    from bot.evaluate.qa import validate_qa
    from bot.evaluate.report import write_report
    from bot.evaluate.suite import new_report, run_qa_part, run_retrieval_part, run_router_part

    plan = [(path, _kinds(path)) for path in data]
    for path, kinds in plan:
        if not kinds:
            raise ValueError(f"{path}: nothing to evaluate (need answers.jsonl, a BEIR layout or a labelled .jsonl)")
    started = time.perf_counter()
    config = _qa_config(opts)
    for path, kinds in plan:  # every QA folder is read and checked before the models load
        if "qa" in kinds:
            validate_qa(path, config.modes, opts["unanswerable"])
    report = new_report(opts["seed"])
    services = _services()
    try:
        for path, kinds in plan:
            if "retrieval" in kinds and not no_retrieval:
                click.echo(f"retrieval: {path}", err=True)
                report["retrieval"].append(run_retrieval_part(services, path))
            if "qa" in kinds:
                click.echo(f"qa: {path}", err=True)
                part = run_qa_part(
                    services,
                    path,
                    config,
                    limit=opts["limit"],
                    train_steps=opts["train_steps"],
                    progress=not opts["quiet"],
                    unanswerable=opts["unanswerable"],
                    unanswerable_limit=opts["unanswerable_limit"],
                )
                report["qa"].append(part)
                _print_qa(part)
            if "router" in kinds:
                file = path if path.is_file() else path / "dev.jsonl"
                click.echo(f"router: {file}", err=True)
                report["router"].append(run_router_part(services, file))
    finally:
        services.close()
    for part in report["retrieval"]:
        best = max(part["results"], key=lambda r: r["ndcg_at_10"])
        click.echo(f"retrieval {part['dataset']}: best {best['mode']} nDCG@10 {best['ndcg_at_10']:.4f}")
    for part in report["router"]:
        click.echo(f"router {part['file']}: accuracy {part['accuracy']:.3f}")
    report["wall_s"] = round(time.perf_counter() - started, 1)
    write_report(report, opts["json_out"], opts["html_out"])
    for out in (opts["json_out"], opts["html_out"]):
        if out:
            click.echo(f"wrote {out}", err=True)
    click.echo(f"wall time {report['wall_s']:.0f}s", err=True)


COMMANDS = [eval_group]
