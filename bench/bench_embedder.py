"""Embedder backends side by side: chunk throughput, one-message latency, nDCG@10 and router accuracy.

    .venv/bin/python -m bench.bench_embedder [--chunks 512] [--rounds 3] [--limit 1000] [--skip-router]

Candidates: torch fp32, torch int8 (dynamic quantisation), ONNX Runtime fp32 (BERT fusions) and ONNX Runtime
int8. Measurements alternate between candidates inside each loop, so load from other processes on a shared
machine hits all of them alike: compare ratios; absolute numbers are noisy.
- throughput: real SciFact chunk texts (as ragtune chunks them), `--batch` per call, OMP threads 2, median of rounds;
- query latency: router dev messages one at a time, through the path the router uses (QueryEncoder), p50/p95;
- quality: exact dense search over a SciFact subset (every needed document plus others up to `--limit`), each
  candidate embedding both chunks and queries, nDCG@10 over documents; cosine to torch fp32 vectors;
- router: classifier trained on each candidate's own vectors, accuracy on dev / OOD and `decide` p50/p95.
Results: bench/results/embedder.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from knowledge.embedding import Embedder  # noqa: E402
from knowledge.evaluation import load_beir, ndcg_at_k, percentile, unique_documents  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
RESULTS = HERE / "results"
CANDIDATES = {
    "torch fp32": {"backend": "torch", "quantize": "none"},
    "torch int8": {"backend": "torch", "quantize": "int8"},
    "onnx fp32": {"backend": "onnx", "quantize": "none"},
    "onnx int8": {"backend": "onnx", "quantize": "int8"},
}


def load_candidates(cache_dir: Path, batch_size: int, names: list[str]) -> dict[str, Embedder]:
    out = {}
    for name in names:
        started = time.perf_counter()
        out[name] = Embedder(batch_size=batch_size, cache_dir=cache_dir, **CANDIDATES[name])
        print(f"loaded {name:<11} ({out[name].description}) in {time.perf_counter() - started:.1f} s", flush=True)
    return out


def throughput(embedders: dict[str, Embedder], texts: list[str], rounds: int) -> dict:
    for embedder in embedders.values():
        embedder.embed_documents(texts[:32])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in embedders}
    cpu: dict[str, list[float]] = {name: [] for name in embedders}
    for _ in range(rounds):
        for name, embedder in embedders.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            embedder.embed_documents(texts)
            times[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    return {
        name: {
            "chunks_per_s": len(texts) / float(np.median(t)),
            "chunks_per_cpu_s": len(texts) / float(np.median(cpu[name])),
            "rounds_s": t,
        }
        for name, t in times.items()
    }


def query_latency(embedders: dict[str, Embedder], messages: list[str], threads: int) -> dict:
    """One message per call through the router's QueryEncoder; candidates alternate per message."""
    import torch

    from router.encoder import QueryEncoder

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    encoders = {}
    for name, embedder in embedders.items():
        encoders[name] = QueryEncoder(embedder, threads=threads)
        if embedder.onnx is not None and threads != 1:
            embedder.onnx.query_session = embedder.onnx._session(threads)  # bench-only: the 2-thread variant
    times: dict[str, list[float]] = {name: [] for name in embedders}
    for encoder in encoders.values():
        for text in messages[:5]:
            encoder.encode(text)
    for text in messages:
        for name, encoder in encoders.items():
            started = time.perf_counter()
            encoder.encode(text)
            times[name].append((time.perf_counter() - started) * 1000)
    for embedder in embedders.values():
        if embedder.onnx is not None and threads != 1:
            embedder.onnx.query_session = embedder.onnx._session(1)
    torch.set_num_threads(previous)
    return {n: {"p50_ms": percentile(t, 50), "p95_ms": percentile(t, 95)} for n, t in times.items()}


def quality(embedders: dict[str, Embedder], limit: int) -> dict:
    from bench.bench_knowledge import chunk_inputs, subset_corpus

    beir = load_beir(DATA / "scifact")
    with tempfile.TemporaryDirectory() as folder:
        texts, ids = chunk_inputs(subset_corpus(beir, limit, Path(folder)))
    qids = sorted(beir.qrels)
    out, reference = {}, None
    for name, embedder in embedders.items():
        chunks = embedder.embed_documents(texts)
        queries = np.stack([embedder.embed_query(beir.queries[q]) for q in qids])
        order = np.argsort(-(queries @ chunks.T), axis=1)[:, :100]
        scores = [
            ndcg_at_k(unique_documents([ids[i] for i in row]), beir.qrels[q])
            for q, row in zip(qids, order, strict=True)
        ]
        out[name] = {"ndcg_at_10": float(np.mean(scores))}
        if reference is None:
            reference = chunks
        cosine = np.sum(chunks * reference, axis=1)
        out[name] |= {"cosine_to_first_mean": float(cosine.mean()), "cosine_to_first_min": float(cosine.min())}
    return {"chunks": len(texts), "queries": len(qids), "candidates": out}


