"""Router benchmark: ragtune's router (similarity, classifier, combined) against semantic-router and zero-shot
routing by the default generator, on the same train/dev split, plus ragtune's own out-of-domain and
follow-up checks (bench/router_ood.jsonl, bench/router_followups.jsonl: written for this project).

    .venv/bin/python -m bench.bench_router [--embedders onnx-int8,torch-fp32] [--zero-shot-limit 200]
        [--skip-zero-shot] [--skip-semantic-router]

semantic-router is optional and not a dependency: put it on PYTHONPATH (e.g. `pip install --no-deps --target DIR
semantic-router` plus the few pure-Python packages it imports). Latency is wall-clock per decision, embedding
included; `cpu` columns are the deciding thread's CPU time, which is what a decision costs on an idle core
(on this shared 2-core machine the wall clock also holds waiting for other processes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from knowledge.evaluation import percentile  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "router"
RESULTS = HERE / "results"


class _Picked:
    """The part of a decision the scorer reads (route/action/fallback/latency)."""

    def __init__(self, route: str, latency_ms: float, cpu_ms: float, fallback: bool = False) -> None:
        self.route, self.action, self.latency_ms, self.cpu_ms, self.fallback = (
            route,
            route,
            latency_ms,
            cpu_ms,
            fallback,
        )
        self.confidence = 0.0


def _ms(value: float | None, unit: str = " ms") -> str:
    return "n/a" if value is None else f"{value:.1f}{unit}"


def _acc(result: dict | None) -> str:
    return "n/a" if result is None else f"{result['accuracy']:.3f}"


def _timed(decide: Callable) -> tuple[Callable, list[float]]:
    cpu: list[float] = []

    def wrapped(text, history=()):
        start = time.thread_time()
        decision = decide(text, history)
        cpu.append((time.thread_time() - start) * 1000)
        return decision

    return wrapped, cpu


def run_system(
    name: str, decide: Callable, sets: dict[str, list[dict]], note: str = "", cpu_measured: bool = True
) -> dict:
    """Score `decide` on each set. cpu_measured False: the work runs off the calling thread (asyncio helpers)."""
    from router import evaluate

    out = {"system": name, "note": note}
    for set_name, rows in sets.items():
        wrapped, cpu = _timed(decide)
        result = evaluate(wrapped, rows)
        if cpu_measured:
            result["cpu_ms"] = {"p50": percentile(cpu, 50), "p95": percentile(cpu, 95)}
        else:
            result["cpu_ms"] = {"p50": None, "p95": None}
        out[set_name] = result
        print(
            f"  {name:<28} {set_name:<10} acc {result['accuracy']:.3f}  "
            f"p50 {result['latency_ms']['p50']:.1f} ms  p95 {result['latency_ms']['p95']:.1f} ms  "
            f"cpu p95 {_ms(result['cpu_ms']['p95'])}",
            flush=True,
        )
    return out


def _vectors(encoder, texts: list[str]) -> np.ndarray:
    """Embeddings of the training texts, cached under bench/results (embedding them is most of training time)."""
    identity = str(getattr(encoder.embedder, "description", encoder.name))  # backend and quantisation included
    key = hashlib.sha256(("\n".join(texts) + identity).encode()).hexdigest()[:16]
    path = RESULTS / f".router-train-{key}.npy"
    if path.is_file():
        return np.load(path)
    vectors = encoder.encode_many(texts)
    RESULTS.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


class _CachedEncoder:
    def __init__(self, encoder, texts: list[str], vectors: np.ndarray) -> None:
        self.name = encoder.name
        self._encoder = encoder
        self._lookup = {t: v for t, v in zip(texts, vectors, strict=True)}

    def encode_many(self, texts: list[str]) -> np.ndarray:
        if all(t in self._lookup for t in texts):
            return np.stack([self._lookup[t] for t in texts])
        return self._encoder.encode_many(texts)


def semantic_router_system(embedder, encoder, train: list[dict]):
    """semantic-router's IndexedRouter over the same embedder, the training messages as route utterances."""
    try:
        from semantic_router import Route
        from semantic_router.encoders import DenseEncoder
        from semantic_router.routers import IndexedRouter
    except Exception as exc:  # ImportError, or a missing dependency of it
        return None, f"not available: {type(exc).__name__}: {exc}"

    class RagtuneEncoder(DenseEncoder):
        """The same MiniLM as ragtune (semantic-router's own HuggingFaceEncoder would download weights)."""

        def __call__(self, docs):
            if len(docs) == 1:
                return [encoder.encode(docs[0]).tolist()]
            return embedder.embed_documents(list(docs)).tolist()

    by_route: dict[str, list[str]] = {}
    for row in train:
        by_route.setdefault(row["route"], []).append(row["text"])
    started = time.perf_counter()
    sr = IndexedRouter(
        encoder=RagtuneEncoder(name="all-MiniLM-L6-v2"),
        routes=[Route(name=name, utterances=texts) for name, texts in by_route.items()],
    )
    build_s = time.perf_counter() - started

    def decide(text, history=()):
        start = time.perf_counter()
        choice = sr(text)
        name = getattr(choice, "name", None) or "knowledge"  # no route passed its bar: ragtune's default route
        return _Picked(name, (time.perf_counter() - start) * 1000, 0.0, fallback=choice is None)

    import semantic_router

    version = getattr(semantic_router, "__version__", "?")
    return (
        decide,
        f"semantic-router {version} IndexedRouter, top_k=5 mean, train messages as utterances ({build_s:.0f}s)",
    )


