"""LoRA fine-tuning with a small hand-written loop: fewer moving parts and faster on CPU than `Trainer`.

What it does that matters for speed and quality:
- batches are grouped by length and padded to the batch's longest (not a fixed length): padding is wasted work;
- the loss is the sum over assistant tokens divided by the assistant tokens of the whole accumulated step,
  so gradient accumulation gives the same gradient as one big batch;
- eval loss on a held-out split before training, every `eval_every` steps and at the end, with early stopping
  that restores the best weights;
- checkpoints (adapter, optimizer, scheduler, step) every `checkpoint_every` steps, resumable;
- Ctrl-C saves a checkpoint of the last finished step and raises `TrainingInterrupted` (a KeyboardInterrupt) naming
  it, so an hour of training is never lost to one keystroke; the weight update itself is never cut in half.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from knowledge.cpu_share import default_threads
from training.encoding import IGNORE_INDEX, EncodedExample

log = logging.getLogger(__name__)


# Every linear layer of a Llama-family block (SmolLM2's too): where LoRA goes by default.
LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainConfig:
    """Hyper-parameters; the defaults are measured on SmolLM2 and support replies (docs/training.md)."""

    # The defaults give a visibly styled adapter from ~150 corrected replies in under 10 minutes on 2 CPU cores:
    # LoRA on every linear layer, batch 4, 3 epochs, 2e-3 (docs/training.md has the measurements). q_proj/v_proj
    # only, batch 8, 1 epoch (the earlier defaults) learned the openings but never the team's {{slot}} form (0/16).
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 2e-3  # at 5e-4 a one-epoch adapter stayed as far from the team's replies as the base
    weight_decay: float = 0.0
    warmup_steps: int = 5
    lora_r: int = 8
    lora_alpha: int | None = None  # None: 2 * lora_r, see resolved_lora_alpha
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LINEAR_LAYERS))
    max_length: int = 256
    eval_every: int = 20
    # 1: stop at the first evaluation that does not improve, keeping the best weights. Two 3-epoch runs on ~140
    # support replies both peaked at step 60 of 102 (eval 1.00, then 1.016, 1.017): the last 40% of the steps were
    # thrown away, and the run went past 10 minutes. Raise it for large, noisy evaluation sets.
    patience: int = 1
    min_delta: float = 0.0
    checkpoint_every: int = 20
    seed: int = 0
    threads: int | None = None
    bf16: bool | None = None  # None: bf16 autocast on CUDA when supported, fp32 on CPU (bf16 is slower there)

    @property
    def resolved_lora_alpha(self) -> int:
        """The alpha a run uses: `lora_alpha`, or 2 * `lora_r` when unset, so the scaling alpha / r stays 2 as r
        changes (16 for the default r = 8). The only place this rule lives."""
        return 2 * self.lora_r if self.lora_alpha is None else self.lora_alpha

    def to_json(self) -> dict[str, Any]:
        """The hyper-parameters as recorded with an adapter, alpha as the run used it."""
        return {**asdict(self), "lora_alpha": self.resolved_lora_alpha}


# Files of a checkpoint directory (step-N): the adapter, its best weights so far, and the run's position.
ADAPTER_FILE = "adapter_model.safetensors"
BEST_FILE = "best.safetensors"
STATE_FILE = "state.json"


@dataclass
class TrainState:
    """Where a run stands: what a checkpoint restores besides the adapter, optimizer and scheduler.

    One object that the loop updates and `save`/`load` write and read whole, so a resumed run cannot miss a field.
    """

    step: int = 0
    consumed_batches: int = 0  # batches drawn from the data order; a resumed run skips this many
    history: list[dict[str, float]] = field(default_factory=list)
    eval_loss_before: float | None = None
    best_loss: float = math.inf
    best_step: int = 0
    bad_evals: int = 0  # evaluations in a row without improvement (early stopping)
    best_weights: dict[str, Any] | None = None  # LoRA tensors at best_step, in BEST_FILE beside STATE_FILE

    def save(self, path: Path) -> None:
        """Write the state into the directory `path` (the tensors as safetensors, the rest as JSON)."""
        from safetensors.torch import save_file

        if self.best_weights is not None:
            save_file({k: v.contiguous() for k, v in self.best_weights.items()}, str(path / BEST_FILE))
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "best_weights"}
        (path / STATE_FILE).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: Path) -> TrainState:
        """The state that `save` wrote into the directory `path`."""
        from safetensors.torch import load_file

        state = cls(**json.loads((path / STATE_FILE).read_text()))
        if (path / BEST_FILE).is_file():
            state.best_weights = load_file(str(path / BEST_FILE))
        return state


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the run stopped after `step` of `total_steps`; `checkpoint` holds it (None when there
    was nothing to save: no finished step, or no checkpoint directory)."""

    def __init__(self, step: int, total_steps: int, checkpoint: Path | None) -> None:
        super().__init__(f"training interrupted at step {step} of {total_steps}")
        self.step, self.total_steps, self.checkpoint = step, total_steps, checkpoint


