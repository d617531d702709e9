"""What every API resource shares: the error type and body, the services and the caller as dependencies, and
the checks on ids and collections that several resources apply."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import BaseModel, model_validator

from bot.conversation.services import Services
from bot.memory import SessionNotFound
from bot.server.auth import api_owner, readable_collections
from knowledge.loaders import without_nul
from knowledge.names import check_collection_name

SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,200}$"  # ids are token_urlsafe: anything else cannot exist
_SESSION_ID = re.compile(SESSION_ID_PATTERN)


class ApiError(Exception):
    """An error the client can act on: its HTTP status, message, OpenAI-style code and the parameter at fault."""

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


def get_services(request: Request) -> Services:
    """The app's services, set once by `build_api` (so every resource reads the same ones)."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_owner(request: Request, services: ServicesDep) -> str:
    """The caller's owner id (API key, trusted header or the local user), or 401."""
    return api_owner(request, services.settings)


OwnerDep = Annotated[str, Depends(get_owner)]


def valid_collection_name(name: str) -> bool:
    try:
        check_collection_name(name)
    except ValueError:
        return False
    return True


def check_session_id(session_id: str, param: str | None = "session_id") -> None:
    if not _SESSION_ID.match(session_id):
        raise ApiError(
            400, "session id: use the id the API returned (letters, digits, '-' and '_')", "invalid_session_id", param
        )


def collection_scope(services: Services, owner: str, requested: str | None) -> str | list[str] | None:
    """What this owner's search may read; a restricted collection they may not read is 'not found'."""
    settings = services.settings
    names = []
    if settings.restricted_collections and not requested:
        names = [c.name for c in services.store.list_collections()]
    try:
        return readable_collections(owner, requested, names, settings)
    except LookupError:
        raise ApiError(404, f"collection {requested!r}: not found", "collection_not_found", "collection") from None


def check_session(services: Services, owner: str, session_id: str) -> None:
    """404 unless `session_id` is one of this owner's sessions."""
    check_session_id(session_id)
    try:
        services.memory.get_session(session_id, owner)
    except SessionNotFound:
        raise ApiError(404, f"session {session_id!r}: not found", "session_not_found", "session_id") from None
