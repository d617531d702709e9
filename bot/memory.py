"""Shared conversation memory in PostgreSQL: sessions owned by someone, turns with their route and sources.

Both the knowledge and the skill path read the same rows, so "make that shorter" sees the cited answer
before it. Every read and write names the owner in its SQL (`WHERE id = %s AND owner = %s`): another
owner's session is indistinguishable from a missing one. Session ids are `secrets.token_urlsafe(24)`
(32 characters, 192 random bits), so they cannot be guessed either. Nothing is cached in the process:
a restarted app resumes every session from the database.
"""

from __future__ import annotations

import logging
import secrets
import threading
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

log = logging.getLogger(__name__)

MAX_OWNER_CHARS = 200
SUMMARY_MAX_CHARS = 1500
MAX_PENDING_TURNS = 1000  # turns answered while the database was down, held in this process until it returns


class SessionNotFound(LookupError):
    """No such session for this owner (it may exist for someone else: we do not say)."""


@dataclass
class SessionInfo:
    id: str
    owner: str
    title: str
    summary: str
    summary_turns: int
    created_at: datetime
    updated_at: datetime
    turns: int = 0


@dataclass
class StoredMessage:
    turn: int
    role: str
    content: str
    route: str | None = None
    confidence: float | None = None
    reason: str | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    adapter: str | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    action: str | None = None  # "knowledge" or "skill" on answers (NULL on rows older than migration 0005)

    def as_chat(self) -> dict[str, Any]:
        """The {"role", "content", "route"} form the router and the generator take."""
        return {"role": self.role, "content": self.content, "route": self.route}

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "created_at"}
        data["created_at"] = self.created_at.isoformat() if self.created_at else None
        return data


@dataclass
class MemoryContext:
    """What a turn sees of the past: the running summary of old turns plus the recent ones, oldest first."""

    summary: str
    messages: list[StoredMessage]
    next_turn: int


def new_session_id() -> str:
    return secrets.token_urlsafe(24)


def _check_owner(owner: str) -> str:
    if not owner or not isinstance(owner, str) or len(owner) > MAX_OWNER_CHARS:
        raise ValueError(f"owner: must be a non-empty string of at most {MAX_OWNER_CHARS} characters")
    return owner


