"""The knowledge base over HTTP: upload documents, list documents and collections, search."""

from __future__ import annotations

import tempfile
import unicodedata
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import ConfigDict, Field, StringConstraints

from bot.conversation.messages import MessageError, check_length
from bot.server.api.common import ApiError, Body, OwnerDep, ServicesDep, collection_scope, valid_collection_name
from bot.server.auth import may_use_collection
from bot.server.uploads import UploadRefused, ingest_uploads, upload_collection
from knowledge.names import COLLECTION_NAME_PATTERN
from knowledge.search_modes import SearchMode

router = APIRouter()

FilterScalar = str | int | float | bool
FilterKey = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class SearchRequest(Body):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    collection: str | None = Field(default=None, pattern=COLLECTION_NAME_PATTERN)
    k: int = Field(default=5, ge=1, le=100)
    mode: SearchMode | None = None
    filters: dict[FilterKey, FilterScalar | list[FilterScalar]] | None = Field(
        default=None, description="source, title, document_id, page, or metadata keys; values or lists of values"
    )


def safe_filename(name: str | None, fallback: str, limit: int = 120) -> str:
    """A client's file name reduced to one harmless path component: no directories (either slash), no
    control characters, no leading dots, at most `limit` characters with the suffix kept."""
    name = unicodedata.normalize("NFC", name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable() and unicodedata.category(c) not in ("Cf", "Zl", "Zp"))
    name = name.strip().lstrip(".").strip()
    if len(name) > limit:
        stem, dot, suffix = name.rpartition(".")
        name = (stem[: limit - len(suffix) - 1] + "." + suffix) if dot and len(suffix) <= 10 else name[:limit]
    return name or fallback


def _copy_limited(source: Any, target: Path, budget: int) -> int:
    """Copy an upload to disk, stopping one chunk past the byte budget; returns the bytes written."""
    written = 0
    with target.open("wb") as out:
        while block := source.read(1024 * 1024):
            out.write(block)
            written += len(block)
            if written > budget:
                break
    return written


def _save_uploads(files: list[UploadFile], folder: Path, max_mb: int) -> dict[Path, str]:
    """Each upload on disk under a harmless unique name → the name its sender gave it; 413 past `max_mb` in all."""
    limit, total, saved = max_mb * 1024 * 1024, 0, {}
    for i, upload in enumerate(files):
        filename = safe_filename(upload.filename, f"upload-{i}")
        target = folder / f"{i:03d}-{filename}"
        total += _copy_limited(upload.file, target, limit - total)
        if total > limit:
            raise ApiError(
                413, f"upload {filename!r}: over the limit of {max_mb} MB in all", "request_too_large", "files"
            )
        saved[target] = filename
    return saved


@router.post("/v1/documents")
def upload_documents(
    services: ServicesDep,
    owner: OwnerDep,
    files: list[UploadFile] = File(...),  # noqa: B008 - FastAPI's idiom
    collection: str = Form(default=""),
) -> dict:
    try:
        name = upload_collection(services, owner, collection)
    except UploadRefused as exc:
        raise ApiError(exc.status, str(exc), exc.code, "collection") from None
    with tempfile.TemporaryDirectory(prefix="ragtune-upload-") as tmp:
        saved = _save_uploads(files, Path(tmp), services.settings.max_upload_mb)
        try:
            report = ingest_uploads(services, name, saved)
        except ValueError as exc:
            raise ApiError(400, str(exc), "invalid_document") from None
    return {
        "collection": name,
        "added": report.added,
        "unchanged": report.unchanged,
        "replaced": report.replaced,
        "chunks": report.chunks,
        "failed": [{"file": file, "reason": reason} for file, reason in report.failed],
        "seconds": round(report.seconds, 3),
    }


@router.get("/v1/documents")
def list_documents(services: ServicesDep, owner: OwnerDep, collection: str | None = None) -> dict:
    if collection is not None and not valid_collection_name(collection):
        raise ApiError(404, f"collection {collection!r}: not found", "collection_not_found", "collection")
    scope = collection_scope(services, owner, collection)
    docs = services.store.list_documents(collection)
    if isinstance(scope, list):
        docs = [d for d in docs if d.collection in scope]
    data = [
        {"id": d.id, "collection": d.collection, "title": d.title, "source": d.source, "chunks": d.chunks} for d in docs
    ]
    return {"data": data}


@router.get("/v1/collections")
def list_collections(services: ServicesDep, owner: OwnerDep) -> dict:
    settings = services.settings
    visible = [c for c in services.store.list_collections() if may_use_collection(owner, c.name, settings)]
    return {"data": [{"name": c.name, "documents": c.documents, "chunks": c.chunks} for c in visible]}


@router.post("/v1/search")
def search(body: SearchRequest, services: ServicesDep, owner: OwnerDep) -> dict:
    settings = services.settings
    try:
        check_length(body.query, settings.max_message_chars, "query")
    except MessageError as exc:
        raise ApiError(400, str(exc), exc.code, "query") from None
    if body.filters and "collection" in body.filters:
        raise ApiError(
            400, "filters.collection: name the collection in the 'collection' field", "invalid_filter", "filters"
        )
    scope = collection_scope(services, owner, body.collection)
    try:
        hits = services.store.search(
            body.query, collection=scope, k=body.k, mode=body.mode or settings.search_mode, filters=body.filters
        )
    except ValueError as exc:
        raise ApiError(400, str(exc), "invalid_filter", "filters") from None
    return {
        "data": [
            {
                "collection": h.collection,
                "document_id": h.document_id,
                "title": h.title,
                "source": h.source,
                "page": h.page,
                "heading": h.heading,
                "text": h.text,
                "score": round(float(h.score), 4),
            }
            for h in hits
        ]
    }
