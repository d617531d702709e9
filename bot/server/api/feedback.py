"""The team's feedback on answers: `POST /v1/feedback` rates one turn (up/down, optionally with the corrected reply),
`GET /v1/feedback` lists the caller's ratings. Owner-checked like sessions: another caller's session is 'not found'.

Unknown fields are refused rather than dropped: a misspelt `correction` must not silently lose the team's text.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import ConfigDict, Field

from bot.feedback import MAX_CORRECTION_CHARS, FeedbackStore, TurnNotFound, parse_since
from bot.memory import SessionNotFound
from bot.server.api.common import SESSION_ID_PATTERN, ApiError, Body, OwnerDep, ServicesDep

router = APIRouter()

MAX_LISTED = 1000


class FeedbackRequest(Body):
    model_config = ConfigDict(extra="forbid")

    session_id: str = Field(pattern=SESSION_ID_PATTERN)
    turn: int = Field(ge=1)
    rating: Literal["up", "down"]
    correction: str | None = Field(default=None, max_length=MAX_CORRECTION_CHARS)


@router.post("/v1/feedback")
def rate_turn(body: FeedbackRequest, services: ServicesDep, owner: OwnerDep) -> dict:
    store = FeedbackStore(services.db.pool)
    try:
        feedback = store.rate(body.session_id, body.turn, owner, body.rating, body.correction)
    except SessionNotFound:
        raise ApiError(404, f"session {body.session_id!r}: not found", "session_not_found", "session_id") from None
    except TurnNotFound as exc:
        raise ApiError(404, str(exc), "turn_not_found", "turn") from None
    return feedback.as_dict()


@router.get("/v1/feedback")
def list_feedback(services: ServicesDep, owner: OwnerDep, since: str | None = None, limit: int = 100) -> dict:
    if not 1 <= limit <= MAX_LISTED:
        raise ApiError(400, f"limit: must be between 1 and {MAX_LISTED}", "invalid_request", "limit")
    try:
        bound = parse_since(since) if since else None
    except ValueError as exc:
        raise ApiError(400, str(exc), "invalid_request", "since") from None
    store = FeedbackStore(services.db.pool)
    items = store.list_feedback(owner, since=bound, limit=limit)
    return {"data": [item.as_dict() for item in items]}
