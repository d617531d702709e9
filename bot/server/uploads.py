"""Uploaded files into the knowledge base: the one path the API and the chat UI share.

The collection is checked (name rule, the caller's right to add to it), the files go in with the configured
chunking under the names the user gave them (not their temporary names), and the report speaks of those names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.conversation.services import Services
from bot.server.auth import may_use_collection
from knowledge.loaders import without_nul
from knowledge.names import check_collection_name


class UploadRefused(ValueError):
    """The upload cannot go into that collection; `status` and `code` are what the API answers."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class UploadReport:
    collection: str
    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    chunks: int = 0
    seconds: float = 0.0


def upload_collection(services: Services, owner: str, requested: str | None) -> str:
    """The collection an upload goes into: the one asked for, else the default; refused when not allowed."""
    settings = services.settings
    name = without_nul(requested or "").strip() or settings.default_collection
    try:
        check_collection_name(name)
    except ValueError as exc:
        raise UploadRefused(str(exc), 400, "invalid_collection") from None
    if not may_use_collection(owner, name, settings):
        raise UploadRefused(
            f"collection {name!r}: this caller may not add documents to it", 403, "collection_forbidden"
        )
    return name


def ingest_uploads(services: Services, collection: str, files: Mapping[Path, str]) -> UploadReport:
    """Ingest `files` (path on disk → the name the user gave it) into `collection`.

    ValueError (from the store) when the collection cannot take them, e.g. it was built with another embedder. A
    collection this upload created stays only if a document went into it: a failed upload leaves no empty name in
    the pickers.
    """
    settings = services.settings
    names = {str(path): name for path, name in files.items()}
    created = not collection_exists(services.store.pool, collection)
    try:
        report = services.store.ingest(
            list(names),
            collection=collection,
            chunk_size=settings.chunk_size,
            chunk_overlap=settings.chunk_overlap,
            source_names=names,
        )
    finally:
        if created:
            drop_if_empty(services.store.pool, collection)

    resolved = {str(Path(path).resolve()): name for path, name in names.items()}

    def shown(path: str) -> str:
        return names.get(str(path)) or resolved.get(str(Path(path).resolve()), Path(str(path)).name)

    return UploadReport(
        collection=collection,
        added=[shown(p) for p in report.added],
        unchanged=[shown(p) for p in report.unchanged],
        replaced=[shown(p) for p in report.replaced],
        failed=[(shown(p), reason) for p, reason in report.failed],
        chunks=report.chunks,
        seconds=report.seconds,
    )


def collection_exists(pool: Any, name: str) -> bool:
    with pool.connection() as conn:
        return conn.execute("SELECT 1 FROM collections WHERE name = %s", (name,)).fetchone() is not None


def drop_if_empty(pool: Any, name: str) -> bool:
    """Delete collection `name` if it holds no document, in one statement (a document written meanwhile keeps it)."""
    with pool.connection() as conn:
        deleted = conn.execute(
            "DELETE FROM collections c WHERE c.name = %s"
            " AND NOT EXISTS (SELECT 1 FROM documents d WHERE d.collection = c.name)",
            (name,),
        ).rowcount
    return deleted > 0
