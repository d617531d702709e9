"""The plain-language answer at the top of the report: which mode wins on this data, by how much, at what cost.

"Wins" is decided on mean token F1 with a paired bootstrap over the same questions: when the 95% interval of
the difference to the runner-up includes zero, the verdict says there is no clear winner instead of naming one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.evaluate.metrics import paired_bootstrap_diff

LABELS = {
    "base": "the base model alone",
    "rag": "RAG (retrieval + base model)",
    "lora": "the LoRA adapter",
    "routed": "the routed hybrid (router picks RAG or LoRA per message)",
}


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def per_question(answers: Sequence[Any], mode: str) -> dict[str, float]:
    return {a.id: a.f1 for a in answers if a.mode == mode}


def _paired(answers: Sequence[Any], first: str, second: str, seed: int) -> dict[str, float]:
    a, b = per_question(answers, first), per_question(answers, second)
    ids = sorted(set(a) & set(b))
    return paired_bootstrap_diff([a[i] for i in ids], [b[i] for i in ids], seed=seed)


def decide(summary: dict[str, dict[str, Any]], answers: Sequence[Any], *, seed: int = 0) -> dict[str, Any]:
    """The verdict as data (for JSON and CI) plus `text`, a list of sentences for people."""
    if not summary:
        return {"winner": None, "clear": False, "text": ["No answers were evaluated."]}
    ranked = sorted(summary, key=lambda m: summary[m]["f1"], reverse=True)
    best = ranked[0]
    n = summary[best]["n"]
    result: dict[str, Any] = {"winner": best, "ranking": ranked, "n": n}
    text: list[str] = []
    s = summary[best]
    cost = (
        f"p50 latency {s['latency_p50_s']:.1f}s, about ${s['cost_per_1000']:.3f} per 1,000 questions"
        f" ({s['tokens_mean']:.0f} generated tokens on average)"
    )
    if len(ranked) == 1:
        result["clear"] = False
        text.append(f"Only {LABELS.get(best, best)} was evaluated: mean F1 {s['f1']:.3f}; {cost}.")
    else:
        twins = [m for m in ranked[1:] if per_question(answers, m) == per_question(answers, best)]
        runner = next((m for m in ranked[1:] if m not in twins), ranked[1])
        twin_note = ""
        if twins:
            result["same_as_winner"] = twins
            twin_note = (
                f"{_sentence(LABELS.get(twins[0], twins[0]))} gave the same answers as {best} on every question"
                + (f" (routes: {summary[twins[0]].get('routes')})" if twins[0] == "routed" else "")
                + f"; it is compared separately below, and {runner} is the runner-up."
            )
        diff = _paired(answers, best, runner, seed)
        result.update(runner_up=runner, diff=diff, clear=diff["low"] > 0)
        gap = f"{diff['mean']:+.3f} F1 (95% CI {diff['low']:+.3f} to {diff['high']:+.3f})"
        if diff["low"] > 0:
            text.append(
                f"On this data {LABELS.get(best, best)} wins: mean token F1 {s['f1']:.3f}, {gap} over "
                f"{LABELS.get(runner, runner)}; {cost}."
            )
        else:
            text.append(
                f"No clear winner: {LABELS.get(best, best)} scores highest (mean F1 {s['f1']:.3f}), but its lead over "
                f"{LABELS.get(runner, runner)} is {gap}, an interval that includes zero; {cost}."
            )
        if twin_note:
            text.append(twin_note)
        r = summary[runner]
        text.append(
            f"{_sentence(LABELS.get(runner, runner))}: F1 {r['f1']:.3f}, p50 {r['latency_p50_s']:.1f}s, "
            f"${r['cost_per_1000']:.3f} per 1,000 questions."
        )
    routed_check = _routed_check(summary, answers, seed)
    if routed_check:
        result["routed_check"] = routed_check
        text.append(routed_check["text"])
    text.append(
        f"Caveats: {n} questions; intervals are 95% bootstrap intervals (seed {seed}); F1 and containment compare "
        "with one gold answer, so a correct paraphrase scores low; latency and cost were measured on this machine "
        "while it ran, so a busy machine inflates them."
    )
    result["text"] = text
    return result


def _routed_check(summary: dict[str, dict[str, Any]], answers: Sequence[Any], seed: int) -> dict[str, Any] | None:
    """The target: routed is never worse than the better of rag and lora by more than its confidence interval."""
    if "routed" not in summary or not ({"rag", "lora"} & set(summary)):
        return None
    better = max((m for m in ("rag", "lora") if m in summary), key=lambda m: summary[m]["f1"])
    diff = _paired(answers, "routed", better, seed)
    ok = diff["high"] >= 0
    verb = "is within its confidence interval of" if ok else "is significantly worse than"
    return {
        "against": better,
        "diff": diff,
        "ok": ok,
        "text": f"Routed {verb} {better} (F1 difference {diff['mean']:+.3f}, 95% CI {diff['low']:+.3f} to "
        f"{diff['high']:+.3f}); routes taken: {summary['routed'].get('routes') or {}}.",
    }
