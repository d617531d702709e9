"""Example similarity: a message belongs to the route whose example messages it is closest to.

Each route scores the mean cosine of its k nearest examples (k=3): one stray example cannot win a route
alone, and a route with many examples is not favoured over one with few. Vectors are L2-normalised, so a
cosine is a dot product over a small in-memory matrix (microseconds for hundreds of examples).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from router.routes import RouteSpec

TOP_K = 3


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / max(temperature, 1e-6)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class ExampleIndex:
    """The route examples' vectors, grouped by route."""

    def __init__(self, routes: Sequence[RouteSpec], vectors: np.ndarray, k: int = TOP_K) -> None:
        self.names = [route.name for route in routes]
        self.texts: list[str] = []
        owner: list[int] = []
        for i, route in enumerate(routes):
            self.texts.extend(route.examples)
            owner.extend([i] * len(route.examples))
        if len(self.texts) != len(vectors):
            raise ValueError(f"{len(self.texts)} examples but {len(vectors)} vectors")
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.owner = np.asarray(owner)
        self.members = [np.flatnonzero(self.owner == i) for i in range(len(routes))]
        self.k = k

    def scores_many(self, queries: np.ndarray) -> np.ndarray:
        """(n, routes) mean cosine of the k nearest examples of each route."""
        sims = np.atleast_2d(queries).astype(np.float32, copy=False) @ self.vectors.T
        out = np.empty((sims.shape[0], len(self.members)), dtype=np.float64)
        for j, idx in enumerate(self.members):
            part = sims[:, idx]
            k = min(self.k, part.shape[1])
            top = np.partition(part, part.shape[1] - k, axis=1)[:, -k:]
            out[:, j] = top.mean(axis=1)
        return out

    def explain(self, query: np.ndarray, limit: int = 3) -> tuple[np.ndarray, list[tuple[str, str, float]]]:
        """Route scores for one query and its nearest examples overall as (route, example, cosine)."""
        sims = self.vectors @ query.astype(np.float32, copy=False)
        scores = np.empty(len(self.members), dtype=np.float64)
        for j, idx in enumerate(self.members):
            part = sims[idx]
            k = min(self.k, len(part))
            scores[j] = float(np.sort(part)[-k:].mean())
        order = np.argsort(-sims)[:limit]
        nearest = [(self.names[self.owner[i]], self.texts[i], float(sims[i])) for i in order]
        return scores, nearest
