"""The HTTP API: OpenAI-compatible chat completions and models, documents, sessions, health.

Any OpenAI client works against `/v1` (model "ragtune" routes each message; a route or adapter name forces
it). ragtune keeps the conversation itself: send `session_id` (body field or `X-Session-Id` header) to
continue one; without it a new session starts, seeded with the messages the client sent. Every answer
carries a `ragtune` object with the session, route, confidence, reason and sources.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
import traceback
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from bot.conversation import Token, TurnDone, TurnOptions, TurnStart
from bot.conversation.services import Services
from bot.db.connection import UNAVAILABLE_ERRORS
from bot.llm.types import GeneratorUnavailable
from bot.memory import SessionNotFound
from bot.server.auth import api_owner, may_use_collection, readable_collections, redact
from knowledge.loaders import without_nul

log = logging.getLogger(__name__)

AUTO_MODELS = ("ragtune", "auto")
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,100}$"  # collection names, as the store accepts them
SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,200}$"  # ids are token_urlsafe: anything else cannot exist
_SESSION_ID = re.compile(SESSION_ID_PATTERN)


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_body(message: str, code: str, param: str | None = None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


class Body(BaseModel):
    """A JSON request body; NUL characters are dropped from every string before validation."""

    @model_validator(mode="before")
    @classmethod
    def _drop_nul(cls, data: Any) -> Any:
        return without_nul(data)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")


class ChatRequest(Body):
    model_config = ConfigDict(extra="allow")

    model: str = "ragtune"
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=8192)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    session_id: str | None = Field(default=None, pattern=SESSION_ID_PATTERN)
    collection: str | None = Field(default=None, pattern=NAME_PATTERN)


FilterScalar = str | int | float | bool
FilterKey = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class SearchRequest(Body):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    collection: str | None = Field(default=None, pattern=NAME_PATTERN)
    k: int = Field(default=5, ge=1, le=100)
    mode: Literal["dense", "keyword", "hybrid"] | None = None
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


def model_catalogue(services: Services) -> dict[str, TurnOptions]:
    """Model id → the options it forces. Routes and adapters are models."""
    models: dict[str, TurnOptions] = {name: TurnOptions() for name in AUTO_MODELS}
    models["knowledge"] = TurnOptions(route="knowledge")
    models["skill"] = TurnOptions(route="skill")
    for spec in services.conversation.routes():
        models[spec.name] = TurnOptions(route=spec.name)
    for adapter in services.conversation.adapters():
        models.setdefault(adapter, TurnOptions(adapter=adapter))
    return models


def _turn_payload(event: TurnDone | TurnStart) -> dict[str, Any]:
    data = {
        "session_id": event.session_id,
        "route": event.route,
        "action": event.action,
        "adapter": event.adapter,
        "confidence": event.confidence,
        "reason": event.reason,
        "sources": event.sources,
        "not_found": event.not_found,
    }
    if isinstance(event, TurnDone):
        data.update(turn=event.turn, timings=event.timings)
    return data


def build_router(services: Services) -> APIRouter:
    settings = services.settings
    router = APIRouter()

    def owner(request: Request) -> str:
        return api_owner(request, settings)

    def check_session_id(session_id: str, param: str | None = "session_id") -> None:
        if not _SESSION_ID.match(session_id):
            raise ApiError(400, "session id: use the id the API returned (letters, digits, '-' and '_')",
                           "invalid_session_id", param)  # fmt: skip

    def collection_scope(owner_id: str, requested: str | None) -> str | list[str] | None:
        """What this owner's search may read; a restricted collection they may not read is 'not found'."""
        names = []
        if settings.restricted_collections and not requested:
            names = [c.name for c in services.store.list_collections()]
        try:
            return readable_collections(owner_id, requested, names, settings)
        except LookupError:
            raise ApiError(404, f"collection {requested!r}: not found", "collection_not_found", "collection") from None

    def session_for(owner_id: str, session_id: str) -> None:
        check_session_id(session_id)
        try:
            services.memory.get_session(session_id, owner_id)
        except SessionNotFound:
            raise ApiError(404, f"session {session_id!r}: not found", "session_not_found", "session_id") from None

    @router.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            with services.db.connection(timeout_s=2) as conn:
                conn.execute("SELECT 1")
            database = "ok"
        except Exception as exc:  # the point of a health check is to report, not raise
            database = f"error: {type(exc).__name__}"
        body = {
            "status": "ok" if database == "ok" else "degraded",
            "database": database,
            "generator": settings.openai_base_url or settings.generator_model,
            "adapters": services.conversation.adapters(),
        }
        return JSONResponse(body, status_code=200 if database == "ok" else 503)

    @router.get("/v1/me")
    def whoami(owner_id: str = Depends(owner)) -> dict:
        """The caller's owner id: what `restricted_collections` names to let this caller in."""
        return {"owner": owner_id}

    @router.get("/v1/models")
    def list_models(_: str = Depends(owner)) -> dict:
        created = int(time.time())
        data = []
        for name, options in model_catalogue(services).items():
            kind = "adapter" if options.adapter else "route" if options.route else "auto"
            data.append({"id": name, "object": "model", "created": created, "owned_by": "ragtune", "ragtune": kind})
        return {"object": "list", "data": data}

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatRequest, request: Request, owner_id: str = Depends(owner)
    ) -> JSONResponse | StreamingResponse:
        catalogue = model_catalogue(services)
        if body.model not in catalogue:
            raise ApiError(
                404, f"model {body.model!r}: unknown (GET /v1/models lists them)", "model_not_found", "model"
            )
        last = body.messages[-1]
        if last.role != "user" or not last.text().strip():
            raise ApiError(400, "messages: the last message must be a non-empty user message", "invalid_messages",
                           "messages")  # fmt: skip
        for i, message in enumerate(body.messages):
            if len(message.text()) > settings.max_message_chars:
                raise ApiError(400, f"messages[{i}]: longer than {settings.max_message_chars} characters",
                               "message_too_long", "messages")  # fmt: skip
        base = catalogue[body.model]
        scope = await run_in_threadpool(collection_scope, owner_id, body.collection)
        options = TurnOptions(
            route=base.route,
            adapter=base.adapter,
            collection=scope,
            max_new_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=body.temperature,
        )
        session_id = body.session_id or request.headers.get("x-session-id")
        history = None
        if session_id:
            await run_in_threadpool(session_for, owner_id, session_id)
        else:
            session_id = await run_in_threadpool(services.memory.create_session, owner_id, "")
            history = [
                {"role": m.role, "content": m.text()} for m in body.messages[:-1] if m.role in ("user", "assistant")
            ]
        events = services.conversation.stream(session_id, owner_id, last.text(), options, history=history)
        try:  # routing and retrieval run before the response starts, so their errors are proper 4xx
            start = await run_in_threadpool(next, events)
        except ValueError as exc:
            raise ApiError(400, str(exc), "invalid_request") from None
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        headers = {"X-Session-Id": session_id}
        if body.stream:
            return StreamingResponse(
                _sse(events, start, completion_id, created, body.model, settings),
                media_type="text/event-stream",
                headers=headers,
            )
        done = await run_in_threadpool(_drain, events)
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": body.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": done.answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                "ragtune": _turn_payload(done),
            },
            headers=headers,
        )

    @router.post("/v1/documents")
    def upload_documents(
        files: list[UploadFile] = File(...),  # noqa: B008 - FastAPI's idiom
        collection: str = Form(default=""),
        owner_id: str = Depends(owner),
    ) -> dict:
        name = collection.replace("\x00", "").strip() or settings.default_collection
        if not re.match(NAME_PATTERN, name):
            raise ApiError(400, f"collection {name!r}: use 1-100 letters, digits, '-' and '_'", "invalid_collection",
                           "collection")  # fmt: skip
        if not may_use_collection(owner_id, name, settings):
            raise ApiError(403, f"collection {name!r}: this caller may not add documents to it",
                           "collection_forbidden", "collection")  # fmt: skip
        limit = settings.max_upload_mb * 1024 * 1024
        with tempfile.TemporaryDirectory(prefix="ragtune-upload-") as tmp:
            paths, names = [], {}
            total = 0
            for i, upload in enumerate(files):
                filename = safe_filename(upload.filename, f"upload-{i}")
                target = Path(tmp) / f"{i:03d}-{filename}"
                total += _copy_limited(upload.file, target, limit - total)
                if total > limit:
                    raise ApiError(413, f"upload {filename!r}: over the limit of {settings.max_upload_mb} MB in all",
                                   "request_too_large", "files")  # fmt: skip
                paths.append(target)
                names[str(target)] = filename
            try:
                report = services.store.ingest(
                    [str(p) for p in paths],
                    collection=name,
                    chunk_size=settings.chunk_size,
                    chunk_overlap=settings.chunk_overlap,
                    source_names=names,
                )
            except ValueError as exc:
                raise ApiError(400, str(exc), "invalid_document") from None

        def shown(path: str) -> str:
            return names.get(str(path), Path(str(path)).name.split("-", 1)[-1])

        return {
            "collection": name,
            "added": [shown(p) for p in report.added],
            "unchanged": [shown(p) for p in report.unchanged],
            "replaced": [shown(p) for p in report.replaced],
            "chunks": report.chunks,
            "failed": [{"file": shown(path), "reason": reason} for path, reason in report.failed],
            "seconds": round(report.seconds, 3),
        }

    @router.get("/v1/documents")
    def list_documents(collection: str | None = None, owner_id: str = Depends(owner)) -> dict:
        if collection is not None and not re.match(NAME_PATTERN, collection):
            raise ApiError(404, f"collection {collection!r}: not found", "collection_not_found", "collection")
        scope = collection_scope(owner_id, collection)
        docs = services.store.list_documents(collection)
        if isinstance(scope, list):
            docs = [d for d in docs if d.collection in scope]
        data = [{"id": d.id, "collection": d.collection, "title": d.title, "source": Path(d.source).name,
                 "chunks": d.chunks} for d in docs]  # fmt: skip
        return {"data": data}

    @router.get("/v1/collections")
    def list_collections(owner_id: str = Depends(owner)) -> dict:
        visible = [c for c in services.store.list_collections() if may_use_collection(owner_id, c.name, settings)]
        return {"data": [{"name": c.name, "documents": c.documents, "chunks": c.chunks} for c in visible]}

    @router.post("/v1/search")
    def search(body: SearchRequest, owner_id: str = Depends(owner)) -> dict:
        if len(body.query) > settings.max_message_chars:
            raise ApiError(400, f"query: longer than {settings.max_message_chars} characters", "message_too_long",
                           "query")  # fmt: skip
        if body.filters and "collection" in body.filters:
            raise ApiError(400, "filters.collection: name the collection in the 'collection' field", "invalid_filter",
                           "filters")  # fmt: skip
        scope = collection_scope(owner_id, body.collection)
        try:
            hits = services.store.search(body.query, collection=scope, k=body.k, mode=body.mode or settings.search_mode,
                                         filters=body.filters)  # fmt: skip
        except ValueError as exc:
            raise ApiError(400, str(exc), "invalid_filter", "filters") from None
        return {"data": [{"collection": h.collection, "document_id": h.document_id, "title": h.title,
                          "source": Path(h.source).name, "page": h.page, "heading": h.heading, "text": h.text,
                          "score": round(float(h.score), 4)} for h in hits]}  # fmt: skip

    @router.get("/v1/sessions")
    def list_sessions(owner_id: str = Depends(owner)) -> dict:
        sessions = services.memory.list_sessions(owner_id)
        return {"data": [{"id": s.id, "title": s.title, "turns": s.turns, "updated_at": s.updated_at.isoformat()}
                         for s in sessions]}  # fmt: skip

    @router.get("/v1/sessions/{session_id}")
    def get_session(session_id: str, owner_id: str = Depends(owner)) -> dict:
        check_session_id(session_id, None)
        try:
            info = services.memory.get_session(session_id, owner_id)
            messages = services.memory.messages(session_id, owner_id)
        except SessionNotFound:
            raise ApiError(404, f"session {session_id!r}: not found", "session_not_found") from None
        return {
            "id": info.id,
            "title": info.title,
            "summary": info.summary,
            "created_at": info.created_at.isoformat(),
            "messages": [m.as_dict() for m in messages],
        }

    @router.delete("/v1/sessions/{session_id}")
    def delete_session(session_id: str, owner_id: str = Depends(owner)) -> dict:
        check_session_id(session_id, None)
        try:
            services.memory.delete_session(session_id, owner_id)
        except SessionNotFound:
            raise ApiError(404, f"session {session_id!r}: not found", "session_not_found") from None
        return {"id": session_id, "deleted": True}

    @router.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    def no_such_endpoint(rest: str, request: Request) -> None:
        """Unknown /v1 paths answer in the API's error format, not with the web UI's page."""
        raise ApiError(404, f"no such endpoint: {request.method} /v1/{rest[:100]} (GET /v1/docs lists them)",
                       "not_found")  # fmt: skip

    return router


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


