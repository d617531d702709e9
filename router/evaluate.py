"""Router accuracy on labelled messages: per-route precision/recall/F1, the confusion matrix and decision latency.

A gold label may be a route name or an action ('knowledge'/'skill'); a decision counts in the label space of
the file, so a custom `legal-drafting` route is right on a line labelled 'skill'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from knowledge.evaluation import percentile


def predicted_label(decision, labels: set[str]) -> str:
    return decision.route if decision.route in labels or decision.action not in labels else decision.action


def evaluate(decide: Callable, rows: Sequence[dict]) -> dict:
    """Run `decide(text, history)` on every row and score it. Rows: {"text", "route", "history"?}."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    gold = [str(row["route"]) for row in rows]
    label_set = set(gold)
    predicted, latencies, fallbacks, errors = [], [], 0, []
    for row in rows:
        decision = decide(row["text"], row.get("history") or ())
        label = predicted_label(decision, label_set)
        predicted.append(label)
        latencies.append(decision.latency_ms)
        fallbacks += int(decision.fallback)
        if label != row["route"] and len(errors) < 25:
            errors.append({"text": row["text"], "gold": row["route"], "predicted": label, "conf": decision.confidence})
    labels = sorted(label_set | set(predicted))
    precision, recall, f1, support = precision_recall_fscore_support(gold, predicted, labels=labels, zero_division=0)
    matrix = confusion_matrix(gold, predicted, labels=labels)
    lat = np.asarray(latencies)
    return {
        "n": len(rows),
        "accuracy": float(np.mean(np.array(gold) == np.array(predicted))),
        "per_route": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "labels": labels,
        "confusion": matrix.tolist(),
        "latency_ms": {
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "mean": float(lat.mean()),
        },
        "fallbacks": fallbacks,
        "errors": errors,
    }


def format_report(result: dict) -> str:
    """The terminal table: accuracy, per-route scores, confusion matrix (rows gold, columns predicted), latency."""
    lines = [f"messages: {result['n']}   accuracy: {result['accuracy']:.3f}   fallbacks: {result['fallbacks']}"]
    width = max(12, *(len(label) + 2 for label in result["labels"]))
    lines.append(f"{'route':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for label, m in result["per_route"].items():
        lines.append(f"{label:<{width}}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>10d}")
    lines.append("confusion (rows: gold, columns: predicted)")
    lines.append(" " * width + "".join(f"{label:>{width}}" for label in result["labels"]))
    for label, row in zip(result["labels"], result["confusion"], strict=True):
        lines.append(f"{label:<{width}}" + "".join(f"{v:>{width}d}" for v in row))
    lat = result["latency_ms"]
    lines.append(f"latency ms: p50 {lat['p50']:.2f}   p95 {lat['p95']:.2f}   mean {lat['mean']:.2f}")
    return "\n".join(lines)
