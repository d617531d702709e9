"""TrainConfig's defaults and alpha rule, and TrainState's checkpoint round trip (no model needed)."""

from __future__ import annotations

import math
from pathlib import Path

import click
import torch

from bot.cli.training_commands import train_command
from training.trainer import TrainConfig, TrainState


def test_lora_alpha_is_twice_r_unless_set() -> None:
    assert TrainConfig().resolved_lora_alpha == 16
    assert TrainConfig(lora_r=4).resolved_lora_alpha == 8
    assert TrainConfig(lora_r=4, lora_alpha=4).resolved_lora_alpha == 4
    assert TrainConfig(lora_r=4).to_json()["lora_alpha"] == 8  # recorded as the run used it


def test_cli_defaults_come_from_train_config() -> None:
    defaults = TrainConfig()
    options = {p.name: p.default for p in train_command.params if isinstance(p, click.Option)}
    shared = "epochs max_steps batch_size grad_accum learning_rate lora_r lora_alpha max_length eval_every patience"
    for name in [*shared.split(), "checkpoint_every", "seed", "threads"]:
        assert options[name] == getattr(defaults, name), name
    assert options["target_modules"] == ",".join(defaults.target_modules)


def test_train_state_save_then_load(tmp_path: Path) -> None:
    fresh = TrainState()
    fresh.save(tmp_path)
    assert TrainState.load(tmp_path) == fresh and math.isinf(TrainState.load(tmp_path).best_loss)
    history = [{"step": 1, "loss": 2.5}]
    state = TrainState(3, 6, history, eval_loss_before=3.0, best_loss=2.0, best_step=2, bad_evals=1)
    state.best_weights = {"w": torch.ones(2, 3)}
    other = tmp_path / "other"
    other.mkdir()
    state.save(other)
    loaded = TrainState.load(other)
    assert torch.equal(loaded.best_weights["w"], state.best_weights["w"])
    loaded.best_weights = state.best_weights = None
    assert loaded == state
