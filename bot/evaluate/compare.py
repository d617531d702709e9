"""`ragtune adapters compare NEW CURRENT`: is the new adapter better than the one serving now, on replies neither
was trained on?

The examples are the NEW adapter's held-out split, rebuilt from its record (the same file, options and seed give
the same split, training/datasets.py `split_examples`), plus optionally feedback rated since a date; any example
either adapter trained on is dropped, so neither is scored on what it learned. Each adapter answers every example
greedily from the example's context messages, and each reply is measured against the team's reply:

- `similarity`: cosine of the app's embeddings of the reply and the team's reply (meaning, not wording);
- `length_ratio`: the reply's words / the team's reply's words (1.0 is the team's length);
- `form`: the trained-form rate (training/form.py), the rule derived from NEW's training replies; left out when
  those replies have no form to learn (no template slots), as a rate of 0 for both would say nothing.

Per metric: each adapter's mean and the paired difference NEW − CURRENT with a paired bootstrap 95% interval
(the same resampled examples for both, bot/evaluate/metrics.py), which is what "NEW beats CURRENT here" means.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bot.evaluate.metrics import paired_bootstrap_diff
from training.form import FormRule

Messages = list[dict[str, str]]
# (context messages, adapter or None for the base model) -> the reply
ReplyFn = Callable[[Messages, str | None], str]
# texts -> one embedding per row
EmbedFn = Callable[[list[str]], Any]

METRICS = ("similarity", "length_ratio", "form")


@dataclass(frozen=True)
class HeldOutExample:
    """What the model is shown (`context`, ending with the user's message) and the team's reply to it."""

    context: Messages
    reference: str
    where: str  # "line 12" of the data file, or "session abcd… turn 3" of fresh feedback


@dataclass
class HeldOut:
    examples: list[HeldOutExample]
    train_replies: list[str]  # NEW's training replies: the trained-form rule is derived from these
    notes: list[str] = field(default_factory=list)


def example_key(messages: Iterable[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    """What makes two conversations the same example: the user/assistant words, spacing and case aside."""
    return tuple(
        (m["role"], " ".join(str(m["content"]).split()).casefold())
        for m in messages
        if m.get("role") in ("user", "assistant")
    )


def as_example(messages: Sequence[dict[str, Any]], where: str) -> HeldOutExample | None:
    """A conversation ending in the reply to score; None when it does not end in a non-empty assistant reply."""
    if len(messages) < 2 or messages[-1].get("role") != "assistant" or not str(messages[-1]["content"]).strip():
        return None
    context = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]  # `weight` is for training
    return HeldOutExample(context, messages[-1]["content"], where)


def rebuild_split(options: dict[str, Any]) -> Any:
    """The training run's `Prepared` (its split) from an adapter's recorded hyper-parameters: the same file, options
    and seed give the same split."""
    from training.pipeline import prepare

    data = options.get("data")
    if not data:
        raise ValueError("the adapter's record names no data file: its training split cannot be rebuilt")
    return prepare(
        data,
        input_col=options.get("input_col"),
        output_col=options.get("output_col"),
        system_prompt=options.get("system_prompt"),
        on_error=options.get("on_error") or "skip",
        limit=options.get("limit"),
        eval_split=float(options.get("eval_split", 0.1)),
        seed=int(options.get("seed", 0)),
    )


def held_out(
    new_options: dict[str, Any],
    *,
    trained_elsewhere: Iterable[Sequence[dict[str, Any]]] = (),
    fresh: Iterable[tuple[Sequence[dict[str, Any]], str]] = (),
) -> HeldOut:
    """NEW's held-out split rebuilt from its recorded hyper-parameters, plus `fresh` (messages, where) examples,
    minus anything NEW or `trained_elsewhere` (CURRENT's training examples) was trained on."""
    prepared = rebuild_split(new_options)
    data = new_options["data"]
    trained = {example_key(e.messages) for e in prepared.split.train}
    trained |= {example_key(messages) for messages in trained_elsewhere}
    candidates = [(e.messages, f"line {e.line}") for e in prepared.split.evaluation]
    split_size = len(candidates)
    candidates += list(fresh)
    examples, seen, dropped = [], set(trained), 0
    for messages, where in candidates:
        key = example_key(messages)
        example = as_example(messages, where)
        if key in seen or example is None:
            dropped += 1
            continue
        seen.add(key)
        examples.append(example)
    seed, share = new_options.get("seed", 0), new_options.get("eval_split")
    notes = [f"{split_size} held out of {data} (eval split {share}, seed {seed})"]
    if len(candidates) > split_size:
        notes.append(f"{len(candidates) - split_size} fresh feedback examples offered")
    if dropped:
        notes.append(f"{dropped} left out: trained on by either adapter, repeated, or without a reply")
    replies = [e.messages[-1]["content"] for e in prepared.split.train if e.messages[-1]["role"] == "assistant"]
    return HeldOut(examples, replies, notes)


@dataclass
class AdapterScores:
    """One adapter's replies and their per-example scores (`form` None: not measured)."""

    name: str
    replies: list[str]
    similarity: list[float]
    length_ratio: list[float]
    form: list[float] | None = None

    def values(self, metric: str) -> list[float] | None:
        return getattr(self, metric)

    def means(self) -> dict[str, float | None]:
        means: dict[str, float | None] = {}
        for metric in METRICS:
            values = self.values(metric)
            means[metric] = float(np.mean(values)) if values else None
        return means


@dataclass(frozen=True)
class Difference:
    """NEW − CURRENT on one metric: the mean paired difference and its bootstrap interval."""

    metric: str
    mean: float
    low: float
    high: float
    p_not_better: float  # share of resamples where NEW did not beat CURRENT (read "lower is better" for none)


@dataclass
class Comparison:
    new: AdapterScores
    current: AdapterScores
    differences: list[Difference]
    examples: list[HeldOutExample]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        rows = [
            {"where": e.where, "reference": e.reference, "new": n, "current": c}
            for e, n, c in zip(self.examples, self.new.replies, self.current.replies, strict=True)
        ]
        return {
            "new": {"name": self.new.name, "means": self.new.means()},
            "current": {"name": self.current.name, "means": self.current.means()},
            "differences": [asdict(d) for d in self.differences],
            "n": len(self.examples),
            "notes": self.notes,
            "examples": rows,
        }

    def report(self) -> str:
        """A small table: the means of both and the paired difference with its 95% interval."""
        new_means, current_means = self.new.means(), self.current.means()
        width = max(len(self.new.name), len(self.current.name), 8)
        lines = [f"{len(self.examples)} held-out examples; " + "; ".join(self.notes)]
        lines.append(
            f"{'metric':14} {self.new.name:>{width}} {self.current.name:>{width}}  {'new - current':>13}  95% CI"
        )
        for diff in self.differences:
            lines.append(
                f"{diff.metric:14} {new_means[diff.metric]:>{width}.3f} {current_means[diff.metric]:>{width}.3f}  "
                f"{diff.mean:>+13.3f}  [{diff.low:+.3f}, {diff.high:+.3f}]"
            )
        return "\n".join(lines)


def _words(text: str) -> int:
    return len(text.split())


def cosine_rows(a: Any, b: Any) -> list[float]:
    """Row-wise cosine similarity of two equally shaped embedding matrices (a zero row scores 0)."""
    first, second = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    norms = np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1)
    dots = (first * second).sum(axis=1)
    return [float(d / n) if n > 0 else 0.0 for d, n in zip(dots, norms, strict=True)]


def score(
    name: str,
    replies: list[str],
    references: list[str],
    reference_vectors: Any,
    embed: EmbedFn,
    rule: FormRule | None,
) -> AdapterScores:
    """Score one adapter's replies against the team's (an empty reply is 0 similar, length ratio 0)."""
    vectors = embed([reply or " " for reply in replies])
    similarity = [
        s if reply.strip() else 0.0 for s, reply in zip(cosine_rows(vectors, reference_vectors), replies, strict=True)
    ]
    ratio = [_words(r) / max(_words(ref), 1) for r, ref in zip(replies, references, strict=True)]
    form = [float(rule.matches(r)) for r in replies] if rule is not None else None
    return AdapterScores(name, replies, similarity, ratio, form)


def form_rule(train_replies: list[str]) -> tuple[FormRule | None, str]:
    """The trained-form rule of NEW's training replies, or None and why it is not measured."""
    if not train_replies:
        return None, "trained form not measured: no training replies"
    rule = FormRule.derive(train_replies)
    if rule.train_form_rate == 0:
        return None, "trained form not measured: the training replies carry no template slots ({{...}})"
    return rule, f"trained form: openings {rule.openings}, {rule.train_form_rate:.0%} of training replies match"


def compare(
    examples: list[HeldOutExample],
    new: str,
    current: str | None,
    reply: ReplyFn,
    embed: EmbedFn,
    *,
    train_replies: Sequence[str] = (),
    seed: int = 0,
    notes: Sequence[str] = (),
    current_label: str = "base",
) -> Comparison:
    """Both adapters' replies to every example, scored and compared pairwise (`current` None: the base model)."""
    if not examples:
        raise ValueError("no held-out examples to compare on (train with --eval-split > 0, or pass --since)")
    references = [e.reference for e in examples]
    reference_vectors = embed(references)
    rule, rule_note = form_rule(list(train_replies))
    scored = []
    for adapter, label in ((new, new), (current, current or current_label)):
        replies = [reply(e.context, adapter) for e in examples]
        scored.append(score(label, replies, references, reference_vectors, embed, rule))
    new_scores, current_scores = scored
    differences = []
    for metric in METRICS:
        a, b = new_scores.values(metric), current_scores.values(metric)
        if a is None or b is None:
            continue
        d = paired_bootstrap_diff(a, b, seed=seed)
        differences.append(Difference(metric, d["mean"], d["low"], d["high"], d["p_not_better"]))
    return Comparison(new_scores, current_scores, differences, list(examples), [*notes, rule_note])
