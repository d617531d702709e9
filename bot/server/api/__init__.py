"""The HTTP API: one FastAPI router per resource, the services in `app.state`.

- `chat`: OpenAI-compatible `POST /v1/chat/completions` and `GET /v1/models`;
- `documents`: uploads, documents, collections and search;
- `sessions`: a caller's conversations;
- `feedback`: the team's ratings and corrections of answers (issue #18);
- `health`: `/healthz`, `/v1/me` and the answer for unknown `/v1` paths;
- `errors`: the error format and the request-size limits.
"""

from __future__ import annotations

from fastapi import FastAPI

from bot.conversation.services import Services
from bot.server.api import chat, documents, feedback, health, sessions
from bot.server.api.common import ApiError, error_body
from bot.server.api.documents import safe_filename
from bot.server.api.errors import install_error_handlers

__all__ = ["ApiError", "build_api", "error_body", "install_error_handlers", "safe_filename"]


def build_api(app: FastAPI, services: Services) -> None:
    """Serve the API on `app` with these services (error handlers are installed separately)."""
    app.state.services = services
    routers = (health.router, chat.router, documents.router, sessions.router, feedback.router)
    for router in (*routers, health.unknown_paths):
        app.include_router(router)
