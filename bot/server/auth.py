"""Who is asking: an API key, a trusted portal header, a UI login, or the local user of an open install.

The owner string names the session owner in the memory. An API key is never stored: its owner is a hash.
With no keys configured the API is open, which is why the default host is 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import HTTPException, Request

from bot.config import Settings

LOCAL_OWNER = "local"


def key_owner(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:24]


def header_owner(value: str) -> str:
    return "user:" + value.strip()[:150]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def api_owner(request: Request, settings: Settings) -> str:
    """The owner for an API request, or 401 with the reason."""
    if settings.trusted_user_header:
        user = request.headers.get(settings.trusted_user_header, "").strip()
        if user:
            return header_owner(user)
    if settings.api_keys:
        token = _bearer(request)
        if token is None:
            raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>'")
        if not any(hmac.compare_digest(token.encode(), key.encode()) for key in settings.api_keys):
            raise HTTPException(401, "invalid API key")
        return key_owner(token)
    if settings.trusted_user_header:
        raise HTTPException(401, f"missing {settings.trusted_user_header} header")
    return LOCAL_OWNER


def ui_owner(username: str | None, headers: dict[str, str] | None, settings: Settings) -> str:
    """The owner for a UI event: the portal's header, else the login, else the local user."""
    if settings.trusted_user_header and headers:
        user = {k.lower(): v for k, v in headers.items()}.get(settings.trusted_user_header.lower(), "").strip()
        if user:
            return header_owner(user)
    if username:
        return "ui:" + username
    return LOCAL_OWNER


def ui_credentials(settings: Settings) -> list[tuple[str, str]] | None:
    if not settings.ui_users:
        return None
    return [tuple(pair.split(":", 1)) for pair in settings.ui_users]  # type: ignore[misc]
