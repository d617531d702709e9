"""The team's feedback on answers: thumbs up or down on one assistant turn, optionally with a corrected reply.

A rating belongs to the turn's answer (the message row), so deleting or clearing the session takes it along. Every
read and write names the owner in its SQL, like `bot.memory`: another owner's session is 'not found'. Rating a
turn again replaces the earlier rating in one statement (an upsert), so a reader never sees two or none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from bot.memory import SessionNotFound, _check_owner

Rating = Literal["up", "down"]
RATINGS: tuple[str, ...] = get_args(Rating)
# A corrected reply is an answer to learn from: as long as a training row may be (training.datasets' max_chars).
MAX_CORRECTION_CHARS = 20000


class TurnNotFound(LookupError):
    """The session is the caller's but has no answered turn with this number."""


@dataclass(frozen=True)
class ContextMessage:
    """One message said before the rated turn, as it was said (corrections are not applied to the past)."""

    turn: int
    role: str
    content: str


@dataclass
class Feedback:
    """One rating with the turn it rates: what the API lists, the CLI prints and the dataset builder reads."""

    session_id: str
    turn: int
    owner: str
    rating: Rating
    correction: str | None
    created_at: datetime
    user_message: str = ""
    answer: str = ""
    route: str | None = None
    action: str | None = None
    adapter: str | None = None
    context: list[ContextMessage] = field(default_factory=list)  # earlier turns of the session, oldest first

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of the API and `ragtune feedback list --json` (context left out: it is read for training)."""
        return {
            "session_id": self.session_id,
            "turn": self.turn,
            "rating": self.rating,
            "correction": self.correction,
            "created_at": self.created_at.isoformat(),
            "user_message": self.user_message,
            "answer": self.answer,
            "route": self.route,
            "action": self.action,
            "adapter": self.adapter,
        }


def check_rating(rating: str) -> Rating:
    if rating not in RATINGS:
        raise ValueError(f"rating: must be one of {', '.join(RATINGS)}, not {rating!r}")
    return rating  # type: ignore[return-value]


def clean_correction(correction: str | None) -> str | None:
    """None for no correction (or only blanks); the text with its outer blanks trimmed otherwise; too long fails."""
    if correction is None or not correction.strip():
        return None
    if len(correction) > MAX_CORRECTION_CHARS:
        raise ValueError(f"correction: at most {MAX_CORRECTION_CHARS} characters, got {len(correction)}")
    return correction.strip()


def parse_since(text: str) -> datetime:
    """A `since` bound from an ISO date (midnight) or date-time; without a zone it is UTC, so the API and the CLI
    read the same text the same way whatever the server's zone."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"since: {text!r} is not an ISO date or date-time (e.g. 2025-01-31 or 2025-01-31T14:00)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_SELECT = (
    "SELECT s.id AS session_id, a.turn, f.owner, f.rating, f.correction, f.created_at,"
    " coalesce(u.content, '') AS user_message, a.content AS answer, a.route, a.action, a.adapter"
    " FROM feedback f"
    " JOIN messages a ON a.id = f.message_id"
    " JOIN sessions s ON s.id = a.session_id"
    " LEFT JOIN messages u ON u.session_id = a.session_id AND u.turn = a.turn AND u.role = 'user'"
)


