"""`ragtune db start|status|stop|url|migrate` and `ragtune config show`."""

from __future__ import annotations

import json

import click

from bot.cli.common import settings, user_errors
from bot.db import server
from bot.db.connection import connect, redact, resolve_url
from bot.db.migrations import available, migrate


@click.group("db")
def db_group() -> None:
    """The PostgreSQL + pgvector database (embedded unless DATABASE_URL is set)."""


def _describe_server(url: str, timeout_s: float) -> dict:
    with connect(url, timeout_s) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        vector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        has_table = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
        schema = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] if has_table else None
        counts = {}
        if schema is not None:
            for table in ("collections", "documents", "chunks", "sessions", "messages", "adapters"):
                counts[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return {
        "postgres": version,
        "vector_extension": vector[0] if vector else None,
        "schema_version": schema,
        "latest_schema_version": available()[-1].version,
        "rows": counts,
    }


@db_group.command("start")
@user_errors
def db_start() -> None:
    """Start the embedded server (if used) and bring the schema up to date."""
    config = settings()
    url = resolve_url(config)
    with connect(url, config.connect_timeout_s) as conn:
        applied = migrate(conn, embedding_dim=config.embedding_dim)
    where = "DATABASE_URL" if config.database_url else f"embedded, data in {config.pgdata_dir}"
    click.echo(f"PostgreSQL running ({where}); migrations applied now: {applied or 'none (up to date)'}")


@db_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def db_status(as_json: bool) -> None:
    """Say whether the database runs, its PostgreSQL and pgvector versions, and row counts."""
    config = settings()
    report: dict = {"mode": "external" if config.database_url else "embedded"}
    if config.database_url:
        url = config.database_url
    else:
        state = server.status(config.pgdata_dir)
        report.update(pgdata=str(state.pgdata), initialised=state.initialised, pid=state.pid)
        if not state.running:
            report["running"] = False
            _print(report, as_json)
            raise SystemExit(1)
        url = state.uri
    report["url"] = redact(url)
    report["running"] = True
    report.update(_describe_server(url, config.connect_timeout_s))
    _print(report, as_json)


def _print(report: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        click.echo(f"{key:>22}: {value}")


@db_group.command("stop")
@user_errors
def db_stop() -> None:
    """Stop the embedded server (data is kept)."""
    config = settings()
    if config.database_url:
        raise click.ClickException("DATABASE_URL is set: ragtune does not manage that server")
    stopped = server.stop(config.pgdata_dir)
    click.echo("stopped" if stopped else "not running")


@db_group.command("url")
@click.option("--show-password", is_flag=True, help="Print the URL with its password.")
@user_errors
def db_url(show_password: bool) -> None:
    """Print the connection URL (starting the embedded server if needed), e.g. for psql."""
    url = resolve_url(settings())
    click.echo(url if show_password else redact(url))


@click.group("config")
def config_group() -> None:
    """The effective configuration."""


@config_group.command("show")
@user_errors
def config_show() -> None:
    """Print every setting with its effective value (secrets hidden)."""
    values = settings().model_dump(mode="json")
    for secret in ("openai_api_key", "api_keys"):
        if values.get(secret):
            values[secret] = "***"
    if values.get("database_url"):
        values["database_url"] = redact(values["database_url"])
    click.echo(json.dumps(values, indent=2))


@config_group.command("docs")
def config_docs() -> None:
    """Print every setting as a markdown table (the source of docs/configuration.md)."""
    from bot.config import settings_table

    click.echo(settings_table())


COMMANDS = [db_group, config_group]