ZERO_SHOT_PROMPT = (
    "You route messages for a chatbot. Answer with one word.\n"
    "knowledge: a question or problem that needs facts from documents (support, policies, legal, medical, facts).\n"
    "skill: small talk, or a writing task: drafting, rewriting, summarising, translating, jokes, opinions.\n"
    "Message: {message}\nRoute:"
)


def zero_shot_system(state_dir: Path):
    """The default generator asked to pick a route: the likelier of the two route names as its next word."""
    import torch

    from bot.config import load_settings
    from bot.llm.loading import load_base_model

    settings = load_settings() if state_dir is None else load_settings(home=state_dir)
    loaded = load_base_model("smollm2", settings.model_cache_dir, device="cpu")
    tok, model = loaded.tokenizer, loaded.model
    candidates = {}
    for name in ("knowledge", "skill"):
        ids = tok.encode(" " + name, add_special_tokens=False)
        candidates[name] = ids[0]

    def score(text):
        start, cpu = time.perf_counter(), time.thread_time()
        chat = [{"role": "user", "content": ZERO_SHOT_PROMPT.format(message=text)}]
        prompt = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ids = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**ids).logits[0, -1]
        plain = {n: float(logits[i]) for n, i in candidates.items()}
        # the answer may start without a space: take the better of " skill" / "skill"
        for name in candidates:
            bare = tok.encode(name, add_special_tokens=False)[0]
            plain[name] = max(plain[name], float(logits[bare]))
        return plain, (time.perf_counter() - start) * 1000, (time.thread_time() - cpu) * 1000

    # contextual calibration ("calibrate before use", Zhao et al. 2021): remove the model's bias towards one
    # route name by subtracting its scores for a content-free message
    bias, _, _ = score("N/A")

    def decide(text, history=()):
        plain, wall, cpu = score(text)
        route = max(plain, key=lambda n: plain[n] - bias[n])
        return _Picked(route, wall, cpu)

    note = f"SmolLM2-135M-Instruct, calibrated next-token choice of route name (load {loaded.load_seconds:.1f}s)"
    return decide, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zero-shot-limit", type=int, default=40, help="dev messages for the slow zero-shot run")
    parser.add_argument("--skip-zero-shot", action="store_true")
    parser.add_argument("--skip-semantic-router", action="store_true")
    parser.add_argument("--state-dir", type=Path, default=None, help="ragtune home holding the model cache")
    parser.add_argument(
        "--embedders",
        default="onnx-int8,torch-fp32",
        help="comma list of embedder variants (backend-quantisation: onnx-int8, onnx-none, torch-int8, torch-fp32);"
        " the first is the product default and also serves semantic-router",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "router.json")
    args = parser.parse_args()

    from knowledge.embedding import Embedder
    from router import Router, load_routes, read_labelled, train_classifier
    from router.encoder import QueryEncoder, limit_blas_threads

    limit_blas_threads()
    train = read_labelled(DATA / "train.jsonl")
    dev = read_labelled(DATA / "dev.jsonl")
    ood = read_labelled(HERE / "router_ood.jsonl")
    follow = read_labelled(HERE / "router_followups.jsonl")
    sets = {"dev": dev, "ood": ood, "followups": follow}

    cache_dir = (args.state_dir or Path.home() / ".cache" / "ragtune") / "models" / "onnx"
    routes = load_routes()
    texts = [r["text"] for r in train]
    systems = []
    embedder = encoder = model = None
    for variant in [v.strip() for v in args.embedders.split(",") if v.strip()]:
        backend, _, quantize = variant.partition("-")
        started = time.perf_counter()
        this = Embedder(backend=backend, quantize="none" if quantize in ("fp32", "none") else quantize,
                        cache_dir=cache_dir)  # fmt: skip
        this_encoder = QueryEncoder(this)
        print(f"{this.description}: loaded in {time.perf_counter() - started:.1f}s", flush=True)
        started = time.perf_counter()
        vectors = _vectors(this_encoder, texts)
        trained = train_classifier(
            texts, [r["route"] for r in train], routes, _CachedEncoder(this_encoder, texts, vectors)
        )
        print(f"  classifier trained in {time.perf_counter() - started:.1f}s; held-out: {trained.metrics['heldout']}")
        clf_path = Path(tempfile.mkdtemp(prefix="ragtune-bench-router-")) / "classifier.json"
        trained.save(clf_path)
        for method in ("similarity", "classifier", "combined"):
            path = None if method == "similarity" else clf_path
            router = Router(routes, this, classifier_path=path, method=method)
            router.decide("warm up")
            note = this.description + ("; shipped examples only" if path is None else "; trained on its own vectors")
            systems.append(run_system(f"ragtune {method} {variant}", router.decide, sets, note))
        if embedder is None:
            embedder, encoder, model = this, this_encoder, trained

    if not args.skip_semantic_router:
        decide, note = semantic_router_system(embedder, encoder, train)
        if decide is None:
            print(f"  semantic-router: {note}")
            systems.append({"system": "semantic-router", "note": note})
        else:
            systems.append(run_system("semantic-router", decide, sets, note, cpu_measured=False))

    if not args.skip_zero_shot:
        decide, note = zero_shot_system(args.state_dir)
        subset = random.Random(0).sample(dev, min(args.zero_shot_limit, len(dev)))
        note += f"; dev is a random {len(subset)}-message subset"
        note += "; no follow-up set (it sees no history)"
        systems.append(run_system("zero-shot smollm2", decide, {"dev": subset, "ood": ood}, note))

    print()
    header = (
        f"{'system':<36}{'dev acc':>9}{'p50 ms':>8}{'p95 ms':>8}{'cpu p95':>9}{'ood acc':>9}{'follow-up':>11}  note"
    )
    print(header)
    print("-" * len(header))
    for s in systems:
        if "dev" not in s:
            print(f"{s['system']:<36}{'-':>9}{'-':>8}{'-':>8}{'-':>9}{'-':>9}{'-':>11}  {s['note']}")
            continue
        d = s["dev"]
        print(
            f"{s['system']:<36}{d['accuracy']:>9.3f}{d['latency_ms']['p50']:>8.1f}{d['latency_ms']['p95']:>8.1f}"
            f"{_ms(d['cpu_ms']['p95'], ''):>9}{s['ood']['accuracy']:>9.3f}{_acc(s.get('followups')):>11}"
            f"  {s['note']}"
        )
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()},
        "classifier_heldout": model.metrics["heldout"],
        "systems": systems,
    }
    out.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    print(f"\nwrote {out}  (machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