def _first_sentence(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    for stop in (". ", "? ", "! "):
        cut = text.find(stop)
        if 0 < cut < limit:
            return text[: cut + 1]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fold_into_summary(summary: str, old: Sequence[StoredMessage], max_chars: int = SUMMARY_MAX_CHARS) -> str:
    """Extend the running summary with turns that no longer fit the window.

    Extractive on purpose: asking the 135M default model to summarise costs seconds per turn and invents
    facts, while the first sentence of each old turn keeps what was asked and answered. When the summary
    itself grows too long its oldest lines are dropped.
    """
    lines = [line for line in summary.splitlines() if line.strip()]
    for message in old:
        who = "User" if message.role == "user" else "Assistant"
        lines.append(f"{who}: {_first_sentence(message.content)}")
    while lines and sum(len(line) + 1 for line in lines) > max_chars:
        lines.pop(0)
    return "\n".join(lines)


@dataclass(frozen=True)
class TurnDetails:
    """What a turn records beside its two texts (save_turn's keyword arguments)."""

    route: str | None = None
    confidence: float | None = None
    reason: str | None = None
    sources: list[dict[str, Any]] | None = None
    adapter: str | None = None
    timings: dict[str, Any] | None = None
    action: str | None = None


@dataclass
class PendingTurn:
    """A turn answered while the database was down: written, in order, by the first call that reaches it again."""

    session_id: str
    owner: str
    user_text: str
    answer: str
    details: TurnDetails = field(default_factory=TurnDetails)


class MemoryStore:
    """Sessions and messages over a psycopg pool. Thread-safe: each call takes its own pooled connection.

    Turns answered during a database outage wait in `pending` (this process only, at most MAX_PENDING_TURNS)
    and are written before anything else the next time a call gets a connection, so the session's order holds.
    """

    def __init__(self, pool: ConnectionPool, *, window_turns: int = 6) -> None:
        self.pool = pool
        self.window_turns = window_turns
        self.pending: deque[PendingTurn] = deque()
        self._pending_lock = threading.Lock()

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection, after writing any turns held back during an outage."""
        with self.pool.connection() as conn:
            if self.pending:
                self._flush_pending(conn)
            yield conn

    def defer_turn(self, session_id: str, owner: str, user_text: str, answer: str, **extra: Any) -> bool:
        """Hold a turn that could not be saved; False when the queue is full (the turn is then lost: say so)."""
        _check_owner(owner)
        details = TurnDetails(**extra)  # an unknown field fails here, not when the turn is finally written
        with self._pending_lock:
            if len(self.pending) >= MAX_PENDING_TURNS:
                log.error(
                    "%d turns already wait for the database: turn of session %s not kept", len(self.pending), session_id
                )
                return False
            self.pending.append(PendingTurn(session_id, owner, user_text, answer, details))
        return True

    def _flush_pending(self, conn: Any) -> None:
        from bot.db.connection import is_unavailable

        with self._pending_lock:
            while self.pending:
                turn = self.pending[0]
                try:
                    with conn.transaction():
                        self._insert_turn(conn, turn.session_id, turn.owner, turn.user_text, turn.answer, turn.details)
                    log.info("saved a turn held back during a database outage (session %s)", turn.session_id)
                except SessionNotFound:  # deleted meanwhile (or never this owner's): nothing to attach it to
                    log.warning("dropping a held-back turn: session %s no longer exists", turn.session_id)
                except Exception as exc:
                    if is_unavailable(exc):
                        raise  # still down: keep it for the next call
                    log.error("dropping a held-back turn of session %s: %s", turn.session_id, exc)
                self.pending.popleft()

    # --- sessions ----------------------------------------------------------------------------
    def create_session(self, owner: str, title: str = "") -> str:
        _check_owner(owner)
        session_id = new_session_id()
        with self._connection() as conn:
            conn.execute(
                "INSERT INTO sessions (id, owner, title) VALUES (%s, %s, %s)", (session_id, owner, title[:200])
            )
        return session_id

    def get_session(self, session_id: str, owner: str) -> SessionInfo:
        _check_owner(owner)
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT s.*, (SELECT count(*) FROM messages m WHERE m.session_id = s.id AND m.role = 'user') AS turns"
                " FROM sessions s WHERE s.id = %s AND s.owner = %s",
                (session_id, owner),
            )
            row = cur.fetchone()
        if row is None:
            raise SessionNotFound(f"session {session_id!r}: not found")
        return SessionInfo(**row)

    def list_sessions(self, owner: str, limit: int = 100) -> list[SessionInfo]:
        _check_owner(owner)
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT s.*, (SELECT count(*) FROM messages m WHERE m.session_id = s.id AND m.role = 'user') AS turns"
                " FROM sessions s WHERE s.owner = %s ORDER BY s.updated_at DESC LIMIT %s",
                (owner, limit),
            )
            return [SessionInfo(**row) for row in cur.fetchall()]

    def delete_session(self, session_id: str, owner: str) -> None:
        _check_owner(owner)
        with self._connection() as conn:
            deleted = conn.execute("DELETE FROM sessions WHERE id = %s AND owner = %s", (session_id, owner)).rowcount
        if not deleted:
            raise SessionNotFound(f"session {session_id!r}: not found")

    def clear_session(self, session_id: str, owner: str) -> None:
        _check_owner(owner)
        with self._connection() as conn, conn.transaction():
            if not conn.execute(
                "UPDATE sessions SET summary = '', summary_turns = 0, updated_at = now() WHERE id = %s AND owner = %s",
                (session_id, owner),
            ).rowcount:
                raise SessionNotFound(f"session {session_id!r}: not found")
            conn.execute("DELETE FROM messages WHERE session_id = %s", (session_id,))

    # --- messages ----------------------------------------------------------------------------
    def messages(self, session_id: str, owner: str, *, after_turn: int = 0) -> list[StoredMessage]:
        """All messages of the session (after `after_turn`), oldest first; SessionNotFound for another owner."""
        _check_owner(owner)
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT 1 FROM sessions WHERE id = %s AND owner = %s", (session_id, owner))
            if cur.fetchone() is None:
                raise SessionNotFound(f"session {session_id!r}: not found")
            cur.execute(
                "SELECT m.turn, m.role, m.content, m.route, m.confidence, m.reason, m.sources, m.adapter,"
                " m.timings, m.created_at, m.action FROM messages m JOIN sessions s ON s.id = m.session_id"
                " WHERE m.session_id = %s AND s.owner = %s AND m.turn > %s"
                " ORDER BY m.turn, CASE m.role WHEN 'system' THEN 0 WHEN 'user' THEN 1 ELSE 2 END",
                (session_id, owner, after_turn),
            )
            return [StoredMessage(**row) for row in cur.fetchall()]

    def context(self, session_id: str, owner: str) -> MemoryContext:
        """Summary + the last `window_turns` turns (read only: older turns are folded in when a turn is saved)."""
        info = self.get_session(session_id, owner)
        recent = self.messages(session_id, owner, after_turn=info.summary_turns)
        turns = sorted({m.turn for m in recent})
        next_turn = (turns[-1] if turns else info.summary_turns) + 1
        summary, keep_from = _window(info.summary, recent, turns, self.window_turns)
        return MemoryContext(summary=summary, messages=[m for m in recent if m.turn >= keep_from], next_turn=next_turn)

    def save_turn(
        self,
        session_id: str,
        owner: str,
        user_text: str,
        answer: str,
        *,
        route: str | None = None,
        confidence: float | None = None,
        reason: str | None = None,
        sources: list[dict[str, Any]] | None = None,
        adapter: str | None = None,
        timings: dict[str, Any] | None = None,
        action: str | None = None,
    ) -> int:
        """Store the user message and the answer as one turn, in one transaction; return the turn number.

        The session row is locked first, so two concurrent turns of one session get consecutive numbers.
        """
        _check_owner(owner)
        details = TurnDetails(route, confidence, reason, sources, adapter, timings, action)
        with self._connection() as conn, conn.transaction():
            return self._insert_turn(conn, session_id, owner, user_text, answer, details)

    def _insert_turn(
        self, conn: Any, session_id: str, owner: str, user_text: str, answer: str, details: TurnDetails
    ) -> int:
        """The two rows of one turn, inside the caller's transaction."""
        row = conn.execute(
            "SELECT title, summary, summary_turns FROM sessions WHERE id = %s AND owner = %s FOR UPDATE",
            (session_id, owner),
        ).fetchone()
        if row is None:
            raise SessionNotFound(f"session {session_id!r}: not found")
        turn = conn.execute(
            "SELECT coalesce(max(turn), 0) + 1 FROM messages WHERE session_id = %s", (session_id,)
        ).fetchone()[0]
        base = (session_id, turn)
        conn.execute(
            "INSERT INTO messages (session_id, turn, role, content, route, adapter)"
            " VALUES (%s, %s, 'user', %s, %s, %s)",
            (*base, user_text, details.route, details.adapter),
        )
        conn.execute(
            "INSERT INTO messages (session_id, turn, role, content, route, confidence, reason, sources,"
            " adapter, timings, action) VALUES (%s, %s, 'assistant', %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                *base,
                answer,
                details.route,
                details.confidence,
                details.reason,
                Jsonb(details.sources or []),
                details.adapter,
                Jsonb(details.timings or {}),
                details.action,
            ),
        )
        self._fold_old_turns(conn, session_id, row[1], row[2])
        title = row[0] or _first_sentence(user_text, 60)
        conn.execute("UPDATE sessions SET updated_at = now(), title = %s WHERE id = %s", (title, session_id))
        return turn

    def _fold_old_turns(self, conn: Any, session_id: str, summary: str, summary_turns: int) -> None:
        """Fold the turns that fell out of the window into the stored summary, in the caller's transaction."""
        rows = conn.execute(
            "SELECT turn, role, content FROM messages WHERE session_id = %s AND turn > %s ORDER BY turn,"
            " CASE role WHEN 'system' THEN 0 WHEN 'user' THEN 1 ELSE 2 END",
            (session_id, summary_turns),
        ).fetchall()
        recent = [StoredMessage(turn=turn, role=role, content=content) for turn, role, content in rows]
        turns = sorted({m.turn for m in recent})
        folded, keep_from = _window(summary, recent, turns, self.window_turns)
        if keep_from - 1 > summary_turns:
            conn.execute(
                "UPDATE sessions SET summary = %s, summary_turns = %s WHERE id = %s",
                (folded, keep_from - 1, session_id),
            )


