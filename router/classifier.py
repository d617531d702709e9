"""A small classifier trained on labelled messages, calibrated on a held-out split, stored beside the state.

Logistic regression on the knowledge base's own sentence embeddings: it trains in seconds, predicts with one
matrix product (no scikit-learn call at decision time), and its probabilities are made honest with
temperature scaling fitted on the 20% held back. The same split measures example similarity and the
combination of both, so `ragtune router train` reports each method on data it did not train on.

That split is in-domain, so it cannot see what matters most: messages unlike any labelled one. Measured
leave-one-source-out (bench/bench_router_loso.py), a classifier that replaced example similarity lost a
quarter of the accuracy on the held-out data set. So the classifier is a correction on top of similarity
("combined", the default): it keeps the labelled messages' vectors (`anchors`) and counts only as far as
a message is close to one of them (`gate_weight`); far from all of them, the shipped examples decide.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from router.routes import ACTIONS, RouteSpec
from router.similarity import ExampleIndex, softmax

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_SIM_TEMPERATURE = 0.04  # fitted on held-out labelled messages; `router train` refits it
EXAMPLE_WEIGHT = 2.0  # a route's configured examples count double: they define routes the file may not cover
METHODS = ("similarity", "classifier", "combined")
# Nearest labelled message's cosine at which the classifier starts to count, and at which it decides alone.
# Chosen on the shared router data: the best in-domain split of train.jsonl among the gates whose leave-one-source-
# out mean meets 0.92 (`python -m bench.bench_router_loso --gate-grid`; docs/routing.md has the table).
GATE_LOW, GATE_HIGH = 0.5, 0.7


@dataclass
class RouteClassifier:
    labels: list[str]
    coef: np.ndarray  # (1 or K, dim)
    intercept: np.ndarray  # (1 or K,)
    temperature: float
    embedder: str
    sim_temperature: float = DEFAULT_SIM_TEMPERATURE
    weight: float = 0.5  # the classifier's fixed share in "combined" when it has no anchors (format-1 files)
    method: str = "combined"  # the method the router uses by default
    metrics: dict = field(default_factory=dict)
    anchors: np.ndarray | None = None  # (n, dim) the labelled messages' vectors: where the classifier knows

    def gate_weight(self, vectors: np.ndarray) -> np.ndarray:
        """The classifier's share per message: 0 far from every labelled message, 1 close to one."""
        if self.anchors is None or not len(self.anchors):
            return np.full(len(np.atleast_2d(vectors)), self.weight)
        near = (np.atleast_2d(vectors).astype(np.float32, copy=False) @ self.anchors.T).max(axis=1)
        return np.clip((near - GATE_LOW) / (GATE_HIGH - GATE_LOW), 0.0, 1.0)

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        z = np.atleast_2d(vectors) @ self.coef.T + self.intercept
        if z.shape[1] == 1:  # binary logistic regression scores the second class against the first
            z = np.hstack([np.zeros_like(z), z])
        return z

    def proba(self, vectors: np.ndarray) -> np.ndarray:
        return softmax(self.logits(vectors), self.temperature)

    def save(self, path: Path) -> Path:
        """Writes `<path>.npz` (weights) and `<path>.json` (labels, embedder, calibration, metrics)."""
        path = Path(path).with_suffix("")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"coef": self.coef, "intercept": self.intercept}
        if self.anchors is not None:
            arrays["anchors"] = self.anchors
        np.savez(path.with_suffix(".npz"), **arrays)
        meta = {
            "format": FORMAT_VERSION,
            "labels": self.labels,
            "temperature": self.temperature,
            "embedder": self.embedder,
            "sim_temperature": self.sim_temperature,
            "weight": self.weight,
            "method": self.method,
            "metrics": self.metrics,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return path.with_suffix(".json")

    @classmethod
    def load(cls, path: Path) -> RouteClassifier:
        base = Path(path).with_suffix("")
        meta_path, weights_path = base.with_suffix(".json"), base.with_suffix(".npz")
        if not meta_path.is_file() or not weights_path.is_file():
            raise FileNotFoundError(f"router classifier {meta_path} / {weights_path} not found")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: unsupported classifier format {meta.get('format')!r}")
        with np.load(weights_path) as data:
            coef, intercept = data["coef"].astype(np.float32), data["intercept"].astype(np.float32)
            anchors = data["anchors"].astype(np.float32) if "anchors" in data.files else None
        return cls(
            labels=list(meta["labels"]),
            coef=coef,
            intercept=intercept,
            temperature=float(meta["temperature"]),
            embedder=str(meta["embedder"]),
            sim_temperature=float(meta.get("sim_temperature", DEFAULT_SIM_TEMPERATURE)),
            weight=float(meta.get("weight", 0.5)),
            method=str(meta.get("method", "combined")),
            metrics=dict(meta.get("metrics", {})),
            anchors=anchors,
        )


def read_labelled(path: Path) -> list[dict]:
    """JSONL lines `{"text", "route"}` (other keys kept, e.g. `history`); errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labelled file {path} does not exist")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
                raise ValueError(f"{path}:{number}: each line needs a non-empty string 'text'")
            if not isinstance(row.get("route"), str) or not row["route"]:
                raise ValueError(f"{path}:{number}: each line needs a string 'route'")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no labelled messages")
    return rows


def label_members(labels: Sequence[str], routes: Sequence[RouteSpec]) -> list[list[int]]:
    """Which routes each classifier label stands for: the route of that name, or, for an action label
    ('knowledge'/'skill'), that route plus every route of that action the classifier has no label for."""
    names = [r.name for r in routes]
    members = []
    for label in labels:
        group = [i for i, r in enumerate(routes) if r.name == label]
        if label in ACTIONS:
            group += [i for i, r in enumerate(routes) if r.action == label and r.name not in labels]
        members.append(sorted(set(group)))
    unknown = [label for label, group in zip(labels, members, strict=True) if not group]
    if unknown:
        raise ValueError(f"classifier label {unknown[0]!r} is neither a route ({', '.join(names)}) nor an action")
    return members


def route_proba(label_p: np.ndarray, sim_p: np.ndarray, members: list[list[int]], n_routes: int) -> np.ndarray:
    """Spread each label's probability over its routes in proportion to their similarity probabilities."""
    out = np.zeros((label_p.shape[0], n_routes))
    for j, group in enumerate(members):
        if len(group) == 1:
            out[:, group[0]] += label_p[:, j]
            continue
        share = sim_p[:, group]
        share = share / np.clip(share.sum(axis=1, keepdims=True), 1e-12, None)
        out[:, group] += label_p[:, [j]] * share
    return out


def _fit_temperature(logits: np.ndarray, gold: np.ndarray) -> float:
    """Temperature minimising held-out negative log-likelihood (a 1-D search in log space)."""
    best_t, best_nll = 1.0, np.inf
    for t in np.exp(np.linspace(np.log(0.005), np.log(20.0), 200)):
        p = softmax(logits, t)[np.arange(len(gold)), gold]
        nll = -np.mean(np.log(np.clip(p, 1e-12, None)))
        if nll < best_nll:
            best_t, best_nll = float(t), nll
    return best_t


def _accuracy(p: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(p.argmax(axis=1) == gold)) if len(gold) else 0.0


def _ece(p: np.ndarray, gold: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the top probability: how far confidence is from accuracy."""
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            total += mask.mean() * abs(conf[mask].mean() - np.mean(pred[mask] == gold[mask]))
    return float(total)


def _example_set(routes: Sequence[RouteSpec], classes: list[str], vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The configured examples as training rows, under their route's label (or its action's) when it is a class."""
    labels = []
    for r in routes:
        label = r.name if r.name in classes else (r.action if r.action in classes else None)
        labels.extend([label] * len(r.examples))
    keep = [i for i, label in enumerate(labels) if label is not None]
    return vectors[keep], np.array([classes.index(labels[i]) for i in keep], dtype=int)


def _compare_methods(clf_p: np.ndarray, sim_p: np.ndarray, gate: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    """Each method's held-out accuracy and calibration ("combined": the gated correction), and the fixed mixing
    weight that would do best there (kept for reference; the router gates by nearness instead)."""
    best_w, best_key = 0.5, None
    for w in np.round(np.linspace(0, 1, 11), 2):
        combined = w * clf_p + (1 - w) * sim_p
        key = (_accuracy(combined, y), -_nll(combined, y))
        if best_key is None or key > best_key:
            best_w, best_key = float(w), key
    fixed = best_w * clf_p + (1 - best_w) * sim_p
    combined = gate[:, None] * clf_p + (1 - gate[:, None]) * sim_p
    return best_w, {
        "similarity": {"accuracy": _accuracy(sim_p, y), "ece": _ece(sim_p, y)},
        "classifier": {"accuracy": _accuracy(clf_p, y), "ece": _ece(clf_p, y)},
        "combined": {"accuracy": _accuracy(combined, y), "ece": _ece(combined, y)},
        "fixed_mix": {"accuracy": _accuracy(fixed, y), "ece": _ece(fixed, y), "weight": best_w},
    }


# One flow on purpose (68 lines): split, fit, calibrate, compare and refit all read the arrays of one embedding pass
# and the same held-out split; the comparison and the example rows are already helpers of their own.
def train_classifier(
    texts: Sequence[str],
    labels: Sequence[str],
    routes: Sequence[RouteSpec],
    encoder,
    *,
    example_vectors: np.ndarray | None = None,
    seed: int = 0,
    c: float = 4.0,
) -> RouteClassifier:
    """Fit, calibrate and compare on an 80/20 split, then refit on everything. `encoder` has `encode_many`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"training needs at least two routes in the labels, got {classes}")
    members = label_members(classes, routes)
    y = np.array([classes.index(label) for label in labels])
    started = time.perf_counter()
    x = encoder.encode_many(list(texts))
    if example_vectors is None:
        example_vectors = encoder.encode_many([e for r in routes for e in r.examples])
    index = ExampleIndex(routes, example_vectors)
    ex_x, ex_y = _example_set(routes, classes, example_vectors)
    log.info("embedded %d labelled messages in %.1fs", len(texts), time.perf_counter() - started)

    counts = np.bincount(y, minlength=len(classes))
    stratify = y if counts.min() >= 2 else None
    tr, ho = train_test_split(np.arange(len(y)), test_size=0.2, random_state=seed, stratify=stratify)

    def fit(rows: np.ndarray) -> LogisticRegression:
        model = LogisticRegression(C=c, max_iter=2000, class_weight="balanced")
        weights = np.concatenate([np.ones(len(rows)), np.full(len(ex_y), EXAMPLE_WEIGHT)])
        model.fit(np.vstack([x[rows], ex_x]), np.concatenate([y[rows], ex_y]), sample_weight=weights)
        return model

    model = fit(tr)
    probe = RouteClassifier(classes, model.coef_, model.intercept_, 1.0, encoder.name)
    temperature = _fit_temperature(probe.logits(x[ho]), y[ho])
    probe.temperature = temperature

    # similarity: scores of every route, calibrated on the held-out part, compared in label space
    sim_scores = index.scores_many(x[ho])
    sim_temperature = _fit_temperature(_label_logits(sim_scores, members), y[ho])
    # the gated combination keeps the shipped similarity calibration: it decides where the labels do not reach
    sim_label_p = _to_labels(softmax(sim_scores, DEFAULT_SIM_TEMPERATURE), members)
    probe.anchors = x[tr].astype(np.float32)
    best_w, heldout = _compare_methods(probe.proba(x[ho]), sim_label_p, probe.gate_weight(x[ho]), y[ho])
    # not the held-out winner: that split is in-domain and rewards a classifier that fails on unseen domains
    method = "combined"

    final = fit(np.arange(len(y)))
    return RouteClassifier(
        labels=classes,
        coef=final.coef_.astype(np.float32),
        intercept=final.intercept_.astype(np.float32),
        temperature=temperature,
        embedder=encoder.name,
        sim_temperature=sim_temperature,
        weight=best_w,
        method=method,
        anchors=x.astype(np.float32),
        metrics={
            "heldout": heldout,
            "n_train": int(len(tr)),
            "n_heldout": int(len(ho)),
            "n_total": int(len(y)),
            "label_counts": {label: int(n) for label, n in zip(classes, counts, strict=True)},
            "train_seconds": round(time.perf_counter() - started, 2),
        },
    )


def _label_logits(route_scores: np.ndarray, members: list[list[int]]) -> np.ndarray:
    """Similarity scores in label space: the best route score among each label's routes."""
    return np.stack([route_scores[:, group].max(axis=1) for group in members], axis=1)


def _to_labels(route_p: np.ndarray, members: list[list[int]]) -> np.ndarray:
    out = np.stack([route_p[:, group].sum(axis=1) for group in members], axis=1)
    return out / np.clip(out.sum(axis=1, keepdims=True), 1e-12, None)


def _nll(p: np.ndarray, gold: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(gold)), gold], 1e-12, None))))
