"""How the API fails: its error format for every kind of error, and the request-size limits.

Faults (issue #9): a generator that timed out or is down is a gateway error with its one-line reason; a database
that is down is a 503 the client may retry (its text may name the server: not shown); anything unexpected is a 500
whose details go to the log only (an exception's text can carry a connection string or a key).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from bot.conversation.services import Services
from bot.db.connection import UNAVAILABLE_ERRORS
from bot.llm.types import GeneratorUnavailable
from bot.server.api.common import ApiError, error_body
from bot.server.auth import redact

log = logging.getLogger(__name__)


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
        body = error_body(
            "the database is unavailable right now; try again shortly", "database_unavailable", kind="server_error"
        )
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    for unavailable in UNAVAILABLE_ERRORS:
        app.add_exception_handler(unavailable, _database_down)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The details go to the log only: an exception's text can carry a connection string or a key.
        trace = redact("".join(traceback.format_exception(exc)), settings)
        log.error("unexpected %s on %s %s\n%s", type(exc).__name__, request.method, request.url.path, trace)
        return JSONResponse(
            error_body(
                f"internal error ({type(exc).__name__}); see the server log", "internal_error", kind="server_error"
            ),
            status_code=500,
        )

    install_size_limits(app, settings)


def body_limit(path: str, settings: Any) -> int:
    """Bytes a request body to `path` may have: uploads by `max_upload_mb`, everything else by `max_request_kb`."""
    return settings.max_upload_mb * 1024 * 1024 if path == "/v1/documents" else settings.max_request_kb * 1024


def install_size_limits(app: FastAPI, settings: Any) -> None:
    """413 for /v1 bodies over `body_limit`: from Content-Length before reading, or while reading a chunked body."""
    app.add_middleware(StreamedBodyLimit, settings=settings)

    @app.middleware("http")
    async def _limit_size(request: Request, call_next):
        if request.url.path.startswith("/v1/"):
            limit = body_limit(request.url.path, settings)
            length = request.headers.get("content-length")
            if length and length.isdigit() and int(length) > limit:
                message = f"request body of {int(length)} bytes is over the limit of {limit} bytes"
                return JSONResponse(error_body(message, "request_too_large"), status_code=413)
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
        limit = body_limit(scope["path"], self.settings)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > limit:
                response = JSONResponse(
                    error_body(f"request body is over the limit of {limit} bytes", "request_too_large"), status_code=413
                )
                await response(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)