@dataclass
class TrainResult:
    steps: int
    eval_loss_before: float | None
    eval_loss_after: float | None
    best_step: int
    stopped_early: bool
    train_tokens: int
    seconds: float
    trainable_params: int
    total_params: int
    history: list[dict[str, float]]

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.seconds if self.seconds else 0.0

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, then sort inside windows of 50 batches so each batch holds similar lengths; shuffle batch order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(items: list[EncodedExample], pad_id: int) -> dict[str, Any]:
    """Right-pad to the longest item; padded labels are ignored by the loss."""
    import torch

    longest = max(len(item.input_ids) for item in items)
    ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), longest), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def attach_lora(model: Any, config: TrainConfig) -> Any:
    """Wrap `model` in a peft LoRA model (in place) unless it already is one."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        return model
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.resolved_lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _autocast(device: Any, config: TrainConfig) -> Any:
    import torch

    use_bf16 = config.bf16
    if use_bf16 is None:
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


def evaluate_loss(model: Any, examples: list[EncodedExample], pad_id: int, batch_size: int, autocast: Any) -> float:
    """Mean loss per assistant token over `examples` (the figure eval loss before/after reports)."""
    import torch

    if not examples:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    total_loss, total_tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = collate([examples[i] for i in order[start : start + batch_size]], pad_id)
            tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                out = model(**batch, num_items_in_batch=tokens)
            total_loss += float(out.loss) * tokens
            total_tokens += tokens
    model.train(was_training)
    return total_loss / max(total_tokens, 1)


def _lora_state(model: Any) -> dict[str, Any]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def _latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    found = sorted(checkpoint_dir.glob(f"step-*/{STATE_FILE}"), key=lambda p: int(p.parent.name.split("-")[1]))
    return found[-1].parent if found else None


@dataclass
class _Run:
    """The live objects of one run, built once by `_start_run` and shared by the steps of `train_lora`."""

    config: TrainConfig
    model: Any
    optimizer: Any
    scheduler: Any
    params: list[Any]  # the trainable (LoRA) parameters
    device: Any
    autocast: Any
    pad_id: int
    total_steps: int

    def eval_loss(self, examples: list[EncodedExample]) -> float:
        return evaluate_loss(self.model, examples, self.pad_id, self.config.batch_size, self.autocast)


def train_lora(
    model: Any,
    tokenizer: Any,
    train: list[EncodedExample],
    evaluation: list[EncodedExample],
    config: TrainConfig,
    *,
    output_dir: Path | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[Any, TrainResult]:
    """Fine-tune a LoRA adapter on `train`; return the peft model (best weights) and what happened.

    `model` is the base causal LM (it is wrapped in place) or an existing peft model. The adapter is saved as a
    plain peft directory in `output_dir` when given.
    """
    if not train:
        raise ValueError("no training examples")
    run = _start_run(model, tokenizer, train, config)
    state = _resume(run, checkpoint_dir, resume)
    if state.eval_loss_before is None and evaluation:
        state.eval_loss_before = state.best_loss = run.eval_loss(evaluation)
        log.info("eval loss before training: %.4f", state.eval_loss_before)
    batches = _batch_order(train, config, skip=state.consumed_batches)
    started = time.perf_counter()
    trained_tokens, stopped_early = _train_steps(
        run, state, train, evaluation, batches, checkpoint_dir, progress, on_step
    )
    seconds = time.perf_counter() - started
    eval_after = _restore_best(run, state, evaluation)
    if output_dir is not None:
        run.model.save_pretrained(str(output_dir))
    if checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    result = TrainResult(
        steps=state.step,
        eval_loss_before=state.eval_loss_before,
        eval_loss_after=eval_after,
        best_step=state.best_step or state.step,
        stopped_early=stopped_early,
        train_tokens=trained_tokens,
        seconds=seconds,
        trainable_params=sum(p.numel() for p in run.params),
        total_params=sum(p.numel() for p in run.model.parameters()),
        history=state.history,
    )
    return run.model, result


def _start_run(model: Any, tokenizer: Any, train: list[EncodedExample], config: TrainConfig) -> _Run:
    """Seed, wrap the model in LoRA, and build the optimizer with its warm-up then linear-decay schedule."""
    import torch

    torch.set_num_threads(default_threads(config.threads))  # not torch's default: see default_threads
    random.seed(config.seed)
    torch.manual_seed(config.seed)  # before attach_lora: it draws the initial LoRA weights
    model = attach_lora(model, config)
    device = next(model.parameters()).device
    steps_per_epoch = max(1, math.ceil(len(train) / config.batch_size) // config.grad_accum)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)

    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        remaining = max(1, total_steps - config.warmup_steps)
        return max(0.0, 1.0 - (step - config.warmup_steps) / remaining)

    return _Run(
        config=config,
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        params=params,
        device=device,
        autocast=_autocast(device, config),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        total_steps=total_steps,
    )


def _resume(run: _Run, checkpoint_dir: Path | None, resume: bool) -> TrainState:
    """The state of the latest checkpoint, with its adapter, optimizer and scheduler loaded into `run`; else fresh."""
    checkpoint = _latest_checkpoint(checkpoint_dir) if (resume and checkpoint_dir) else None
    if checkpoint is None:
        if resume:
            log.info("no checkpoint to resume from; starting fresh")
        return TrainState()
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = TrainState.load(checkpoint)
    set_peft_model_state_dict(run.model, load_file(str(checkpoint / ADAPTER_FILE)))
    run.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    run.scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
    log.info("resuming from %s (step %d of %d)", checkpoint, state.step, run.total_steps)
    return state


def _batch_order(train: list[EncodedExample], config: TrainConfig, skip: int) -> Iterator[list[int]]:
    """Length-grouped batches epoch after epoch (seeded per epoch), the first `skip` dropped: a resumed run sees
    the same data order as an uninterrupted one."""

    def epochs() -> Iterator[list[int]]:
        epoch = 0
        while True:
            yield from length_grouped_batches(
                [len(e.input_ids) for e in train], config.batch_size, random.Random(config.seed + epoch)
            )
            epoch += 1

    batches = epochs()
    for _ in range(skip):
        next(batches)
    return batches


def _train_steps(
    run: _Run,
    state: TrainState,
    train: list[EncodedExample],
    evaluation: list[EncodedExample],
    batches: Iterator[list[int]],
    checkpoint_dir: Path | None,
    progress: bool,
    on_step: Callable[[int, float], None] | None,
) -> tuple[int, bool]:
    """Optimizer steps until `total_steps` or an early stop; returns (tokens trained on here, stopped early)."""
    from tqdm.auto import tqdm

    config, stopped_early, trained_tokens = run.config, False, 0
    run.model.train()
    bar = tqdm(total=run.total_steps, initial=state.step, disable=not progress, **PROGRESS)
    try:
        while state.step < run.total_steps:
            micro = [collate([train[i] for i in next(batches)], run.pad_id) for _ in range(config.grad_accum)]
            loss, tokens = _backward(run, micro)  # Ctrl-C here loses only this step's gradients
            with _interrupts_deferred():  # the update and its bookkeeping happen whole or not at all
                _update(run)
                state.step += 1
                state.consumed_batches += config.grad_accum
            trained_tokens += tokens
            record: dict[str, float] = {"step": state.step, "loss": loss, "lr": run.scheduler.get_last_lr()[0]}
            bar.set_postfix(loss=f"{loss:.3f}")
            bar.update(1)
            if evaluation and (state.step % config.eval_every == 0 or state.step == run.total_steps):
                stopped_early = _evaluate(run, state, evaluation, record)
                bar.set_postfix(loss=f"{loss:.3f}", eval=f"{record['eval_loss']:.3f}")
            state.history.append(record)
            if on_step:
                on_step(state.step, loss)
            last = state.step >= run.total_steps or stopped_early
            if checkpoint_dir and state.step % config.checkpoint_every == 0 and not last:
                _save_checkpoint(checkpoint_dir, run, state)
            if stopped_early:
                break
    except KeyboardInterrupt:
        bar.close()
        raise _interrupted(run, state, checkpoint_dir) from None
    bar.close()
    return trained_tokens, stopped_early


# The progress line: steps done, elapsed, ETA and speed, said in words (tqdm's default shows "1.2s/step" or
# "<00:30" without saying which is which).
PROGRESS = {
    "desc": "training",
    "unit": " steps",
    "dynamic_ncols": True,
    "bar_format": "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps "
    "[{elapsed} elapsed, ETA {remaining}, {rate_noinv_fmt}{postfix}]",
}


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block until the block is done, then deliver it as the previous
    handler would have. Only the main thread receives signals; elsewhere (or under a non-Python handler) it is a
    plain block."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and callable(previous):
        previous(signal.SIGINT, None)


def _interrupted(run: _Run, state: TrainState, checkpoint_dir: Path | None) -> TrainingInterrupted:
    """Checkpoint the last finished step (unless that step is already saved) so `resume` continues from it."""
    checkpoint = None
    if checkpoint_dir is not None and state.step > 0:
        run.optimizer.zero_grad(set_to_none=True)  # a half-done step's gradients: not part of any step
        checkpoint = checkpoint_dir / f"step-{state.step}"
        if not (checkpoint / STATE_FILE).is_file():
            _save_checkpoint(checkpoint_dir, run, state)
    log.warning("training interrupted at step %d of %d", state.step, run.total_steps)
    return TrainingInterrupted(state.step, run.total_steps, checkpoint)


def _backward(run: _Run, micro: list[dict[str, Any]]) -> tuple[float, int]:
    """Gradients of one optimizer step over `grad_accum` micro-batches; returns (summed loss, tokens incl. prompt
    tokens). Nothing but the gradients changes, so an interrupted call leaves the run as it was.

    The loss is divided by the assistant tokens of the whole step, so accumulation equals one big batch."""
    step_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro)
    loss_total, tokens = 0.0, 0
    for batch in micro:
        tokens += int(batch["attention_mask"].sum())
        batch = {k: v.to(run.device) for k, v in batch.items()}
        with run.autocast:
            out = run.model(**batch, num_items_in_batch=step_tokens)
        out.loss.backward()
        loss_total += float(out.loss.detach())
    return loss_total, tokens


def _update(run: _Run) -> None:
    """Apply the gradients: clip, optimizer and scheduler step, clear."""
    import torch

    torch.nn.utils.clip_grad_norm_(run.params, 1.0)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)


def _evaluate(run: _Run, state: TrainState, evaluation: list[EncodedExample], record: dict[str, float]) -> bool:
    """Put the eval loss in `record`, keep the best weights, and say whether early stopping ends the run."""
    eval_loss = run.eval_loss(evaluation)
    record["eval_loss"] = eval_loss
    if eval_loss < state.best_loss - run.config.min_delta:
        state.best_loss, state.best_step, state.bad_evals = eval_loss, state.step, 0
        state.best_weights = _lora_state(run.model)
        return False
    state.bad_evals += 1
    if run.config.patience and state.bad_evals >= run.config.patience:
        log.info("early stop at step %d: eval loss has not improved for %d evals", state.step, state.bad_evals)
        return True
    return False


def _restore_best(run: _Run, state: TrainState, evaluation: list[EncodedExample]) -> float | None:
    """Put the best weights back if a later step was worse; return the eval loss after training."""
    from peft import set_peft_model_state_dict

    if state.best_weights is not None and state.best_step != state.step:
        set_peft_model_state_dict(run.model, state.best_weights)
        log.info("restored the best adapter weights (step %d)", state.best_step)
    eval_after = state.best_loss if evaluation and state.best_weights is not None else None
    if evaluation and eval_after is None:
        eval_after = run.eval_loss(evaluation)
    run.model.eval()
    return eval_after


def _save_checkpoint(checkpoint_dir: Path, run: _Run, state: TrainState) -> None:
    """Write step-N atomically (temp dir + rename), then drop older checkpoints."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    target = checkpoint_dir / f"step-{state.step}"
    partial = checkpoint_dir / f".partial-{state.step}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    lora = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(run.model).items()}
    save_file(lora, str(partial / ADAPTER_FILE))
    torch.save(run.optimizer.state_dict(), partial / "optimizer.pt")
    torch.save(run.scheduler.state_dict(), partial / "scheduler.pt")
    state.save(partial)  # last: a step-N with a state file is complete
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    for old in checkpoint_dir.glob("step-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint saved: %s", target)
