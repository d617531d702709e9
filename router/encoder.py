"""A single-message encoding path fast enough for a per-message decision.

`Embedder.embed_query` goes through sentence-transformers' batch machinery, and on a small shared CPU torch's
intra-op threads and BLAS threads fight each other: one short message then costs 12-100 ms. Running the
same model's forward pass directly, on one torch thread, keeps it near 10 ms and gives the same vector
(cosine 1.0). The thread count is restored after each call so generation elsewhere keeps its threads.
An embedder on the ONNX Runtime backend needs none of this: its `embed_query` already runs one text on a
single-thread session with little per-call overhead, so the encoder calls it directly.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_blas_limited = False


def limit_blas_threads() -> None:
    """One BLAS thread for the process: the router's matrix products are tiny and threads only add contention."""
    global _blas_limited
    if _blas_limited:
        return
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
        _blas_limited = True
    except Exception as exc:  # pragma: no cover - threadpoolctl ships with scikit-learn
        log.debug("could not limit BLAS threads: %s", exc)


class QueryEncoder:
    """Encodes one message with the knowledge base's embedder, L2-normalised, on `threads` torch threads."""

    def __init__(self, embedder: Any, *, threads: int | None = 1) -> None:
        self.embedder = embedder
        self.threads = threads
        self.name = str(getattr(embedder, "name", type(embedder).__name__))
        model = getattr(embedder, "model", None)
        on_torch = getattr(embedder, "backend", "torch") == "torch"
        self._st = (
            model if on_torch and model is not None and hasattr(model, "forward") and _can_preprocess(model) else None
        )

    def encode(self, text: str) -> np.ndarray:
        if self._st is None:
            return np.asarray(self.embedder.embed_query(text), dtype=np.float32)
        import torch

        previous = torch.get_num_threads()
        change = self.threads is not None and previous != self.threads
        if change:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                features = _preprocess(self._st, text)
                device = getattr(self._st, "device", None)
                if device is not None and str(device) != "cpu":
                    features = {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}
                vector = self._st.forward(features)["sentence_embedding"][0].float()
                vector = torch.nn.functional.normalize(vector, dim=0)
                return vector.cpu().numpy().astype(np.float32, copy=False)
        finally:
            if change:
                torch.set_num_threads(previous)

    def encode_many(self, texts: list[str]) -> np.ndarray:
        """Batches go through the embedder itself (it batches well); vectors match `encode`."""
        return np.asarray(self.embedder.embed_documents(list(texts)), dtype=np.float32)


def _can_preprocess(model: Any) -> bool:
    return hasattr(model, "preprocess") or hasattr(model, "tokenize")


def _preprocess(model: Any, text: str) -> dict:
    if hasattr(model, "preprocess"):
        return model.preprocess([text])
    return model.tokenize([text])  # older sentence-transformers
