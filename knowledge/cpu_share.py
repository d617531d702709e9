"""Who gets the cores: while a chat answer is being generated, bulk embedding (an ingest) steps down to one thread.

On a 2-core machine an upload's embedder ran both cores (ONNX Runtime threads that spin while they wait) and a
chat answer generated alongside it fell from 114 to ~73 tokens/s. The generators mark the time they generate
(`generating()`), and the embedder reads `generation_running()` before each batch: the ingest takes longer, the
person waiting on an answer does not. A process-wide count, not a lock: nothing ever waits on it.

It is also the one home of how many threads torch and ONNX Runtime use when nothing is configured
(`default_threads`): generation, embedding and training all read it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def default_threads(configured: int | None = None) -> int:
    """Intra-op threads: the setting, else OMP_NUM_THREADS (benchmarks and deployments pin it), else every core
    this process may run on.

    Not torch's own default: torch takes its thread count from MKL_NUM_THREADS when OMP_NUM_THREADS is unset, and
    the serving process sets MKL_NUM_THREADS=1 for the embedder (BLAS threads fighting torch's), which silently
    halved generation speed on two cores, and halved training launched from the app (a child inherits the variable).
    """
    if configured:
        return configured
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else max(1, os.cpu_count() or 1)


_lock = threading.Lock()
_running = 0


@contextmanager
def generating() -> Iterator[None]:
    """Mark a generation in progress for as long as the block runs."""
    global _running
    with _lock:
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1


def generation_running() -> bool:
    return _running > 0
