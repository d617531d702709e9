"""`ragtune eval ...`: measure the system on the user's own data. `eval retrieval` scores the knowledge base."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path

import click

from bot.cli.common import database, settings, user_errors

MODES = ("dense", "keyword", "hybrid")


@click.group("eval")
def eval_group() -> None:
    """Evaluate retrieval, routing and answers on your data."""


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
    from knowledge.evaluation import evaluate_store, load_beir

    config = settings()
    beir = load_beir(directory, split)
    slug = re.sub(r"[^A-Za-z0-9_-]", "-", directory.resolve().name)[:60]
    collection = f"eval-{slug}-{hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:8]}"
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


COMMANDS = [eval_group]
