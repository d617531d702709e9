"""One server for everything: the HTTP API under /v1 and /healthz, the Gradio chat at /.

Frames are allowed (no X-Frame-Options), so a portal can embed the chat in an iframe; put the
portal's user name in `trusted_user_header` to give each of its users their own sessions.
"""

from __future__ import annotations

import logging

import anyio.to_thread
import gradio as gr
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bot.conversation.services import Services
from bot.server.api import build_api, error_body, install_error_handlers
from bot.server.auth import ui_credentials
from bot.server.ui import CSS, build_ui

log = logging.getLogger(__name__)

# Chat requests wait in worker threads for the one local model; with anyio's default of 40 threads, 40 queued
# chats would also block session reads and health checks. A waiting thread costs little, so allow many.
WORKER_THREADS = 256


def create_app(services: Services) -> FastAPI:
    app = FastAPI(title="ragtune", version="0.1.0", docs_url="/v1/docs", openapi_url="/v1/openapi.json")
    install_error_handlers(app, services)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(error_body(str(exc.detail), code), status_code=exc.status_code, headers=headers)

    @app.middleware("http")
    async def _allow_frames(request: Request, call_next):
        response = await call_next(request)
        if "x-frame-options" in response.headers:
            del response.headers["x-frame-options"]
        return response

    @app.middleware("http")
    async def _enough_worker_threads(request: Request, call_next):
        limiter = anyio.to_thread.current_default_thread_limiter()  # per event loop, so set it from inside one
        if limiter.total_tokens < WORKER_THREADS:
            limiter.total_tokens = WORKER_THREADS
        return await call_next(request)

    build_api(app, services)
    blocks = build_ui(services)
    settings = services.settings
    return gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        auth=ui_credentials(settings),
        auth_message="Log in to ragtune" if settings.ui_users else None,
        server_name=settings.host,
        server_port=settings.port,
        footer_links=["api"],
        css=CSS,
        max_file_size=f"{settings.max_upload_mb}mb",
        ssr_mode=False,
    )


def serve(services: Services, host: str | None = None, port: int | None = None) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    host = host or services.settings.host
    port = port or services.settings.port
    app = create_app(services)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
