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


def may_use_collection(owner: str, collection: str, settings: Settings) -> bool:
    """Whether this owner may read or upload to the collection: unnamed collections are open to everyone.

    An entry of `restricted_collections` is an owner id ('user:alice', 'ui:bob', 'key:<hash>', 'local') or a
    bare name, which matches that name from the portal header or the UI login.
    """
    allowed = settings.restricted_collections.get(collection)
    if allowed is None:
        return True
    kind, _, name = owner.partition(":")
    return owner in allowed or (kind in ("user", "ui") and name in allowed)


def denied_collections(owner: str, settings: Settings) -> set[str]:
    return {name for name in settings.restricted_collections if not may_use_collection(owner, name, settings)}


NO_COLLECTION = ""  # a collection filter that matches nothing: stored names are never empty


def readable_collections(
    owner: str, requested: str | None, all_names: list[str], settings: Settings
) -> str | list[str] | None:
    """What a search for this owner may read: the requested name, the allowed names, or None for all of them.

    Raises LookupError when the owner asked for a collection they may not read, so the caller can answer
    'not found' without saying that it exists.
    """
    if requested:
        if not may_use_collection(owner, requested, settings):
            raise LookupError(requested)
        return requested
    denied = denied_collections(owner, settings)
    if not denied:
        return None
    return [name for name in all_names if name not in denied] or [NO_COLLECTION]


def secret_values(settings: Settings) -> list[str]:
    """Strings that must never reach a log line or a client: API keys, UI passwords, the remote key, DB password."""
    from urllib.parse import urlsplit

    values = [*settings.api_keys, *(pair.split(":", 1)[1] for pair in settings.ui_users)]
    if settings.openai_api_key:
        values.append(settings.openai_api_key)
    if settings.database_url:
        try:
            password = urlsplit(settings.database_url).password
        except ValueError:
            password = None
        if password:
            values.append(password)
    return [v for v in values if len(v) >= 4]


def redact(text: str, settings: Settings) -> str:
    for value in sorted(secret_values(settings), key=len, reverse=True):
        text = text.replace(value, "***")
    return text
