"""The one embedder configuration a process uses, for documents, queries and router examples alike.

Chunks, queries and the router's classifier must share a model and its settings (backend, int8 or not);
building it in one place keeps the CLI, the app and the tests from drifting apart.
"""

from __future__ import annotations

import os

from bot.config import Settings


def configured_embedder(settings: Settings):
    """The shared embedder for these settings; refuses a model whose width does not match the store."""
    for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # BLAS threads fighting torch's on two cores: p95 8x
        os.environ.setdefault(name, "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from knowledge.embedding import get_embedder

    embedder = get_embedder(
        settings.embedding_model,
        device=settings.device,
        batch_size=settings.embed_batch_size,
        quantize=settings.embedding_quantize,
        backend=settings.embedding_backend,
        cache_dir=settings.model_cache_dir / "onnx",
    )
    if embedder.dim != settings.embedding_dim:
        raise ValueError(
            f"embedding model {settings.embedding_model} gives {embedder.dim}-dim vectors but RAGTUNE_EMBEDDING_DIM "
            f"is {settings.embedding_dim}"
        )
    return embedder
