"""`ragtune ingest`, `ragtune search` and `ragtune docs list|delete`: the knowledge base from the terminal."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from bot.cli.common import database, embedder, settings, user_errors
from knowledge.search_modes import SEARCH_MODES


def open_store(db, config):
    """A KnowledgeStore on the configured embedder (no generator, no torch); imports happen here, not at start-up."""
    from knowledge.store import KnowledgeStore

    return KnowledgeStore(db.pool, embedder(config), ef_search=config.hnsw_ef_search)


@click.command("ingest")
@click.argument("paths", nargs=-1, required=True)
@click.option("-c", "--collection", default=None, help="Collection to add to (default: the configured one).")
@click.option("--glob", default=None, help="Only files matching this pattern inside folders, e.g. '*.md'.")
@click.option("--chunk-size", type=int, default=None, help="Characters per chunk.")
@click.option("--chunk-overlap", type=int, default=None, help="Characters shared by neighbouring chunks.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--reindex", is_flag=True, help="Rebuild the HNSW/full-text indexes afterwards (after huge loads).")
@user_errors
def ingest(paths, collection, glob, chunk_size, chunk_overlap, as_json, quiet, reindex) -> None:
    """Add files or folders (.txt .md .html .pdf .docx .jsonl .csv) to the knowledge base.

    Unchanged files are skipped, changed files replace their old version; a file that cannot be read is
    reported with the reason and the others still go in (exit status 1 if any failed).
    """
    from bot.server.uploads import collection_exists, drop_if_empty

    config = settings()
    name = collection or config.default_collection
    db = database()
    try:
        store = open_store(db, config)
        created = not collection_exists(db.pool, name)
        try:
            report = store.ingest(
                list(paths),
                name,
                glob=glob,
                chunk_size=chunk_size or config.chunk_size,
                chunk_overlap=config.chunk_overlap if chunk_overlap is None else chunk_overlap,
                progress=not quiet and not as_json,
            )
        finally:
            if created:  # nothing went in: no empty collection left behind
                drop_if_empty(db.pool, name)
        if reindex:
            store.rebuild_indexes()
    finally:
        db.close()
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2))
    else:
        for path, reason in report.failed:
            click.echo(f"failed: {path}: {reason}", err=True)
        click.echo(report.summary())
    if report.failed:
        raise SystemExit(1)


def _parse_filters(values: tuple[str, ...]) -> dict:
    filters: dict = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"filter {item!r} must look like key=value")
        filters[key] = value
    return filters


@click.command("search")
@click.argument("query")
@click.option("-c", "--collection", multiple=True, help="Collection(s) to search (default: all).")
@click.option("-k", "k", type=click.IntRange(1, 1000), default=None, help="How many chunks.")
@click.option("--mode", type=click.Choice(SEARCH_MODES), default=None, help="dense, keyword or hybrid (default).")
@click.option("-f", "--filter", "filters", multiple=True, help="key=value on source, title, page or metadata.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def search(query, collection, k, mode, filters, as_json) -> None:
    """Find the chunks that best match QUERY."""
    config = settings()
    db = database()
    try:
        store = open_store(db, config)
        hits = store.search(
            query,
            collection=list(collection) or None,
            k=k or config.top_k,
            mode=mode or config.search_mode,
            filters=_parse_filters(filters) or None,
        )
    finally:
        db.close()
    if as_json:
        click.echo(json.dumps([asdict(hit) for hit in hits], indent=2, default=str))
        return
    from bot.answer.sentences import strip_markdown

    if not hits:
        click.echo("no matching chunks")
    for rank, hit in enumerate(hits, start=1):
        where = hit.source + (f" p.{hit.page}" if hit.page else "") + (f" § {hit.heading}" if hit.heading else "")
        snippet = " ".join(strip_markdown(hit.text).split())[:200]
        click.echo(f"{rank:>2}. [{hit.score:.3f}] {where}\n    {snippet}")


@click.group("docs")
def docs_group() -> None:
    """Collections and documents in the knowledge base."""


@docs_group.command("list")
@click.option("-c", "--collection", default=None, help="Documents of this collection (default: list collections).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def docs_list(collection, as_json) -> None:
    """List collections, or the documents of one collection."""
    from knowledge.store import KnowledgeStore

    db = database()
    try:
        store = KnowledgeStore(db.pool, embedder=None)  # listing needs no model
        rows = store.list_documents(collection) if collection else store.list_collections()
    finally:
        db.close()
    if as_json:
        click.echo(json.dumps([asdict(row) for row in rows], indent=2, default=str))
        return
    if not rows:
        click.echo("no documents" if collection else "no collections")
    for row in rows:
        if collection:
            click.echo(f"{row.id:>6}  {row.chunks:>5} chunks  {row.source}  ({row.title})")
        else:
            click.echo(f"{row.name}: {row.documents} documents, {row.chunks} chunks, model {row.embedding_model}")


@docs_group.command("delete")
@click.argument("document_ids", nargs=-1, type=int)
@click.option("-c", "--collection", default=None, help="Delete this whole collection.")
@click.option("--yes", is_flag=True, help="Do not ask before deleting a collection.")
@user_errors
def docs_delete(document_ids, collection, yes) -> None:
    """Delete documents by id (see `docs list -c NAME`), or a whole collection with --collection."""
    from knowledge.store import KnowledgeStore

    if not document_ids and not collection:
        raise ValueError("give document ids or --collection NAME")
    if collection and not yes:
        click.confirm(f"Delete collection {collection!r} and all its documents?", abort=True)
    db = database()
    missing = []
    try:
        store = KnowledgeStore(db.pool, embedder=None)
        if collection and not store.delete_collection(collection):
            missing.append(f"collection {collection}")
        missing += [f"document {i}" for i in document_ids if not store.delete_document(i)]
    finally:
        db.close()
    deleted = len(document_ids) + (1 if collection else 0) - len(missing)
    click.echo(f"deleted {deleted}")
    if missing:
        raise ValueError(f"not found: {', '.join(missing)}")


COMMANDS = [ingest, search, docs_group]