def _drain(events: Iterator) -> TurnDone:
    done = None
    for event in events:
        if isinstance(event, TurnDone):
            done = event
    if done is None:
        raise RuntimeError("the turn ended without an answer")
    return done


def _sse(
    events: Iterator, start: TurnStart, completion_id: str, created: int, model: str, settings: Any
) -> Iterator[str]:
    """OpenAI's chunk stream; the first chunk carries the route and sources, the last the stored turn."""

    def chunk(delta: dict, finish: str | None = None, extra: dict | None = None) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        if extra:
            body["ragtune"] = extra
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, extra=_turn_payload(start))
    try:
        for event in events:  # the pipeline already cut any echo of the system prompt out of the tokens
            if isinstance(event, Token):
                yield chunk({"content": event.text})
            elif isinstance(event, TurnDone):
                yield chunk({}, "stop", _turn_payload(event))
    except Exception as exc:  # headers are sent: report in-band, as OpenAI servers do
        log.error("stream failed: %s", redact("".join(traceback.format_exception(exc)), settings))
        body = error_body(f"generation failed ({type(exc).__name__}); see the server log", "generation_failed",
                          kind="server_error")  # fmt: skip
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"


def install_error_handlers(app: FastAPI, services: Services) -> None:
    settings = services.settings

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.code, exc.param), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            message = f"invalid JSON: {first.get('ctx', {}).get('error', 'cannot parse the body')}"
            return JSONResponse(error_body(message, "invalid_json"), status_code=400)
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")[:200] or "body"
        return JSONResponse(error_body(f"{where}: {first.get('msg', 'invalid')}", "invalid_request", where), 400)

    # Faults (issue #9): a generator that timed out or is down is a gateway error with its one-line reason; a
    # database that is down is a 503 the client may retry (its text may name the server: not shown).
    @app.exception_handler(GeneratorUnavailable)
    async def _generator_down(_: Request, exc: GeneratorUnavailable) -> JSONResponse:
        status = 504 if "did not answer within" in str(exc) else 502
        body = error_body(redact(str(exc), settings), "generator_unavailable", kind="server_error")
        return JSONResponse(body, status_code=status)

    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        body = error_body("the database is unavailable right now; try again shortly", "database_unavailable",
                          kind="server_error")  # fmt: skip
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    for unavailable in UNAVAILABLE_ERRORS:
        app.add_exception_handler(unavailable, _database_down)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The details go to the log only: an exception's text can carry a connection string or a key.
        trace = redact("".join(traceback.format_exception(exc)), settings)
        log.error("unexpected %s on %s %s\n%s", type(exc).__name__, request.method, request.url.path, trace)
        return JSONResponse(error_body(f"internal error ({type(exc).__name__}); see the server log", "internal_error",
                                       kind="server_error"), status_code=500)  # fmt: skip

    app.add_middleware(StreamedBodyLimit, settings=settings)

    @app.middleware("http")
    async def _limit_size(request: Request, call_next):
        if request.url.path.startswith("/v1/"):
            limit = (settings.max_upload_mb * 1024 * 1024 if request.url.path == "/v1/documents"
                     else settings.max_request_kb * 1024)  # fmt: skip
            length = request.headers.get("content-length")
            if length and length.isdigit() and int(length) > limit:
                return JSONResponse(
                    error_body(f"request body of {int(length)} bytes is over the limit of {limit} bytes",
                               "request_too_large"), status_code=413)  # fmt: skip
        return await call_next(request)


class StreamedBodyLimit:
    """The size limit for bodies sent without Content-Length (chunked): read up to the limit, then replay.

    Bodies with a Content-Length are checked from the header before anything is read.
    """

    def __init__(self, app: Any, settings: Any) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or []) if scope["type"] == "http" else {}
        if scope["type"] != "http" or not scope["path"].startswith("/v1/") or b"content-length" in headers:
            await self.app(scope, receive, send)
            return
        upload = scope["path"] == "/v1/documents"
        limit = self.settings.max_upload_mb * 1024 * 1024 if upload else self.settings.max_request_kb * 1024
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > limit:
                response = JSONResponse(error_body(f"request body is over the limit of {limit} bytes",
                                                   "request_too_large"), status_code=413)  # fmt: skip
                await response(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)
