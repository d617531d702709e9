"""From a data file to a registered adapter, in two halves: `prepare` (no model) and `fine_tune` (model given).

The split keeps the model load out of the first half, so a missing file, a wrong column or a bad row is reported
in a second, and lets the caller (the CLI) load whichever base model it serves and hand it in.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.datasets import Dataset, OnError, Split, read_dataset, split_examples
from training.encoding import encode_examples
from training.registry import AdapterRecord, AdapterRegistry
from training.trainer import TrainConfig, train_lora

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    dataset: Dataset
    split: Split
    options: dict[str, Any]


def prepare(
    path: Path | str,
    *,
    input_col: str | None = None,
    output_col: str | None = None,
    system_prompt: str | None = None,
    on_error: OnError = "skip",
    limit: int | None = None,
    eval_split: float = 0.1,
    seed: int = 0,
) -> Prepared:
    """Read, validate and split the data; raises `DatasetError`/`FileNotFoundError` with the reason."""
    dataset = read_dataset(
        path, input_col=input_col, output_col=output_col, system_prompt=system_prompt, on_error=on_error
    )
    split = split_examples(dataset.examples, eval_split, seed=seed, limit=limit)
    options = {
        "data": str(Path(path).resolve()),
        "format": dataset.format,
        "input_col": input_col,
        "output_col": output_col,
        "system_prompt": system_prompt,
        "limit": limit,
        "eval_split": eval_split,
        "on_error": on_error,
    }
    return Prepared(dataset, split, options)


def fine_tune(
    model: Any,
    tokenizer: Any,
    base_model: str,
    prepared: Prepared,
    name: str,
    registry: AdapterRegistry,
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
) -> tuple[Any, AdapterRecord]:
    """Encode, train, save the peft directory atomically and register it; return the peft model and the record."""
    target = registry.path_for(name)
    on_error = prepared.options["on_error"]
    train, train_problems = encode_examples(tokenizer, prepared.split.train, config.max_length, on_error)
    evaluation, eval_problems = encode_examples(tokenizer, prepared.split.evaluation, config.max_length, on_error)
    if not train:
        raise ValueError(f"no training example fits in --max-length {config.max_length} tokens")
    # Built outside the top level of adapters_dir, so a generator scanning it never sees half an adapter.
    partial = registry.adapters_dir / ".checkpoints" / f".partial-{name}"
    shutil.rmtree(partial, ignore_errors=True)
    peft_model, result = train_lora(
        model,
        tokenizer,
        train,
        evaluation,
        config,
        output_dir=partial,
        checkpoint_dir=registry.checkpoint_dir(name),
        resume=resume,
        progress=progress,
    )
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(target)
    skipped = [str(p) for p in prepared.dataset.problems + train_problems + eval_problems]
    record = _record(name, base_model, target, prepared, config, result, len(train), len(evaluation), skipped)
    registry.register(record)
    return peft_model, record


def _record(
    name: str,
    base_model: str,
    target: Path,
    prepared: Prepared,
    config: TrainConfig,
    result: Any,
    train_examples: int,
    eval_examples: int,
    skipped: list[str],
) -> AdapterRecord:
    """The registry entry of a finished adapter: its data, settings and what the training measured."""
    return AdapterRecord(
        name=name,
        base_model=base_model,
        path=str(target),
        data_sha256=prepared.dataset.sha256,
        rows=train_examples,
        hyperparameters={**config.to_json(), **prepared.options},
        eval_loss_before=result.eval_loss_before,
        eval_loss_after=result.eval_loss_after,
        metrics={
            "train_examples": train_examples,
            "eval_examples": eval_examples,
            "skipped_rows": len(skipped),
            "skipped": skipped[:50],
            "steps": result.steps,
            "best_step": result.best_step,
            "stopped_early": result.stopped_early,
            "train_tokens": result.train_tokens,
            "train_seconds": round(result.seconds, 2),
            "tokens_per_second": round(result.tokens_per_second, 1),
            "trainable_params": result.trainable_params,
            "total_params": result.total_params,
            "trainable_fraction": result.trainable_fraction,
            "adapter_bytes": sum(p.stat().st_size for p in target.glob("adapter_model.*")),
            "history": result.history,
        },
    )
