"""The embedder's ONNX Runtime backend: same model, same vectors (cosine >= 0.99), less time per chunk and per query.

Two sessions share one exported file: one for batches on `threads` threads, and one on a single thread for
one-message queries, where a thread pool only adds wake-up latency on a small shared CPU. Tokenisation uses
the `tokenizers` fast path directly; batches are sorted by token count so padding stays small.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import numpy as np

from knowledge.cpu_share import default_threads, generation_running
from knowledge.onnx_export import MODEL_FILES, OnnxVariant, ensure_onnx_export

log = logging.getLogger(__name__)
MAX_BATCH = 32


class OnnxEncoder:
    """Runs an exported sentence-transformers model: texts in, L2-normalised float32 vectors out."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        variant: OnnxVariant = "int8",
        cache_dir: str | Path | None = None,
        threads: int | None = None,
        query_threads: int | None = 1,
        optimization: Literal["basic", "extended", "all"] = "all",
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if variant not in MODEL_FILES:
            raise ValueError(f"ONNX variant must be one of {sorted(MODEL_FILES)}, not {variant!r}")
        self.folder = ensure_onnx_export(model_dir, cache_dir)
        manifest = json.loads((self.folder / "export.json").read_text())
        self.dim = int(manifest["dim"])
        self.max_length = int(manifest["max_length"])
        self.variant: OnnxVariant = variant
        self.path = self.folder / MODEL_FILES[variant]
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.no_padding()
        self.pad_id = int(self.tokenizer.token_to_id("[PAD]") or 0)
        self.threads = threads or default_threads()
        levels = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        self._level = levels[optimization]
        self.session = self._session(self.threads)
        self._query_threads = query_threads
        self.query_session = (
            self.session if not query_threads or query_threads == self.threads else self._session(query_threads)
        )
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._one_thread = None  # built on first need by _bulk_session

    def _session(self, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = self._level
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        return ort.InferenceSession(str(self.path), sess_options=options, providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Vectors in input order; batches are formed over texts sorted by token count.

        Batches are capped at 32 texts: ORT's CPU kernels ran 8-32 at ~50 chunks/s and 64 at ~48 (SciFact chunks,
        2 threads), the working set of a bigger batch falling out of cache.
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch_size = max(1, min(batch_size, MAX_BATCH))
        encodings = self.tokenizer.encode_batch(list(texts))
        order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chosen = order[start : start + batch_size]
            session = self.query_session if len(texts) == 1 else self._bulk_session()
            out[chosen] = self._run(session, [encodings[i] for i in chosen])
        return out

    def _bulk_session(self):
        """Every core, unless a chat answer is being generated: then one thread, asked again before each batch
        (knowledge/cpu_share.py; measured: decoding alongside a 2-thread ingest fell to 64% of its speed)."""
        if self.threads == 1 or not generation_running():
            return self.session
        if self._one_thread is None:
            self._one_thread = self.query_session if self._query_threads == 1 else self._session(1)
        return self._one_thread

    def _run(self, session, encodings) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = 1
            types[row, :n] = encoding.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0].astype(np.float32)