def _window(summary: str, recent: list[StoredMessage], turns: list[int], window: int) -> tuple[str, int]:
    """The summary with the turns before the last `window` folded in, and the first turn kept whole."""
    if len(turns) <= window:
        return summary, turns[0] if turns else 0
    keep_from = turns[-window]
    return fold_into_summary(summary, [m for m in recent if m.turn < keep_from]), keep_from


class PostgresChatMessageHistory(BaseChatMessageHistory):
    """The session's memory as a LangChain chat history (owner-checked, database-backed, no local cache).

    Messages are written in user/assistant pairs, the way the memory stores turns: a human message waits
    until its answer arrives, then both go in one transaction.
    """

    def __init__(self, store: MemoryStore, session_id: str, owner: str) -> None:
        store.get_session(session_id, owner)  # fail early for a wrong owner or id
        self.store = store
        self.session_id = session_id
        self.owner = owner
        self._pending_user: str | None = None

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        out: list[BaseMessage] = []
        for m in self.store.messages(self.session_id, self.owner):
            kwargs = {"turn": m.turn, "route": m.route}
            if m.role == "user":
                out.append(HumanMessage(content=m.content, additional_kwargs=kwargs))
            elif m.role == "assistant":
                kwargs.update(
                    sources=m.sources, adapter=m.adapter, confidence=m.confidence, reason=m.reason, action=m.action
                )
                out.append(AIMessage(content=m.content, additional_kwargs=kwargs))
        return out

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        for message in messages:
            text = message.content if isinstance(message.content, str) else str(message.content)
            if isinstance(message, HumanMessage):
                if self._pending_user is not None:
                    self.store.save_turn(self.session_id, self.owner, self._pending_user, "")
                self._pending_user = text
            elif isinstance(message, AIMessage):
                extra = message.additional_kwargs
                self.store.save_turn(
                    self.session_id,
                    self.owner,
                    self._pending_user or "",
                    text,
                    route=extra.get("route"),
                    confidence=extra.get("confidence"),
                    reason=extra.get("reason"),
                    sources=extra.get("sources"),
                    adapter=extra.get("adapter"),
                    timings=extra.get("timings"),
                    action=extra.get("action"),
                )
                self._pending_user = None
            else:
                raise ValueError(f"message type {message.type!r}: only human and ai messages are stored")

    def clear(self) -> None:
        self._pending_user = None
        self.store.clear_session(self.session_id, self.owner)
