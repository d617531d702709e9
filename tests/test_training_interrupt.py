"""Ctrl-C during training: a checkpoint of the last finished step, `resume` continues exactly there, and the
progress line says steps/s and ETA. A tiny random Llama (no download, a second on CPU) stands in for the model."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from training.encoding import IGNORE_INDEX, EncodedExample
from training.trainer import TrainConfig, TrainingInterrupted, _interrupts_deferred, train_lora

CONFIG = TrainConfig(
    max_steps=5, batch_size=2, learning_rate=1e-2, warmup_steps=0, lora_dropout=0.0, checkpoint_every=50
)
TOKENIZER = SimpleNamespace(pad_token_id=0, eos_token_id=0)


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    return LlamaForCausalLM(config)


def _data() -> list[EncodedExample]:
    rows = []
    for line in range(1, 7):
        ids = [1 + (line * k) % 60 for k in range(1, 9)]
        rows.append(EncodedExample(ids, [IGNORE_INDEX] * 4 + ids[4:], line))
    return rows


def test_ctrl_c_checkpoints_the_last_step_and_resume_continues_exactly(tmp_path: Path) -> None:
    straight: list[float] = []
    train_lora(_model(), TOKENIZER, _data(), [], CONFIG, progress=False, on_step=lambda _s, loss: straight.append(loss))

    def ctrl_c(step: int, _loss: float) -> None:
        if step == 2:
            raise KeyboardInterrupt

    checkpoints = tmp_path / "ckpt"
    with pytest.raises(TrainingInterrupted) as stopped:
        train_lora(_model(), TOKENIZER, _data(), [], CONFIG, checkpoint_dir=checkpoints, progress=False, on_step=ctrl_c)
    assert (stopped.value.step, stopped.value.total_steps) == (2, 5)
    assert stopped.value.checkpoint == checkpoints / "step-2" and (checkpoints / "step-2" / "state.json").is_file()

    resumed: list[float] = []
    _model_out, result = train_lora(_model(), TOKENIZER, _data(), [], CONFIG, checkpoint_dir=checkpoints, resume=True,
                                    progress=False, on_step=lambda _s, loss: resumed.append(loss))  # fmt: skip
    assert result.steps == 5 and [r["step"] for r in result.history] == [1, 2, 3, 4, 5]
    # The same data order, optimizer and schedule: steps 3-5 are those of the run that was never stopped.
    assert resumed == pytest.approx(straight[2:], rel=1e-4)


def test_ctrl_c_without_a_checkpoint_dir_says_nothing_was_saved() -> None:
    def ctrl_c(_step: int, _loss: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as stopped:
        train_lora(_model(), TOKENIZER, _data(), [], CONFIG, progress=False, on_step=ctrl_c)
    assert stopped.value.step == 1 and stopped.value.checkpoint is None


def test_ctrl_c_inside_the_update_is_delivered_after_it() -> None:
    finished = []
    with pytest.raises(KeyboardInterrupt), _interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        finished.append(True)  # still runs: the interrupt waits for the end of the block
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_progress_line_says_steps_per_second_and_eta(capsys) -> None:
    train_lora(_model(), TOKENIZER, _data(), [], replace(CONFIG, max_steps=3), progress=True)
    line = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "3/3 steps" in line and "ETA" in line and "steps/s" in line and "loss=" in line