def router_accuracy(embedders: dict[str, Embedder]) -> dict:
    from bench.bench_router import run_system
    from router import Router, load_routes, read_labelled, train_classifier
    from router.encoder import QueryEncoder, limit_blas_threads

    limit_blas_threads()
    train = read_labelled(DATA / "router" / "train.jsonl")
    sets = {"dev": read_labelled(DATA / "router" / "dev.jsonl"), "ood": read_labelled(HERE / "router_ood.jsonl")}
    routes = load_routes()
    out = {}
    for name, embedder in embedders.items():
        model = train_classifier(
            [r["text"] for r in train], [r["route"] for r in train], routes, QueryEncoder(embedder)
        )
        path = Path(tempfile.mkdtemp(prefix="ragtune-bench-embedder-")) / "classifier.json"
        model.save(path)
        router = Router(routes, embedder, classifier_path=path, method="combined")
        router.decide("warm up")
        out[name] = run_system(f"combined / {name}", router.decide, sets)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=512, help="SciFact chunks per throughput round")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=300, help="router messages for query latency")
    parser.add_argument("--limit", type=int, default=1000, help="SciFact documents in the nDCG subset (0: all)")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-router", action="store_true")
    parser.add_argument("--cache-dir", type=Path, default=None, help="ONNX export cache (default: ~/.cache/ragtune)")
    parser.add_argument("--out", type=Path, default=RESULTS / "embedder.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("knowledge").setLevel(logging.INFO)

    from bench.bench_knowledge import chunk_inputs

    embedders = load_candidates(args.cache_dir, args.batch, args.candidates)
    texts, _ = chunk_inputs(DATA / "scifact" / "corpus.jsonl")
    random.Random(0).shuffle(texts)
    sample = texts[: args.chunks]
    messages = [json.loads(line)["text"] for line in (DATA / "router" / "dev.jsonl").open() if line.strip()]
    messages = messages[: args.messages]
    result: dict = {"threads": os.environ["OMP_NUM_THREADS"], "batch": args.batch, "chunks": len(sample)}
    result["throughput"] = throughput(embedders, sample, args.rounds)
    result["query_latency"] = {f"{t}_thread": query_latency(embedders, messages, t) for t in (1, 2)}
    if not args.skip_quality:
        result["quality"] = quality(embedders, args.limit)
    if not args.skip_router:
        result["router"] = router_accuracy(embedders)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print_table(result)


def print_table(result: dict) -> None:
    base = result["throughput"].get("torch fp32", {}).get("chunks_per_s")
    print(
        f"\n{'candidate':<12} {'chunks/s':>9} {'x fp32':>7} {'q1 p50':>7} {'q1 p95':>7} {'q2 p50':>7} {'q2 p95':>7}"
        f" {'nDCG@10':>8} {'cos min':>8} {'rt dev':>7} {'rt ood':>7} {'rt p95':>7}"
    )
    for name, row in result["throughput"].items():
        q1, q2 = result["query_latency"]["1_thread"][name], result["query_latency"]["2_thread"][name]
        qual = result.get("quality", {}).get("candidates", {}).get(name, {})
        rt = result.get("router", {}).get(name, {})
        cells = [
            f"{name:<12}",
            f"{row['chunks_per_s']:>9.1f}",
            f"{row['chunks_per_s'] / base:>7.2f}" if base else f"{'':>7}",
            f"{q1['p50_ms']:>7.1f}",
            f"{q1['p95_ms']:>7.1f}",
            f"{q2['p50_ms']:>7.1f}",
            f"{q2['p95_ms']:>7.1f}",
            f"{qual['ndcg_at_10']:>8.4f}" if qual else f"{'':>8}",
            f"{qual['cosine_to_first_min']:>8.4f}" if qual else f"{'':>8}",
            f"{rt['dev']['accuracy']:>7.3f}" if rt else f"{'':>7}",
            f"{rt['ood']['accuracy']:>7.3f}" if rt else f"{'':>7}",
            f"{rt['dev']['latency_ms']['p95']:>7.1f}" if rt else f"{'':>7}",
        ]
        print(" ".join(cells))
    print(
        f"results: {RESULTS / 'embedder.json'} (chunks/s: median of rounds at batch {result['batch']}, "
        f"{result['threads']} threads; q = one router message, ms; rt = router combined)"
    )


if __name__ == "__main__":
    main()
