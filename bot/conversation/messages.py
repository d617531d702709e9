"""The one check every front end (API, UI, CLI) and the pipeline apply to a chat message.

NUL characters are dropped (PostgreSQL text cannot hold them), surrounding white space is trimmed, and an
empty or over-long message is refused with a `MessageError` that says which and carries an error code the
API returns as it is.
"""

from __future__ import annotations

from knowledge.loaders import without_nul


class MessageError(ValueError):
    """A message that cannot be answered; `code` is the API's error code for it."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def check_length(text: str, max_chars: int | None, what: str = "message") -> str:
    if max_chars is not None and len(text) > max_chars:
        raise MessageError(f"{what}: longer than {max_chars} characters ({len(text)}); shorten it", "message_too_long")
    return text


def clean_message(text: str | None, max_chars: int | None = None) -> str:
    """The message as the pipeline answers it; MessageError when it is empty or longer than `max_chars`."""
    cleaned = without_nul(text or "").strip()
    if not cleaned:
        raise MessageError("message: empty", "empty_message")
    return check_length(cleaned, max_chars)
