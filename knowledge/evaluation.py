"""Retrieval evaluation on a BEIR-layout folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.

Metrics follow the BEIR/pytrec_eval definitions on document ids: nDCG@10 with graded gains, recall@k over
the relevant documents (qrel score > 0), and MRR@10. Chunks are mapped back to their corpus document (the
record id) and only a document's best-ranked chunk counts.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class BeirSet:
    root: Path
    corpus: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_beir(root: str | Path, split: str = "test") -> BeirSet:
    """Read queries and qrels (only queries that have qrels are kept); the corpus is ingested from its path."""
    root = Path(root)
    corpus = root / "corpus.jsonl"
    queries_path = root / "queries.jsonl"
    qrels_path = root / "qrels" / f"{split}.tsv"
    for needed in (corpus, queries_path, qrels_path):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing: a BEIR folder holds corpus.jsonl, queries.jsonl, qrels/")
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t"):
            if len(row) < 3 or row[0] == "query-id":
                continue
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    queries: dict[str, str] = {}
    with queries_path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                if str(record["_id"]) in qrels:
                    queries[str(record["_id"])] = record["text"]
    missing = set(qrels) - set(queries)
    if missing:
        raise ValueError(f"{len(missing)} qrels queries are not in queries.jsonl (e.g. {sorted(missing)[0]})")
    return BeirSet(root, corpus, queries, qrels)


def ndcg_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int = 10) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int) -> float:
    wanted = {doc for doc, g in relevant.items() if g > 0}
    return len(wanted & set(ranked[:k])) / len(wanted) if wanted else 0.0


def mrr_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int = 10) -> float:
    for i, doc in enumerate(ranked[:k]):
        if relevant.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


@dataclass
class RetrievalScores:
    mode: str
    queries: int
    ndcg_at_10: float
    recall_at_10: float
    recall_at_100: float
    mrr_at_10: float
    latency_ms: dict = field(default_factory=dict)


def score_run(mode: str, run: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> RetrievalScores:
    n = len(qrels)
    return RetrievalScores(
        mode=mode,
        queries=n,
        ndcg_at_10=sum(ndcg_at_k(run.get(q, []), rel, 10) for q, rel in qrels.items()) / n,
        recall_at_10=sum(recall_at_k(run.get(q, []), rel, 10) for q, rel in qrels.items()) / n,
        recall_at_100=sum(recall_at_k(run.get(q, []), rel, 100) for q, rel in qrels.items()) / n,
        mrr_at_10=sum(mrr_at_k(run.get(q, []), rel, 10) for q, rel in qrels.items()) / n,
    )


def unique_documents(doc_ids: Sequence[str], limit: int = 100) -> list[str]:
    """Chunk hits to a document ranking: each document at its best chunk's rank."""
    seen: dict[str, None] = {}
    for doc_id in doc_ids:
        seen.setdefault(doc_id, None)
        if len(seen) >= limit:
            break
    return list(seen)


def run_queries(
    search: Callable[[str, str], list[str]], queries: dict[str, str], mode: str
) -> tuple[dict[str, list[str]], list[float]]:
    """Run every query through `search(text, mode) -> ranked doc ids`; return the run and latencies (ms)."""
    run: dict[str, list[str]] = {}
    latencies: list[float] = []
    for qid, text in queries.items():
        started = time.perf_counter()
        run[qid] = unique_documents(search(text, mode))
        latencies.append((time.perf_counter() - started) * 1000)
    return run, latencies


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values): p95 of 20 latencies is the 19th, not an interpolation."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(pct / 100 * len(ordered)) - 1))
    return float(ordered[index])


def evaluate_store(store, beir: BeirSet, collection: str, modes: Sequence[str], k: int = 150) -> list[RetrievalScores]:
    """Search every query in each mode against an already-ingested collection and score the runs."""

    def search(text: str, mode: str) -> list[str]:
        hits = store.search(text, collection=collection, k=k, mode=mode)
        return [str(hit.metadata.get("record_id", hit.source)) for hit in hits]

    results = []
    for mode in modes:
        run, latencies = run_queries(search, beir.queries, mode)
        scores = score_run(mode, run, beir.qrels)
        scores.latency_ms = {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95)}
        results.append(scores)
    return results
