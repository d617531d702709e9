"""Training benchmarks: LoRA throughput vs a plain peft + `transformers.Trainer` loop, and the trained-form rate.

Throughput (default): each method runs in its own process (so peak RSS is its own) on the same rows of
support-replies, the same encoded examples (assistant-only labels, padded to the batch's longest), batch size,
steps, learning rate and LoRA settings. Reported: real (non-pad) tokens per second of training and peak RSS.

    .venv/bin/python -m bench.bench_training --rows 64 --steps 8
    .venv/bin/python -m bench.bench_training --form-eval --adapter support-tone --n 100

Form eval: rebuilds the adapter's train/held-out split from its `ragtune.json`, derives the "trained form" rule
from the TRAIN replies only (see training/form.py), and generates greedy replies for `n` held-out customer
messages (never trained on, not in its eval split either) with the base model and with the adapter.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
DATA = REPO_ROOT.parent / "shared" / "data" / "support-replies" / "support_replies.csv"
RESULTS = REPO_ROOT / "bench" / "results"


def _load(args: argparse.Namespace):  # noqa: ANN202
    from bot.config import load_settings
    from bot.llm.loading import load_base_model

    settings = load_settings()
    return load_base_model(settings.generator_model, settings.model_cache_dir, device="cpu")


def _encoded(tokenizer, args: argparse.Namespace):  # noqa: ANN001, ANN202
    from training.datasets import read_dataset, split_examples
    from training.encoding import encode_examples

    dataset = read_dataset(args.data, input_col="instruction", output_col="response")
    split = split_examples(dataset.examples, 0.0, seed=args.seed, limit=args.rows)
    encoded, _ = encode_examples(tokenizer, split.train, args.max_length)
    return encoded


def _run_one(args: argparse.Namespace) -> dict:
    """Train with one method in this process; print one JSON line."""
    import torch

    from training.trainer import TrainConfig, collate, train_lora

    torch.set_num_threads(args.threads)
    loaded = _load(args)
    encoded = _encoded(loaded.tokenizer, args)
    config = TrainConfig(
        max_steps=args.steps, batch_size=args.batch_size, learning_rate=5e-4, warmup_steps=0, patience=0,
        max_length=args.max_length, seed=args.seed, threads=args.threads, lora_dropout=0.05,
    )  # fmt: skip
    if args.method == "ragtune":
        _model, result = train_lora(loaded.model, loaded.tokenizer, encoded, [], config, progress=False)
        tokens, seconds, final_loss = result.train_tokens, result.seconds, result.history[-1]["loss"]
    else:
        from peft import LoraConfig, get_peft_model
        from transformers import Trainer, TrainingArguments

        model = get_peft_model(
            loaded.model,
            LoraConfig(r=config.lora_r, lora_alpha=config.resolved_lora_alpha, lora_dropout=config.lora_dropout,
                       target_modules=config.target_modules, task_type="CAUSAL_LM"),
        )  # fmt: skip
        counted = {"tokens": 0}
        pad = loaded.tokenizer.pad_token_id

        def collator(features):  # same padding as ours: to the batch's longest, labels -100
            from training.encoding import EncodedExample

            batch = collate([EncodedExample(f["input_ids"], f["labels"], 0) for f in features], pad)
            counted["tokens"] += int(batch["attention_mask"].sum())
            return batch

        rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
        training_args = TrainingArguments(
            output_dir=str(RESULTS / "trainer-tmp"), per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=1, max_steps=args.steps, learning_rate=5e-4, lr_scheduler_type="linear",
            warmup_steps=0, save_strategy="no", report_to=[], use_cpu=True, seed=args.seed, logging_steps=1,
            remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True, max_grad_norm=1.0,
        )  # fmt: skip
        trainer = Trainer(model=model, args=training_args, train_dataset=rows, data_collator=collator)
        started = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - started
        tokens, final_loss = counted["tokens"], output.training_loss
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "method": args.method, "tokens": tokens, "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1), "peak_rss_mb": round(peak_mb),
        "final_loss": round(float(final_loss), 4), "examples": len(encoded),
    }  # fmt: skip


def throughput(args: argparse.Namespace) -> None:
    results = []
    for method in ("trainer", "ragtune"):
        command = [sys.executable, "-m", "bench.bench_training", "--one", method, "--rows", str(args.rows), "--steps",
                   str(args.steps), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
                   "--threads", str(args.threads), "--seed", str(args.seed), "--data", str(args.data)]  # fmt: skip
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{method} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'method':10} {'tokens/s':>9} {'seconds':>8} {'peak RSS MB':>12} {'final loss':>10}")
    for r in results:
        print(f"{r['method']:10} {r['tokens_per_s']:>9} {r['seconds']:>8} {r['peak_rss_mb']:>12} {r['final_loss']:>10}")
    ratio = results[1]["tokens_per_s"] / results[0]["tokens_per_s"]
    print(f"ragtune / Trainer throughput: {ratio:.2f}x  (load average {os.getloadavg()[0]:.1f})")
    _write("training_throughput.json", {"settings": vars(args) | {"data": str(args.data)}, "results": results,
                                        "ratio": ratio, "loadavg": os.getloadavg()})  # fmt: skip


def form_eval(args: argparse.Namespace) -> None:
    import torch
    from peft import PeftModel

    from bot.config import load_settings
    from training.datasets import read_dataset, split_examples
    from training.form import FormRule, generate_replies

    torch.set_num_threads(args.threads)
    settings = load_settings()
    adapter_dir = settings.adapters_dir / args.adapter
    meta = json.loads((adapter_dir / "ragtune.json").read_text())
    hp = meta["hyperparameters"]
    dataset = read_dataset(hp["data"], input_col=hp["input_col"], output_col=hp["output_col"],
                           system_prompt=hp["system_prompt"])  # fmt: skip
    if dataset.sha256 != meta["data_sha256"]:
        sys.exit(f"{hp['data']} changed since {args.adapter} was trained (sha256 differs)")
    split = split_examples(dataset.examples, hp["eval_split"], seed=hp["seed"], limit=hp["limit"])
    rule = FormRule.derive([e.messages[-1]["content"] for e in split.train])
    held_out = split.unused[: args.n]
    prompts = [e.messages[:-1] for e in held_out]
    references = [e.messages[-1]["content"] for e in held_out]

    loaded = _load(args)
    model = PeftModel.from_pretrained(loaded.model, str(adapter_dir))
    model.eval()
    started = time.perf_counter()
    base_replies: list[str] = []
    if not args.no_base:  # the base's replies do not change between adapters with the same split
        with model.disable_adapter():
            base_replies = generate_replies(model, loaded.tokenizer, prompts, max_new_tokens=args.max_new_tokens)
    tuned_replies = generate_replies(model, loaded.tokenizer, prompts, max_new_tokens=args.max_new_tokens)
    seconds = time.perf_counter() - started
    rates = {"reference": rule.rates(references), "adapter": rule.rates(tuned_replies)}
    if base_replies:
        rates["base"] = rule.rates(base_replies)
    print(f"trained-form rule (from {len(split.train)} train replies): placeholder {{{{...}}}} AND opening in "
          f"{rule.openings} (train form rate {rule.train_form_rate:.0%})")  # fmt: skip
    print(f"{'replies':10} {'form':>6} {'placeholder':>12} {'opening':>8}   (n={len(held_out)} held-out messages)")
    for who, r in rates.items():
        print(f"{who:10} {r['form']:>6.0%} {r['placeholder']:>12.0%} {r['opening']:>8.0%}")
    base_rate = rates.get("base", {}).get("form", 0.0)
    ratio = rates["adapter"]["form"] / base_rate if base_rate else float("inf")
    print(f"adapter / base form rate: {ratio:.1f}x   ({seconds:.0f}s of generation)")
    samples = [{"message": p[-1]["content"], "base": b, "adapter": t}
               for p, b, t in zip(prompts[:5], base_replies or [""] * 5, tuned_replies, strict=False)]  # fmt: skip
    _write("training_form.json", {
        "adapter": args.adapter, "n": len(held_out), "rule": rule.to_json(), "rates": rates,
        "ratio": None if ratio == float("inf") else ratio, "eval_loss_before": meta["eval_loss_before"],
        "eval_loss_after": meta["eval_loss_after"], "generation_seconds": seconds, "samples": samples,
    })  # fmt: skip


def _write(name: str, payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {RESULTS / name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", choices=["ragtune", "trainer"], help=argparse.SUPPRESS)
    parser.add_argument("--form-eval", action="store_true")
    parser.add_argument("--adapter", default="support-tone")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=120)
    parser.add_argument("--no-base", action="store_true", help="Generate with the adapter only.")
    args = parser.parse_args()
    if args.one:
        args.method = args.one
        print(json.dumps(_run_one(args)))
    elif args.form_eval:
        form_eval(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
