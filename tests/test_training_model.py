"""LoRA training with the real SmolLM2 base: label masking, a tiny run that learns, resume, registry, CLI.

Kept tiny (a handful of short examples, a few steps, max length 128) so the file runs in about a minute on a
shared two-core CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot.cli import cli as cli_main
from bot.llm.loading import load_base_model
from knowledge.cpu_share import default_threads
from training.datasets import Example, read_dataset, split_examples
from training.encoding import IGNORE_INDEX, encode_example, encode_examples
from training.registry import AdapterNotFound, AdapterRecord, AdapterRegistry
from training.trainer import TrainConfig, evaluate_loss, train_lora

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
# Share the de-quantised weights between runs: the first load of the GGUF takes ~40 s, a cached one under 1 s.
MODEL_CACHE = Path(os.environ.get("RAGTUNE_TEST_MODEL_CACHE", REPO_ROOT / ".ragtune" / "models"))

REPLIES = [
    ("Where is my order?", "Your order {{Order Number}} is on its way. Track it at {{Tracking URL}}."),
    ("I want a refund", "Your refund for {{Order Number}} is being processed. Expect it in {{Days}} days."),
    ("Change my address", "Your address is updated to {{Address}}. Reach us at {{Phone Number}}."),
    ("Cancel my purchase", "Your order {{Order Number}} is cancelled. Reach us at {{Phone Number}}."),
    ("How do I pay?", "Your payment options are listed at {{Website URL}}. Reach us at {{Phone Number}}."),
    ("Where is my invoice?", "Your invoice for {{Order Number}} is at {{Website URL}}."),
]


def _examples() -> list[Example]:
    return [
        Example([{"role": "user", "content": q}, {"role": "assistant", "content": a}], line)
        for line, (q, a) in enumerate(REPLIES, start=1)
    ]


def _fresh_base():
    return load_base_model("smollm2", MODEL_CACHE, device="cpu")


@pytest.fixture(scope="module")
def tokenizer():
    return _fresh_base().tokenizer


TINY = dict(batch_size=3, max_length=128, learning_rate=3e-3, warmup_steps=0, eval_every=2, patience=0, seed=0)


def test_labels_cover_exactly_the_assistant_replies_and_end_token(tokenizer) -> None:
    example = Example(
        [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Refund please"},
            {"role": "assistant", "content": "Refund {{Order Number}} started."},
        ],
        line=1,
    )
    encoded = encode_example(tokenizer, example)
    segments, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label == IGNORE_INDEX:
            if current:
                segments.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    if current:
        segments.append(current)
    decoded = [tokenizer.decode(segment) for segment in segments]
    assert decoded == ["Hello! How can I help?<|im_end|>", "Refund {{Order Number}} started.<|im_end|>"]


def test_a_reply_of_weight_zero_is_context_not_learned(tokenizer) -> None:
    messages = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?", "weight": 0},
        {"role": "user", "content": "Refund please"},
        {"role": "assistant", "content": "Refund {{Order Number}} started."},
    ]
    encoded = encode_example(tokenizer, Example(messages, line=1))
    learned = [token for token, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(learned) == "Refund {{Order Number}} started.<|im_end|>"
    assert "Hello! How can I help?" in tokenizer.decode(encoded.input_ids)  # still read as context


def test_overlong_examples_are_reported_by_line(tokenizer) -> None:
    examples = _examples() + [
        Example([{"role": "user", "content": "q"}, {"role": "assistant", "content": "w " * 300}], 9)
    ]
    encoded, problems = encode_examples(tokenizer, examples, max_length=128)
    assert len(encoded) == len(REPLIES)
    assert [p.line for p in problems] == [9] and "too long" in problems[0].reason
    with pytest.raises(ValueError, match="line 9"):
        encode_examples(tokenizer, examples, max_length=128, on_error="fail")


def test_tiny_run_lowers_loss_and_saves_a_loadable_adapter(tmp_path: Path, tokenizer, db, monkeypatch) -> None:
    import torch
    from peft import PeftModel

    base = _fresh_base()
    encoded, _ = encode_examples(base.tokenizer, _examples(), max_length=128)
    pad = base.tokenizer.pad_token_id
    before = evaluate_loss(base.model, encoded, pad, 3, torch.autocast("cpu", enabled=False))
    config = TrainConfig(max_steps=4, **TINY)
    out = tmp_path / "adapter"
    # launched from the app, training inherits MKL_NUM_THREADS=1 (set for the embedder): it must still use every core
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    model, result = train_lora(base.model, base.tokenizer, encoded, encoded[:2], config, output_dir=out, progress=False)
    assert torch.get_num_threads() == default_threads()
    torch.set_num_threads(previous)
    after = evaluate_loss(model, encoded, pad, 3, torch.autocast("cpu", enabled=False))
    assert after < before * 0.9, (before, after)
    assert result.eval_loss_after < result.eval_loss_before
    assert result.trainable_fraction < 0.02
    assert result.train_tokens == 2 * sum(len(e.input_ids) for e in encoded)  # 4 steps of 3 = two epochs of 6
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()

    reloaded = PeftModel.from_pretrained(_fresh_base().model, str(out))
    sample = torch.tensor([encoded[0].input_ids])
    with torch.no_grad():
        assert torch.allclose(model(sample).logits, reloaded(sample).logits, atol=1e-4)

    registry = AdapterRegistry(tmp_path, db.pool)
    record = AdapterRecord("tiny-test", "smollm2-test", str(out), "0" * 64, len(encoded), config.to_json(),
                           result.eval_loss_before, result.eval_loss_after, {"steps": result.steps})  # fmt: skip
    registry.register(record)
    assert json.loads((out / "ragtune.json").read_text())["base_model"] == "smollm2-test"
    assert [r.name for r in registry.list(base_model="smollm2-test")] == ["tiny-test"]
    assert registry.list(base_model="another-base") == []
    assert registry.get("tiny-test").hyperparameters["lora_r"] == 8
    registry.delete("tiny-test")
    assert not out.exists()
    with pytest.raises(AdapterNotFound):
        registry.get("tiny-test")


def test_interrupted_run_resumes_from_checkpoint(tmp_path: Path) -> None:
    base = _fresh_base()
    encoded, _ = encode_examples(base.tokenizer, _examples(), max_length=128)
    config = TrainConfig(max_steps=3, checkpoint_every=1, **TINY)
    checkpoints = tmp_path / "ckpt"

    def crash(step: int, _loss: float) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # Ctrl-C after step 2: step 2 is checkpointed (TrainingInterrupted)
        train_lora(base.model, base.tokenizer, encoded, [], config, checkpoint_dir=checkpoints, progress=False,
                   on_step=crash)  # fmt: skip
    assert (checkpoints / "step-2" / "state.json").is_file()
    seen: list[int] = []
    _model, result = train_lora(_fresh_base().model, base.tokenizer, encoded, [], config, checkpoint_dir=checkpoints,
                                resume=True, progress=False, on_step=lambda s, _l: seen.append(s))  # fmt: skip
    assert seen == [3] and result.steps == 3 and len(result.history) == 3
    assert not checkpoints.exists()  # cleaned up after a finished run


def _cli_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(MODEL_CACHE.resolve())
    return {"RAGTUNE_HOME": str(home), "RAGTUNE_DATABASE_URL": database_url, "RAGTUNE_DEVICE": "cpu"}


def test_cli_checks_data_before_loading_the_model(tmp_path: Path, database_url: str, monkeypatch) -> None:
    import bot.llm.loading

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model must not be loaded for bad input")

    monkeypatch.setattr(bot.llm.loading, "load_base_model", no_model)
    runner = CliRunner()
    env = _cli_env(tmp_path, database_url)
    missing = runner.invoke(cli_main, ["train", str(tmp_path / "nope.jsonl"), "--name", "x"], env=env)
    assert missing.exit_code == 2 and "no such file" in missing.output
    data = tmp_path / "d.csv"
    data.write_text("question,answer\nhi,hello\n")
    unknown = runner.invoke(cli_main, ["train", str(data), "--name", "x", "--input-col", "q", "--output-col", "a"],
                            env=env)  # fmt: skip
    assert unknown.exit_code == 2 and "unknown column" in unknown.output and "question, answer" in unknown.output
    bad_name = runner.invoke(cli_main, ["train", str(data), "--name", "no/slash"], env=env)
    assert bad_name.exit_code == 2 and "adapter name" in bad_name.output


def test_cli_train_then_list_show_delete(tmp_path: Path, database_url: str) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in REPLIES) + '{"q": "x", "a": 3}\n')
    runner = CliRunner()
    env = _cli_env(tmp_path, database_url)
    trained = runner.invoke(
        cli_main,
        ["train", str(data), "--name", "cli-tiny", "--input-col", "q", "--output-col", "a", "--max-steps", "2",
         "--batch-size", "3", "--eval-split", "0.2", "--max-length", "128"],
        env=env,
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert "skipped line 7" in trained.output and "adapter cli-tiny" in trained.output
    listed = runner.invoke(cli_main, ["adapters", "list", "--json"], env=env)
    (record,) = [r for r in json.loads(listed.output) if r["name"] == "cli-tiny"]
    assert record["base_model"].endswith(".gguf") and record["rows"] == 5
    assert (Path(record["path"]) / "adapter_model.safetensors").is_file()
    shown = runner.invoke(cli_main, ["adapters", "show", "cli-tiny"], env=env)
    assert json.loads(shown.output)["metrics"]["steps"] == 2
    again = runner.invoke(cli_main, ["train", str(data), "--name", "cli-tiny", "--input-col", "q", "--output-col",
                                     "a"], env=env)  # fmt: skip
    assert again.exit_code == 2 and "already exists" in again.output
    deleted = runner.invoke(cli_main, ["adapters", "delete", "cli-tiny", "--yes"], env=env)
    assert deleted.exit_code == 0 and not Path(record["path"]).exists()
    gone = runner.invoke(cli_main, ["adapters", "show", "cli-tiny"], env=env)
    assert gone.exit_code == 2 and "no adapter named" in gone.output


def test_support_split_holds_out_rows(shared_data: Path) -> None:
    dataset = read_dataset(shared_data / "support-replies" / "support_replies.csv")
    split = split_examples(dataset.examples, 0.1, seed=0, limit=40)
    assert len(split.train) == 36 and len(split.evaluation) == 4 and len(split.unused) == len(dataset.examples) - 40
