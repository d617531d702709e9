"""Hot-loading: an adapter trained (or retrained) while the server runs becomes usable within seconds.

`ragtune train` builds an adapter outside the adapters folder and renames it in whole (training/pipeline.py),
so a folder that appears under `adapters_dir` is complete. The watcher polls that folder (a stat per adapter
every `interval` seconds: cheaper and more portable than inotify) and hands each new or changed adapter to
the generator's `load_adapter(..., replace=True)`. The UI's adapter list and `/v1/models` read the
generator's list on every request, so they show it at once.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from bot.llm.adapters import CONFIG_FILE, WEIGHTS_FILE, find_adapter_dirs

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 2.0

Signature = tuple[int, ...]


def signature(directory: Path) -> Signature:
    """What changes when an adapter is written again: its files' sizes and modification times."""
    stamps: list[int] = []
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            stat = (directory / name).stat()
        except FileNotFoundError:
            stamps += [0, 0]
        else:
            stamps += [stat.st_size, stat.st_mtime_ns]
    return tuple(stamps)


class AdapterWatcher:
    """Loads new and changed adapters under `root` into `generator` from a daemon thread."""

    def __init__(self, generator: Any, root: Path, *, interval: float = DEFAULT_INTERVAL_S) -> None:
        self.generator = generator
        self.root = Path(root)
        self.interval = interval
        # What is there at start counts as seen: the generator loaded it, or skipped it with a warning.
        self._seen: dict[str, Signature] = {
            name: signature(path) for name, path in find_adapter_dirs(self.root).items()
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> AdapterWatcher:
        self._thread = threading.Thread(target=self._run, name="ragtune-adapter-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scan()
            except Exception:  # a bad scan must not end hot-loading for the life of the server
                log.exception("adapter scan of %s failed", self.root)

    def scan(self) -> list[str]:
        """Load what is new or changed since the last scan; the names loaded."""
        loaded = []
        for name, path in find_adapter_dirs(self.root).items():
            current = signature(path)
            if self._seen.get(name) == current:
                continue
            self._seen[name] = current
            try:
                self.generator.load_adapter(name, path, replace=True)
            except (ValueError, OSError) as exc:  # retried only once its files change again
                log.warning("new adapter %s not loaded: %s", name, exc)
            else:
                loaded.append(name)
                log.info("adapter %s is now available (hot-loaded from %s)", name, path)
        return loaded
