"""`ragtune serve`, `ragtune up` and `ragtune chat`: the product, in the browser or the terminal."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from bot.cli.common import cpu_settings, is_verbose, settings, user_errors

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs"


def _services():
    from bot.conversation.services import build_services

    return build_services(cpu_settings(settings()))  # no torch import just to learn there is no GPU


@click.command("serve")
@click.option("--host", default=None, help="Interface to bind (default: the `host` setting, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: the `port` setting).")
@user_errors
def serve_command(host: str | None, port: int | None) -> None:
    """Serve the chat UI at / and the OpenAI-compatible API at /v1."""
    services = _services()
    from bot.server.app import serve  # gradio: after the models, so the terminal says something at once

    config = services.settings
    _warn_if_open(host or config.host, config)
    click.echo(f"ragtune is serving on http://{host or config.host}:{port or config.port}/  (Ctrl-C stops)")
    try:
        serve(services, host, port)
    finally:
        services.close()


@click.command("up")
@click.option("--host", default=None, help="Interface to bind (default: the `host` setting).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: the `port` setting).")
@click.option(
    "--docs",
    "docs_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DOCS_DIR,
    show_default=True,
    help="Demo documents loaded when the knowledge store is empty.",
)
@user_errors
def up_command(host: str | None, port: int | None, docs_dir: Path) -> None:
    """Start the embedded database, load the demo knowledge base if the store is empty, and serve the chat."""
    started = time.perf_counter()
    click.echo(f"starting ragtune (state in {settings().state_dir})…")
    from bot.conversation.services import DEMO_COLLECTION, load_demo_docs

    services = _services()
    config = services.settings
    try:
        if docs_dir.is_dir():
            report = load_demo_docs(services, docs_dir)
            if report is not None:
                click.echo(
                    f"loaded the demo knowledge base into '{DEMO_COLLECTION}': {len(report.added)} files, "
                    f"{report.chunks} chunks in {report.seconds:.1f} s"
                )
        else:
            click.echo(f"no demo documents at {docs_dir}: the knowledge store starts empty")
        _warn_if_open(host or config.host, config)
        from bot.server.app import serve  # gradio (2-3 s): after the first line, so the terminal is not silent

        click.echo(
            f"ragtune is up in {time.perf_counter() - started:.1f} s: "
            f"open http://{host or config.host}:{port or config.port}/  (Ctrl-C stops)"
        )
        serve(services, host, port)
    finally:
        services.close()


def _warn_if_open(host: str, config) -> None:
    if host not in ("127.0.0.1", "localhost", "::1") and not config.api_keys and not config.trusted_user_header:
        click.echo(
            f"warning: binding {host} with no RAGTUNE_API_KEYS: anyone who can reach it can use the API", err=True
        )


@click.command("chat")
@click.option("--session", "session_id", default=None, help="Resume this session (see --list).")
@click.option("--list", "list_sessions", is_flag=True, help="List your sessions and exit.")
@click.option("--adapter", default=None, help="Answer every message with this adapter (skip the router).")
@click.option("--collection", default=None, help="Search only this collection.")
@user_errors
def chat_command(session_id: str | None, list_sessions: bool, adapter: str | None, collection: str | None) -> None:
    """Chat in the terminal on the same pipeline and memory as the web UI (/new, /quit)."""
    from bot.conversation import TurnOptions
    from bot.conversation.messages import MessageError, clean_message
    from bot.logs import quiet_per_turn_logs
    from bot.memory import SessionNotFound
    from bot.server.auth import LOCAL_OWNER

    if not is_verbose():
        quiet_per_turn_logs()  # the turn is on screen already
    services = _services()
    memory, owner = services.memory, LOCAL_OWNER
    try:
        if list_sessions:
            for s in memory.list_sessions(owner):
                click.echo(f"{s.id}  {s.turns:3d} turns  {s.updated_at:%Y-%m-%d %H:%M}  {s.title}")
            return
        if session_id:
            try:
                for m in memory.messages(session_id, owner):
                    click.echo(f"{'you' if m.role == 'user' else 'ragtune'}> {m.content}")
            except SessionNotFound:
                raise ValueError(f"session {session_id!r}: not found (ragtune chat --list shows yours)") from None
        else:
            session_id = memory.create_session(owner)
        click.echo(f"session {session_id}  (/new starts another, /quit or Ctrl-D ends)")
        options = TurnOptions(adapter=adapter, collection=collection)
        interactive = sys.stdin.isatty()
        while True:
            try:
                line = input("you> ") if interactive else sys.stdin.readline()
            except (EOFError, KeyboardInterrupt):
                break
            if not interactive and line == "":
                break
            try:
                line = clean_message(line, services.settings.max_message_chars)
            except MessageError as exc:
                if exc.code != "empty_message":
                    click.echo(f"error: {exc}", err=True)
                continue
            if line in ("/quit", "/exit"):
                break
            if line == "/new":
                session_id = memory.create_session(owner)
                click.echo(f"session {session_id}")
                continue
            try:
                _print_turn(services.conversation.stream(session_id, owner, line, options))
            except ValueError as exc:
                click.echo(f"\nerror: {exc}", err=True)
    finally:
        services.close()


def _print_turn(events) -> None:
    """A turn in the terminal: the badge, the answer as it streams, then its sources (-v: the router's reason)."""
    from bot.conversation import Token, TurnDone, TurnStart
    from bot.conversation.turn import badge_for

    verbose = is_verbose()
    for event in events:
        if isinstance(event, TurnStart):
            badge = badge_for(event)
            click.echo(f"[{badge.label}]")
            if verbose:
                click.echo(f"  {badge.details}\n  router: {event.reason}")
            click.echo("ragtune> ", nl=False)
        elif isinstance(event, Token):
            click.echo(event.text, nl=False)
        elif isinstance(event, TurnDone):
            click.echo()
            for s in event.sources:
                page = f", page {s['page']}" if s.get("page") else ""
                click.echo(f"  [{s['n']}] {s['title']}{page} ({s['source']}, score {s['score']:.2f})")


COMMANDS = [serve_command, up_command, chat_command]
