"""`ragtune route MESSAGE` and `ragtune router train|eval`: the routing decision, its training and its scores."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bot.cli.common import embedder, is_verbose, settings, user_errors

_METHODS = click.Choice(["auto", "similarity", "classifier", "combined"])


def _embedder(config):
    return embedder(config)


def _router(config, routes: Path | None, method: str, use_classifier: bool = True, embedder=None):
    from router import build_router

    return build_router(
        embedder or _embedder(config),
        routes_file=routes or config.routes_file,
        state_dir=config.state_dir,
        default_route=config.router_default_route,
        min_confidence=config.router_min_confidence,
        use_classifier=use_classifier and method != "similarity",
        method=method,
    )


def _history(value: str | None) -> list[dict]:
    if not value:
        return []
    text = Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value
    try:
        history = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--history: not a JSON list of turns or a file holding one ({exc.msg})") from exc
    if not isinstance(history, list) or not all(isinstance(turn, dict) for turn in history):
        raise click.BadParameter('--history: expected a list like [{"role": "user", "content": "...", "route": "..."}]')
    return history


routes_option = click.option(
    "--routes",
    "routes",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Routes file (TOML/YAML); default: the routes_file setting, else the shipped routes.",
)


@click.command("route")
@click.argument("message")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@click.option("--history", default=None, help="Earlier turns: a JSON list of {role, content, route} or a file.")
@click.option("--retrieval-strength", type=float, default=None, help="Best passage cosine for this message, if known.")
@click.option("--method", type=_METHODS, default="auto", show_default=True)
@routes_option
@user_errors
def route_command(message, as_json, history, retrieval_strength, method, routes) -> None:
    """Show which route answers MESSAGE, how confident the router is, and why."""
    from bot.conversation.turn import plain_reason

    router = _router(settings(), routes, method)
    decision = router.decide(message, _history(history), retrieval_strength=retrieval_strength)
    if as_json:
        click.echo(json.dumps(decision.to_dict(), indent=2, ensure_ascii=False))
        return
    extra = []
    if decision.adapter:
        extra.append(f"adapter {decision.adapter}")
    if decision.collection:
        extra.append(f"collection {decision.collection}")
    if decision.retrieve and decision.action != "knowledge":
        extra.append("retrieves")
    tail = f" ({', '.join(extra)})" if extra else ""
    flag = "  [fallback]" if decision.fallback else ""
    click.echo(f"{decision.route} [{decision.action}]{tail}  confidence {decision.confidence:.2f}{flag}")
    notes = plain_reason(decision.reason)
    click.echo(f"method {decision.method}, {decision.latency_ms:.1f} ms")
    click.echo("why: " + ("; ".join(notes) if notes else f"the message is closest to the {decision.route} examples"))
    if is_verbose():  # the router's own account: scores, log-odds shifts, nearest examples
        click.echo(f"reason: {decision.reason}")


@click.group("router")
def router_group() -> None:
    """Train and evaluate the message router."""


@router_group.command("train")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@routes_option
@click.option("--seed", type=int, default=0, show_default=True)
@user_errors
def router_train(file: Path, routes: Path | None, seed: int) -> None:
    """Train the classifier on FILE (JSONL lines {"text", "route"}); the router uses it from then on."""
    from router import classifier_location, load_routes, read_labelled, train_classifier
    from router.encoder import QueryEncoder, limit_blas_threads

    config = settings()
    rows = read_labelled(file)
    limit_blas_threads()
    encoder = QueryEncoder(_embedder(config))
    route_specs = load_routes(routes or config.routes_file)
    model = train_classifier([r["text"] for r in rows], [r["route"] for r in rows], route_specs, encoder, seed=seed)
    saved = model.save(classifier_location(config.state_dir))
    heldout = model.metrics["heldout"]
    click.echo(f"trained on {model.metrics['n_total']} messages {model.metrics['label_counts']}")
    click.echo(f"held-out accuracy ({model.metrics['n_heldout']} messages):")
    for name in ("similarity", "classifier", "combined"):
        m = heldout[name]
        weight = f"  (classifier weight {m['weight']})" if "weight" in m else ""
        click.echo(f"  {name:<11} {m['accuracy']:.3f}   calibration error {m['ece']:.3f}{weight}")
    click.echo(f"method used by default: {model.method}")
    click.echo(f"saved {saved}")


@router_group.command("eval")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write here.")
@click.option("--method", type=_METHODS, default="auto", show_default=True)
@click.option("--no-classifier", is_flag=True, help="Ignore a trained classifier (example similarity only).")
@routes_option
@user_errors
def router_eval(file: Path, json_out: Path | None, method: str, no_classifier: bool, routes: Path | None) -> None:
    """Accuracy, per-route precision/recall/F1, confusion matrix and p50/p95 latency on FILE."""
    from router import evaluate, format_report, read_labelled

    rows = read_labelled(file)
    router = _router(settings(), routes, method, use_classifier=not no_classifier)
    router.decide("warm up")  # first call pays one-off allocations that are not the router's steady cost
    result = evaluate(router.decide, rows)
    result["method"] = router.method
    result["file"] = str(file)
    click.echo(f"method: {router.method}")
    click.echo(format_report(result))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
        click.echo(f"wrote {json_out}")


COMMANDS = [route_command, router_group]
