"""A caller's conversations: list them, read one with its messages, delete one (owner-checked: another
caller's session is 'not found', never 'forbidden')."""

from __future__ import annotations

from fastapi import APIRouter

from bot.memory import SessionNotFound
from bot.server.api.common import ApiError, OwnerDep, ServicesDep, check_session_id

router = APIRouter()


@router.get("/v1/sessions")
def list_sessions(services: ServicesDep, owner: OwnerDep) -> dict:
    sessions = services.memory.list_sessions(owner)
    return {
        "data": [
            {"id": s.id, "title": s.title, "turns": s.turns, "updated_at": s.updated_at.isoformat()} for s in sessions
        ]
    }


@router.get("/v1/sessions/{session_id}")
def get_session(session_id: str, services: ServicesDep, owner: OwnerDep) -> dict:
    check_session_id(session_id, None)
    try:
        info = services.memory.get_session(session_id, owner)
        messages = services.memory.messages(session_id, owner)
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
def delete_session(session_id: str, services: ServicesDep, owner: OwnerDep) -> dict:
    check_session_id(session_id, None)
    try:
        services.memory.delete_session(session_id, owner)
    except SessionNotFound:
        raise ApiError(404, f"session {session_id!r}: not found", "session_not_found") from None
    return {"id": session_id, "deleted": True}
