"""The HTTP API: OpenAI-compatible chat completions and models, documents, sessions, health.

Any OpenAI client works against `/v1` (model "ragtune" routes each message; a route or adapter name forces
it). ragtune keeps the conversation itself: send `session_id` (body field or `X-Session-Id` header) to
continue one; without it a new session starts, seeded with the messages the client sent. Every answer
carries a `ragtune` object with the session, route, confidence, reason and sources.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from bot.conversation import Token, TurnDone, TurnOptions, TurnStart
from bot.conversation.services import Services
from bot.memory import SessionNotFound
from bot.server.auth import api_owner

log = logging.getLogger(__name__)

AUTO_MODELS = ("ragtune", "auto")


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_body(message: str, code: str, param: str | None = None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = "ragtune"
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=8192)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    session_id: str | None = Field(default=None, max_length=200)
    collection: str | None = Field(default=None, max_length=100)


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

    def session_for(owner_id: str, session_id: str) -> None:
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
        options = TurnOptions(
            route=base.route,
            adapter=base.adapter,
            collection=body.collection,
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
                _sse(events, start, completion_id, created, body.model), media_type="text/event-stream", headers=headers
            )
        done = await run_in_threadpool(_drain, events)
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": body.model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": done.answer}, "finish_reason": "stop"}
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
        name = collection or settings.default_collection
        with tempfile.TemporaryDirectory(prefix="ragtune-upload-") as tmp:
            paths = []
            for i, upload in enumerate(files):
                filename = Path(upload.filename or f"upload-{i}").name or f"upload-{i}"
                target = Path(tmp) / f"{i:03d}-{filename}"
                with target.open("wb") as out:
                    shutil.copyfileobj(upload.file, out)
                paths.append(target)
            try:
                report = services.store.ingest([str(p) for p in paths], collection=name)
            except ValueError as exc:
                raise ApiError(400, str(exc), "invalid_document") from None
        failed = [{"file": Path(str(path)).name.split("-", 1)[-1], "reason": reason} for path, reason in report.failed]
        return {
            "collection": name,
            "added": [Path(p).name.split("-", 1)[-1] for p in report.added],
            "unchanged": [Path(p).name.split("-", 1)[-1] for p in report.unchanged],
            "replaced": [Path(p).name.split("-", 1)[-1] for p in report.replaced],
            "chunks": report.chunks,
            "failed": failed,
            "seconds": round(report.seconds, 3),
        }

    @router.get("/v1/sessions")
    def list_sessions(owner_id: str = Depends(owner)) -> dict:
        sessions = services.memory.list_sessions(owner_id)
        return {"data": [{"id": s.id, "title": s.title, "turns": s.turns, "updated_at": s.updated_at.isoformat()}
                         for s in sessions]}  # fmt: skip

    @router.get("/v1/sessions/{session_id}")
    def get_session(session_id: str, owner_id: str = Depends(owner)) -> dict:
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
        try:
            services.memory.delete_session(session_id, owner_id)
        except SessionNotFound:
            raise ApiError(404, f"session {session_id!r}: not found", "session_not_found") from None
        return {"id": session_id, "deleted": True}

    return router


def _drain(events: Iterator) -> TurnDone:
    done = None
    for event in events:
        if isinstance(event, TurnDone):
            done = event
    if done is None:
        raise RuntimeError("the turn ended without an answer")
    return done


def _sse(events: Iterator, start: TurnStart, completion_id: str, created: int, model: str) -> Iterator[str]:
    """OpenAI's chunk stream; the first chunk carries the route and sources, the last the stored turn."""

    def chunk(delta: dict, finish: str | None = None, extra: dict | None = None) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        if extra:
            body["ragtune"] = extra
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, extra=_turn_payload(start))
    try:
        for event in events:
            if isinstance(event, Token):
                yield chunk({"content": event.text})
            elif isinstance(event, TurnDone):
                yield chunk({}, "stop", _turn_payload(event))
    except Exception as exc:  # headers are sent: report in-band, as OpenAI servers do
        log.exception("stream failed")
        body = error_body(f"generation failed: {exc}", "generation_failed", kind="server_error")
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
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return JSONResponse(error_body(f"{where}: {first.get('msg', 'invalid')}", "invalid_request", where), 400)

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