class FeedbackStore:
    """Feedback rows over a psycopg pool; each call takes its own pooled connection (thread-safe)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def rate(self, session_id: str, turn: int, owner: str, rating: str, correction: str | None = None) -> Feedback:
        """Record `owner`'s rating of the answer of `turn`, replacing their earlier one; return it as stored.

        SessionNotFound when the session is not this owner's, TurnNotFound when it has no answer numbered `turn`.
        Input is checked before anything is written, so a bad request leaves the earlier rating as it was.
        """
        _check_owner(owner)
        checked, text = check_rating(rating), clean_correction(correction)
        with self.pool.connection() as conn, conn.transaction():
            mine = conn.execute("SELECT 1 FROM sessions WHERE id = %s AND owner = %s", (session_id, owner)).fetchone()
            if mine is None:
                raise SessionNotFound(f"session {session_id!r}: not found")
            try:
                row = conn.execute(
                    "INSERT INTO feedback (message_id, owner, rating, correction)"
                    " SELECT m.id, %s, %s, %s FROM messages m JOIN sessions s ON s.id = m.session_id"
                    " WHERE s.id = %s AND s.owner = %s AND m.turn = %s AND m.role = 'assistant'"
                    " ON CONFLICT (message_id, owner) DO UPDATE"
                    " SET rating = EXCLUDED.rating, correction = EXCLUDED.correction, created_at = now()"
                    " RETURNING id",
                    (owner, checked, text, session_id, owner, turn),
                ).fetchone()
            except psycopg.errors.ForeignKeyViolation:  # the turn was deleted between the lookup and the write
                row = None
            if row is None:
                raise TurnNotFound(f"session {session_id!r} has no answered turn {turn}")
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(_SELECT + " WHERE f.id = %s", (row[0],))
                return Feedback(**cur.fetchone())

    def of_session(self, session_id: str, owner: str) -> dict[int, Feedback]:
        """`owner`'s ratings in one of their sessions, by turn (empty for a session that is not theirs): what the
        chat page reads to show the thumbs already given and to keep a correction when only the thumb changes."""
        _check_owner(owner)
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(_SELECT + " WHERE s.id = %s AND s.owner = %s AND f.owner = %s", (session_id, owner, owner))
            return {row["turn"]: Feedback(**row) for row in cur.fetchall()}

    def remove(self, session_id: str, turn: int, owner: str) -> bool:
        """Withdraw `owner`'s rating of the answer of `turn` (a thumb clicked off again); False when there was none."""
        _check_owner(owner)
        with self.pool.connection() as conn, conn.transaction():
            return bool(
                conn.execute(
                    "DELETE FROM feedback f USING messages m, sessions s"
                    " WHERE f.message_id = m.id AND s.id = m.session_id AND s.id = %s AND s.owner = %s"
                    " AND f.owner = %s AND m.turn = %s AND m.role = 'assistant'",
                    (session_id, owner, owner, turn),
                ).rowcount
            )

    def list_feedback(
        self,
        owner: str | None,
        *,
        since: datetime | None = None,
        context_turns: int = 0,
        limit: int | None = None,
    ) -> list[Feedback]:
        """Feedback newest first: `owner`'s, or everyone's when `owner` is None (the operator's CLI, training).

        `since` keeps ratings given at or after it; `context_turns` > 0 adds up to that many earlier turns of each
        session (both messages of each) as `context`.
        """
        if owner is not None:
            _check_owner(owner)
        where, params = ["TRUE"], []
        if owner is not None:
            where.append("f.owner = %s AND s.owner = %s")
            params += [owner, owner]
        if since is not None:
            where.append("f.created_at >= %s")
            params.append(since)
        sql = _SELECT + " WHERE " + " AND ".join(where) + " ORDER BY f.created_at DESC, f.id DESC"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql, params)
            items = [Feedback(**row) for row in cur.fetchall()]
            if context_turns > 0 and items:
                _add_context(cur, items, context_turns)
        return items


def _add_context(cur: Any, items: list[Feedback], turns: int) -> None:
    """Fill each item's `context` with the `turns` turns before it, read in the caller's transaction."""
    cur.execute(
        "SELECT m.session_id, m.turn, m.role, m.content FROM messages m"
        " WHERE m.session_id = ANY(%s) AND m.role IN ('user', 'assistant')"
        " ORDER BY m.session_id, m.turn, CASE m.role WHEN 'user' THEN 0 ELSE 1 END",
        (sorted({item.session_id for item in items}),),
    )
    by_session: dict[str, list[ContextMessage]] = {}
    for row in cur.fetchall():
        by_session.setdefault(row["session_id"], []).append(ContextMessage(row["turn"], row["role"], row["content"]))
    for item in items:
        first = item.turn - turns
        item.context = [m for m in by_session.get(item.session_id, []) if first <= m.turn < item.turn]
