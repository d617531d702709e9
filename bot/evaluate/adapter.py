"""`--adapter auto`: a small LoRA adapter trained on the data set's *other* questions, cached by data hash.

"RAG or fine-tuning?" needs a fine-tuned model to compare. When the user has none, the fairest cheap one is an
adapter trained on question/answer pairs of the same data that are NOT among the evaluated questions, so the
lora mode is scored on questions it never saw. Training is a one-off: the adapter is named after a hash of its
training rows and settings, so a rerun finds it registered and skips training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_TRAIN_ROWS = 320
DEFAULT_TRAIN_STEPS = 40


@dataclass
class AutoAdapter:
    name: str
    trained: bool  # False: found in the registry from an earlier run
    rows: int
    seconds: float
    record: Any = None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)[:24].strip("-") or "data"


def ensure_adapter(
    settings: Any,
    pool: Any,
    data_name: str,
    pairs: Sequence[tuple[str, str]],
    *,
    steps: int = DEFAULT_TRAIN_STEPS,
    seed: int = 0,
    progress: bool = True,
) -> AutoAdapter:
    """Return a registered adapter trained on `pairs`, training it first when no identical one exists."""
    from training.pipeline import prepare
    from training.registry import AdapterNotFound, AdapterRegistry

    if len(pairs) < 4:
        raise ValueError(f"--adapter auto: only {len(pairs)} held-out question/answer pairs; need at least 4")
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]
    body = "\n".join(json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rows) + "\n"
    key = hashlib.sha256(f"{body}|steps={steps}|seed={seed}|{settings.generator_model}".encode()).hexdigest()[:10]
    name = f"eval-{_slug(data_name)}-{key}"
    registry = AdapterRegistry(settings.adapters_dir, pool)
    try:
        record = registry.get(name)
        log.info("reusing adapter %s trained earlier on %d rows", name, len(rows))
        return AutoAdapter(name, False, len(rows), 0.0, record)
    except AdapterNotFound:
        pass
    started = time.perf_counter()
    data_file = Path(settings.state_dir) / "eval" / f"{name}.jsonl"
    data_file.parent.mkdir(parents=True, exist_ok=True)
    data_file.write_text(body, encoding="utf-8")
    prepared = prepare(data_file, eval_split=0.1, seed=seed)
    record = _train(settings, prepared, name, registry, steps, seed, progress)
    seconds = time.perf_counter() - started
    log.info("trained adapter %s on %d rows in %.0fs", name, len(rows), seconds)
    return AutoAdapter(name, True, len(rows), seconds, record)


def _train(settings: Any, prepared: Any, name: str, registry: Any, steps: int, seed: int, progress: bool) -> Any:
    from bot.llm.loading import load_base_model
    from training.pipeline import fine_tune
    from training.trainer import TrainConfig

    config = TrainConfig(
        max_steps=steps,
        batch_size=8,
        max_length=160,
        learning_rate=5e-4,
        target_modules=["q_proj", "v_proj"],  # the quick adapter its reports were measured with, not train's default
        warmup_steps=min(5, max(0, steps - 1)),
        eval_every=max(steps, 1),
        checkpoint_every=10**6,
        patience=0,
        seed=seed,
    )
    loaded = load_base_model(settings.generator_model, settings.model_cache_dir, device="cpu")
    _model, record = fine_tune(
        loaded.model, loaded.tokenizer, loaded.location.label, prepared, name, registry, config, progress=progress
    )
    return record
