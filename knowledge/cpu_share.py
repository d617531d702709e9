"""Who gets the cores: while a chat answer is being generated, bulk embedding (an ingest) steps down to one thread.

On a 2-core machine an upload's embedder ran both cores (ONNX Runtime threads that spin while they wait) and a
chat answer generated alongside it fell from 114 to ~73 tokens/s. The generators mark the time they generate
(`generating()`), and the embedder reads `generation_running()` before each batch: the ingest takes longer, the
person waiting on an answer does not. A process-wide count, not a lock: nothing ever waits on it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

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
