"""Evidence weights and abstention thresholds, calibrated on held-out questions of two shared data sets.

    .venv/bin/python -m bench.bench_abstention [--home DIR] [--out bench/results/abstention.json]

Answerable: covid-qa questions 400-699 (the evaluation uses the first 300, so these are held out) against the
covid-qa corpus, and SciFact train claims against a SciFact corpus sample. Unanswerable: covid-qa questions asked
against SciFact, SciFact claims asked against covid-qa, and fact questions of the router's *train* split (banking,
home assistant) asked against both. For each question the product's hybrid search returns the top passages and
`EvidenceFinder` scores their sentences; the raw parts of every sentence score are kept, so the weight grid is
re-scored without embedding again. Printed: top-sentence accuracy on covid-qa per weight pair (does the quoted
sentence contain the gold answer), then abstention on unanswerable and false abstention on answerable for
thresholds on the best passage score and on the best evidence score.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
RESULTS = HERE / "results"
OVERLAP_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
CHUNK_GRID = (0.0, 0.1, 0.2, 0.4)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _scifact_sample(home: Path, size: int, seed: int) -> tuple[Path, list[dict]]:
    """A SciFact corpus file holding every abstract the train claims cite plus a seeded random rest."""
    claims = {q["_id"]: q["text"] for q in _read_jsonl(DATA / "scifact" / "queries.jsonl")}
    qrels: dict[str, set[str]] = {}
    for line in (DATA / "scifact" / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        query, doc, score = line.split("\t")
        if score.strip() != "0":
            qrels.setdefault(query, set()).add(doc)
    corpus = _read_jsonl(DATA / "scifact" / "corpus.jsonl")
    cited = {d for docs in qrels.values() for d in docs}
    rest = [d for d in corpus if d["_id"] not in cited]
    random.Random(seed).shuffle(rest)
    chosen = [d for d in corpus if d["_id"] in cited] + rest[: max(0, size - len(cited))]
    path = home / "scifact-sample" / "corpus.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in chosen), encoding="utf-8")
    items = [{"question": claims[q], "gold": None} for q in sorted(qrels, key=int) if q in claims]
    return path, items


def _questions(home: Path, args) -> tuple[dict[str, Path], list[dict]]:
    covid = _read_jsonl(DATA / "covid-qa" / "answers.jsonl")
    dev = covid[args.covid_from : args.covid_from + args.covid_count]
    scifact_file, claims = _scifact_sample(home, args.scifact_docs, args.seed)
    router = [r["text"] for r in _read_jsonl(DATA / "router" / "train.jsonl") if r["route"] == "knowledge"]
    random.Random(args.seed).shuffle(router)
    corpora = {"covid": DATA / "covid-qa" / "corpus.jsonl", "scifact": scifact_file}
    items = [dict(q=r["question"], corpus="covid", answerable=True, set="covid-qa", gold=r["answer"]) for r in dev]
    items += [
        dict(q=c["question"], corpus="scifact", answerable=True, set="scifact", gold=None)
        for c in claims[: args.claims]
    ]
    items += [
        dict(q=r["question"], corpus="scifact", answerable=False, set="covid-qa→scifact", gold=None)
        for r in dev[: args.cross]
    ]
    items += [
        dict(q=c["question"], corpus="covid", answerable=False, set="scifact→covid-qa", gold=None)
        for c in claims[: args.cross]
    ]
    for corpus in corpora:
        items += [
            dict(q=t, corpus=corpus, answerable=False, set=f"router→{corpus}", gold=None)
            for t in router[: args.cross // 2]
        ]
    return corpora, items


def _measure(store, finder, items: list[dict], collections: dict[str, str], top_k: int) -> None:
    """Search and score every sentence once; keep the raw parts of each sentence score."""
    from bot.answer.evidence import EvidenceFinder

    raw = EvidenceFinder(finder.embedder, overlap_weight=0.0, chunk_weight=0.0)
    for i, item in enumerate(items):
        started = time.perf_counter()
        hits = store.search(item["q"], collection=collections[item["corpus"]], k=top_k, mode="hybrid")
        evidence = raw.find(item["q"], hits)
        item["retrieval"] = max((float(h.score) for h in hits), default=0.0)
        item["sentences"] = [(e.text, e.cosine, e.overlap, float(hits[e.hit].score)) for e in evidence]
        item["ms"] = (time.perf_counter() - started) * 1000
        if (i + 1) % 100 == 0:
            print(f"  {i + 1}/{len(items)} questions", flush=True)


def _best(item: dict, overlap_w: float, chunk_w: float) -> tuple[float, str]:
    scored = [(c + overlap_w * o + chunk_w * p, t) for t, c, o, p in item["sentences"]]
    return max(scored, default=(0.0, ""))


def _weight_grid(items: list[dict]) -> list[dict]:
    from bot.evaluate.metrics import contains_answer, token_f1

    covid = [i for i in items if i["set"] == "covid-qa"]
    rows = []
    for overlap_w in OVERLAP_GRID:
        for chunk_w in CHUNK_GRID:
            picks = [_best(i, overlap_w, chunk_w)[1] for i in covid]
            contains = sum(contains_answer(p, i["gold"]) for p, i in zip(picks, covid, strict=True)) / len(covid)
            f1 = sum(token_f1(p, i["gold"]) for p, i in zip(picks, covid, strict=True)) / len(covid)
            rows.append({"overlap_weight": overlap_w, "chunk_weight": chunk_w, "contains": contains, "f1": f1})
    return rows


def _sweep(items: list[dict], feature) -> list[dict]:
    answerable = [feature(i) for i in items if i["answerable"]]
    unanswerable = [feature(i) for i in items if not i["answerable"]]
    rows = []
    for step in range(0, 121):
        threshold = round(step * 0.01, 2)
        rows.append(
            {
                "threshold": threshold,
                "abstain_unanswerable": sum(v < threshold for v in unanswerable) / len(unanswerable),
                "false_abstention": sum(v < threshold for v in answerable) / len(answerable),
            }
        )
    return rows


def _pick(rows: list[dict], max_false: float, min_abstain: float) -> dict:
    """standard: the most abstention with false abstention <= max_false; strict: the least false abstention with
    abstention >= min_abstain."""
    standard = max((r for r in rows if r["false_abstention"] <= max_false), key=lambda r: r["abstain_unanswerable"])
    strict_rows = [r for r in rows if r["abstain_unanswerable"] >= min_abstain]
    strict = min(strict_rows, key=lambda r: r["false_abstention"]) if strict_rows else rows[-1]
    return {"standard": standard, "strict": strict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("test-artifacts/bench-home"))
    parser.add_argument("--out", type=Path, default=RESULTS / "abstention.json")
    parser.add_argument("--covid-from", type=int, default=400)
    parser.add_argument("--covid-count", type=int, default=300)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--cross", type=int, default=200)
    parser.add_argument("--scifact-docs", type=int, default=1500)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from bot.answer.evidence import EvidenceFinder
    from bot.config import load_settings
    from bot.db.connection import open_database
    from bot.embedder import configured_embedder
    from bot.evaluate.suite import collection_for
    from knowledge.store import KnowledgeStore

    args.home.mkdir(parents=True, exist_ok=True)
    settings = load_settings(home=args.home)
    db = open_database(settings)
    embedder = configured_embedder(settings)
    store = KnowledgeStore(db.pool, embedder, ef_search=settings.hnsw_ef_search)
    corpora, items = _questions(args.home, args)
    collections = {"covid": collection_for(DATA / "covid-qa"), "scifact": "bench-scifact-sample"}
    for name, path in corpora.items():
        report = store.ingest([path], collections[name], progress=True)
        print(f"{name}: {report.summary()}")
    started = time.perf_counter()
    _measure(store, EvidenceFinder(embedder), items, collections, args.top_k)
    print(f"measured {len(items)} questions in {time.perf_counter() - started:.1f}s")
    db.close()

    grid = _weight_grid(items)
    best = max(grid, key=lambda r: (r["contains"], r["f1"]))
    print("\ncovid-qa 400-699: does the top sentence contain the gold answer?")
    print("overlap  chunk  contains  F1")
    for r in grid:
        mark = "  <- best" if r is best else ""
        print(f"{r['overlap_weight']:7.2f} {r['chunk_weight']:6.2f}  {r['contains']:8.3f}  {r['f1']:.3f}{mark}")

    features = {
        "retrieval": lambda i: i["retrieval"],
        "evidence": lambda i: _best(i, best["overlap_weight"], best["chunk_weight"])[0],
    }
    sweeps = {name: _sweep(items, f) for name, f in features.items()}
    picks = {name: _pick(rows, max_false=0.10, min_abstain=0.98) for name, rows in sweeps.items()}
    sets = sorted({i["set"] for i in items})
    counts = {s: sum(i["set"] == s for i in items) for s in sets}
    print(f"\nquestions: {len(items)} (" + ", ".join(f"{s} {n}" for s, n in counts.items()) + ")")
    print("feature    preset    threshold  abstain(unanswerable)  false abstention")
    for name, chosen in picks.items():
        for preset, r in chosen.items():
            print(
                f"{name:10} {preset:9} {r['threshold']:9.2f}  {r['abstain_unanswerable']:21.3f}  "
                f"{r['false_abstention']:.3f}"
            )
    per_set = {}
    for name, chosen in picks.items():
        for preset, r in chosen.items():
            per_set[f"{name}/{preset}"] = {
                s: sum(features[name](i) < r["threshold"] for i in items if i["set"] == s)
                / max(1, sum(i["set"] == s for i in items))
                for s in sets
            }
    print("\nabstention per question set at each pick:")
    for key, values in per_set.items():
        print(f"  {key:22} " + "  ".join(f"{s} {v:.2f}" for s, v in values.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "grid": grid,
        "best_weights": best,
        "picks": picks,
        "per_set": per_set,
        "sweeps": sweeps,
        "questions": {s: sum(i["set"] == s for i in items) for s in sets},
        "args": vars(args) | {"home": str(args.home), "out": str(args.out)},
    }
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
