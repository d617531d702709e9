# ruff: noqa: E501  (the HTML template reads better unwrapped)
"""One self-contained HTML report (Jinja2, inline SVG charts, no JavaScript, no network) and its JSON twin.

Charts are hand-written SVG rather than matplotlib: a scatter of a handful of points is ~40 lines, keeps the
report a single file that opens anywhere, and spares the install a 40 MB plotting stack.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, select_autoescape

COLOURS = {"base": "#7f7f7f", "rag": "#1f77b4", "lora": "#d62728", "routed": "#2ca02c"}


def scatter_svg(points: list[dict[str, Any]], x_label: str, y_label: str, width: int = 460, height: int = 300) -> str:
    """Points {label, x, y, y_low?, y_high?} as an SVG scatter with error bars on y."""
    if not points:
        return ""
    left, right, top, bottom = 56, 20, 16, 44
    xs = [p["x"] for p in points]
    ys = [p.get("y_low", p["y"]) for p in points] + [p.get("y_high", p["y"]) for p in points]
    x_max = max(xs) * 1.15 or 1.0
    y_max = max(max(ys) * 1.15, 0.05)

    def sx(v: float) -> float:
        return left + v / x_max * (width - left - right)

    def sy(v: float) -> float:
        return height - bottom - v / y_max * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(y_label)} against {html.escape(x_label)}" font-family="sans-serif" font-size="11">',
        f'<line x1="{left}" y1="{sy(0)}" x2="{width - right}" y2="{sy(0)}" stroke="#333"/>',
        f'<line x1="{left}" y1="{sy(0)}" x2="{left}" y2="{top}" stroke="#333"/>',
    ]
    for i in range(5):
        xv, yv = x_max * i / 4, y_max * i / 4
        parts.append(f'<text x="{sx(xv):.1f}" y="{height - bottom + 14}" text-anchor="middle">{xv:.2g}</text>')
        parts.append(f'<text x="{left - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.2f}</text>')
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">{html.escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="14" y="{(top + height - bottom) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(top + height - bottom) / 2})">{html.escape(y_label)}</text>'
    )
    for p in points:
        colour = COLOURS.get(p["label"], "#9467bd")
        x, y = sx(p["x"]), sy(p["y"])
        if "y_low" in p:
            parts.append(
                f'<line x1="{x:.1f}" y1="{sy(p["y_low"]):.1f}" x2="{x:.1f}" y2="{sy(p["y_high"]):.1f}" '
                f'stroke="{colour}" stroke-width="2"/>'
            )
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}"/>')
        parts.append(f'<text x="{x + 8:.1f}" y="{y - 6:.1f}" fill="{colour}">{html.escape(p["label"])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def qa_chart(summary: dict[str, dict[str, Any]]) -> str:
    points = [
        {"label": m, "x": s["latency_p50_s"], "y": s["f1"], "y_low": s["f1_ci"][0], "y_high": s["f1_ci"][1]}
        for m, s in summary.items()
    ]
    return scatter_svg(points, "p50 latency per question (s)", "mean token F1 (95% CI)")


def retrieval_chart(results: list[dict[str, Any]]) -> str:
    points = [{"label": r["mode"], "x": r["latency_ms"]["p50"], "y": r["ndcg_at_10"]} for r in results]
    return scatter_svg(points, "p50 search latency (ms)", "nDCG@10")


def trend_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Flat `part/data/mode/metric` numbers, so CI can plot a trend line per key without knowing the layout."""
    flat: dict[str, float] = {}
    for part in report.get("qa", []):
        name = Path(part["dataset"]).name
        for mode, s in part["summary"].items():
            for key in (
                "f1",
                "contains",
                "abstention",
                "unsupported_rate",
                "citation_rate",
                "abstention_unanswerable",
                "false_abstention",
                "latency_p50_s",
                "latency_p95_s",
                "cost_per_1000",
                "gold_cited",
            ):
                if s.get(key) is not None:
                    flat[f"qa/{name}/{mode}/{key}"] = round(float(s[key]), 5)
    for part in report.get("retrieval", []):
        name = Path(part["dataset"]).name
        for r in part["results"]:
            flat[f"retrieval/{name}/{r['mode']}/ndcg_at_10"] = round(float(r["ndcg_at_10"]), 5)
            flat[f"retrieval/{name}/{r['mode']}/recall_at_10"] = round(float(r["recall_at_10"]), 5)
    for part in report.get("router", []):
        flat[f"router/{Path(part['file']).stem}/accuracy"] = round(float(part["accuracy"]), 5)
    return flat


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ragtune evaluation</title>
<style>
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.4em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}.verdict{background:#eef6ee;border-left:4px solid #2ca02c;
padding:.6em 1em}.note{color:#555;font-size:.9em}code{background:#f5f5f5;padding:0 3px}
details{margin:.5em 0}td.text{text-align:left;max-width:420px}
</style></head><body>
<h1>ragtune evaluation</h1>
<p class="note">Generated {{ generated }} · seed {{ seed }} · {{ machine }}</p>
{% for part in qa %}
<div class="verdict"><h2>Verdict: {{ part.dataset }}</h2>{% for line in part.verdict.text %}<p>{{ line }}</p>{% endfor %}</div>
{% endfor %}
{% for part in qa %}
<h2>Answer quality: {{ part.dataset }} ({{ part.questions }} questions)</h2>
<table><tr><th>mode</th><th>F1</th><th>F1 95% CI</th><th>contains gold</th><th>gold passage retrieved</th>
<th>gold passage cited</th><th>citation rate</th><th>unsupported claims</th><th>abstained</th>
<th>abstains on unanswerable</th><th>false abstention</th><th>p50 s</th><th>p95 s</th><th>tokens</th>
<th>$ / 1,000 q</th></tr>
{% for mode, s in part.summary.items() %}<tr><td>{{ mode }}{% if s.reused %} <span class="note">({{ s.reused }} reused)</span>{% endif %}</td>
<td>{{ '%.3f'|format(s.f1) }}</td><td>{{ '%.3f'|format(s.f1_ci[0]) }}–{{ '%.3f'|format(s.f1_ci[1]) }}</td>
<td>{{ pct(s.contains) }}</td><td>{{ pct(s.gold_retrieved) }}</td><td>{{ pct(s.gold_cited) }}</td><td>{{ pct(s.citation_rate) }}</td>
<td>{{ pct(s.unsupported_rate) }}{% if s.support_sentences %} <span class="note">of {{ s.support_sentences }}</span>{% endif %}</td>
<td>{{ pct(s.abstention) }}</td>
<td>{{ pct(s.abstention_unanswerable) }}{% if s.unanswerable_n %} <span class="note">of {{ s.unanswerable_n }}</span>{% endif %}</td>
<td>{{ pct(s.false_abstention) }}</td><td>{{ '%.2f'|format(s.latency_p50_s) }}</td><td>{{ '%.2f'|format(s.latency_p95_s) }}</td>
<td>{{ '%.1f'|format(s.tokens_mean) }}</td><td>{{ '%.3f'|format(s.cost_per_1000) }}</td></tr>{% endfor %}
</table>
{{ part.chart|safe }}
<p class="note">{% for line in part.notes %}{{ line }}<br>{% endfor %}</p>
<h3>Sample answers</h3>
<p class="note">A seeded sample of questions (seed {{ seed }}), the same in every mode, each answer beside its gold answer and the snippets of the sources it cites.</p>
{% for mode in part.modes %}{% set rows = part.samples|selectattr("mode", "equalto", mode)|list %}{% if rows %}
<details{% if loop.first %} open{% endif %}><summary>{{ mode }} ({{ rows|length }} answers)</summary>
<table><tr><th>question</th><th>answer</th><th>gold</th><th>cited sources</th><th>F1</th></tr>
{% for a in rows %}<tr><td class="text">{{ a.question }}{% if a.unanswerable %} <span class="note">(unanswerable)</span>{% endif %}</td>
<td class="text">{% if a.not_found %}<em>not in the documents</em> {% endif %}{{ a.answer }}{% if a.problems %}<br><span class="note">unsupported: {{ a.problems|join(" · ") }}</span>{% endif %}</td>
<td class="text">{{ a.gold }}{% if a.label %} <span class="note">(decision: {{ a.label }})</span>{% endif %}</td>
<td class="text">{% for c in a.citations %}<b>[{{ c.n }}]</b> {{ c.id }}: {{ c.snippet }}<br>{% else %}<span class="note">none cited</span>{% endfor %}</td>
<td>{% if a.unanswerable %}–{% else %}{{ '%.2f'|format(a.f1) }}{% endif %}</td></tr>{% endfor %}</table></details>
{% endif %}{% endfor %}
{% endfor %}
{% for part in retrieval %}
<h2>Retrieval: {{ part.dataset }} ({{ part.queries }} queries)</h2>
<table><tr><th>mode</th><th>nDCG@10</th><th>R@10</th><th>R@100</th><th>MRR@10</th><th>p50 ms</th><th>p95 ms</th></tr>
{% for r in part.results %}<tr><td>{{ r.mode }}</td><td>{{ '%.4f'|format(r.ndcg_at_10) }}</td><td>{{ '%.4f'|format(r.recall_at_10) }}</td>
<td>{{ '%.4f'|format(r.recall_at_100) }}</td><td>{{ '%.4f'|format(r.mrr_at_10) }}</td><td>{{ '%.1f'|format(r.latency_ms.p50) }}</td>
<td>{{ '%.1f'|format(r.latency_ms.p95) }}</td></tr>{% endfor %}</table>
{{ retrieval_chart(part.results)|safe }}
{% endfor %}
{% for part in router %}
<h2>Router: {{ part.file }} ({{ part.n }} messages, method {{ part.method }})</h2>
<p>accuracy {{ '%.3f'|format(part.accuracy) }} · latency p50 {{ '%.2f'|format(part.latency_ms.p50) }} ms, p95
{{ '%.2f'|format(part.latency_ms.p95) }} ms · fallbacks {{ part.fallbacks }}</p>
<table><tr><th>route</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>
{% for label, m in part.per_route.items() %}<tr><td>{{ label }}</td><td>{{ '%.3f'|format(m.precision) }}</td>
<td>{{ '%.3f'|format(m.recall) }}</td><td>{{ '%.3f'|format(m.f1) }}</td><td>{{ m.support }}</td></tr>{% endfor %}</table>
{% endfor %}
</body></html>
"""


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def render_html(report: dict[str, Any]) -> str:
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    env.globals["pct"] = _pct
    env.globals["retrieval_chart"] = retrieval_chart
    return env.from_string(TEMPLATE).render(**report)


def write_report(report: dict[str, Any], json_out: Path | None = None, html_out: Path | None = None) -> None:
    """Write the JSON (everything, for CI trend lines) and/or the HTML (for people)."""
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        data = {k: v for k, v in report.items() if k != "qa"}
        data["metrics"] = trend_metrics(report)
        data["qa"] = [{k: v for k, v in part.items() if k != "chart"} for part in report.get("qa", [])]
        json_out.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    if html_out is not None:
        html_out.parent.mkdir(parents=True, exist_ok=True)
        html_out.write_text(render_html(report), encoding="utf-8")
