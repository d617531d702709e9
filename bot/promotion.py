"""Which adapter serves each route: promotions recorded in PostgreSQL, read by the running pipeline per turn.

`ragtune adapters promote NAME --route R` appends a row; `rollback` marks the newest live row of the route rolled
back, so the promotion before it serves again (or, with none left, the adapter the routes file names). Rows are
never deleted, so the table is also the history of what answered a route and when. Every change runs in one
transaction that first locks the route (an advisory lock), so two operators promoting at once cannot interleave.

The pipeline reads promotions through `PromotedAdapters`: one query for all routes, cached for a couple of seconds,
so a promotion made by another process (the CLI) is served within `ttl_s` without a restart, at the cost of one
indexed query every few seconds rather than one per turn.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

BASE = "base"  # the name that promotes the base model (no adapter) onto a route
DEFAULT_TTL_S = 2.0  # the same order as adapter hot-loading (bot/llm/adapter_watch.py)
READ_TIMEOUT_S = 2.0  # a database that is down costs a turn at most this, once per ttl
_LOCK_NAMESPACE = 0x72617074  # "rapt": advisory locks for route promotions, one per route (hashed)


@dataclass(frozen=True)
class Promotion:
    """One row of a route's history: `adapter` None is the base model."""

    id: int
    route: str
    adapter: str | None
    promoted_at: datetime
    promoted_by: str
    rolled_back_at: datetime | None = None
    rolled_back_by: str | None = None

    @property
    def label(self) -> str:
        return self.adapter or BASE

    def as_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "adapter": self.adapter,
            "promoted_at": self.promoted_at.isoformat(),
            "promoted_by": self.promoted_by,
            "rolled_back_at": self.rolled_back_at.isoformat() if self.rolled_back_at else None,
            "rolled_back_by": self.rolled_back_by,
        }


class NothingToRollBack(LookupError):
    """The route has no live promotion: it is already served by its configured adapter."""


_COLUMNS = "id, route, adapter, promoted_at, promoted_by, rolled_back_at, rolled_back_by"


class PromotionStore:
    """Route promotions over a psycopg pool; each call takes its own pooled connection (thread-safe)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def serving(self, timeout_s: float | None = None) -> dict[str, Promotion]:
        """Route → its live promotion, for every route that has one (one query: what the pipeline reads)."""
        with self.pool.connection(timeout=timeout_s) as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                f"SELECT DISTINCT ON (route) {_COLUMNS} FROM route_adapters"
                " WHERE rolled_back_at IS NULL ORDER BY route, id DESC"
            )
            return {row["route"]: Promotion(**row) for row in cur.fetchall()}

    def history(self, route: str | None = None, limit: int = 50) -> list[Promotion]:
        """Promotions newest first (rolled-back ones included), of one route or all."""
        where, params = ("WHERE route = %s", [route]) if route else ("", [])
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM route_adapters {where} ORDER BY id DESC LIMIT %s", [*params, limit])
            return [Promotion(**row) for row in cur.fetchall()]

    def promote(self, route: str, adapter: str | None, by: str) -> Promotion:
        """Make `adapter` (None: the base model) serve `route` from now on; the earlier promotion stays in the history
        and serves again after a rollback."""
        with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            _lock(cur, route)
            cur.execute(
                f"INSERT INTO route_adapters (route, adapter, promoted_by) VALUES (%s, %s, %s) RETURNING {_COLUMNS}",
                (route, adapter, by),
            )
            return Promotion(**cur.fetchone())

    def rollback(self, route: str, by: str) -> tuple[Promotion, Promotion | None]:
        """Retire the route's live promotion; return it and the one that serves now (None: the configured adapter).
        NothingToRollBack when the route has no live promotion."""
        with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            _lock(cur, route)
            cur.execute(
                f"UPDATE route_adapters SET rolled_back_at = now(), rolled_back_by = %s WHERE id = ("
                " SELECT id FROM route_adapters WHERE route = %s AND rolled_back_at IS NULL ORDER BY id DESC LIMIT 1"
                f") RETURNING {_COLUMNS}",
                (by, route),
            )
            retired = cur.fetchone()
            if retired is None:
                raise NothingToRollBack(f"route {route!r} has no promoted adapter to roll back")
            cur.execute(
                f"SELECT {_COLUMNS} FROM route_adapters WHERE route = %s AND rolled_back_at IS NULL"
                " ORDER BY id DESC LIMIT 1",
                (route,),
            )
            now = cur.fetchone()
            return Promotion(**retired), (Promotion(**now) if now else None)


def _lock(cur: Any, route: str) -> None:
    """Serialise changes to one route until the transaction ends."""
    cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_NAMESPACE, route))


@dataclass(frozen=True)
class Serving:
    """The adapter that answers a route now, and where that came from ('promoted' or 'configured')."""

    adapter: str | None
    source: str
    note: str = ""  # why a promotion was not applied, for the route reason and the log


class PromotedAdapters:
    """The pipeline's view of promotions: a cached `serving()` map, re-read at most every `ttl_s` seconds.

    A failed read (database down) keeps the last map it had: a turn is never refused for want of a promotion.
    """

    def __init__(
        self,
        read: Callable[[], dict[str, Promotion]],
        *,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: dict[str, Promotion] = {}
        self._read_at: float | None = None

    @classmethod
    def from_pool(cls, pool: ConnectionPool, *, ttl_s: float = DEFAULT_TTL_S) -> PromotedAdapters:
        store = PromotionStore(pool)
        return cls(lambda: store.serving(timeout_s=READ_TIMEOUT_S), ttl_s=ttl_s)

    def current(self) -> dict[str, Promotion]:
        """Route → live promotion, at most `ttl_s` old."""
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self.ttl_s:
                try:
                    self._cached = self._read()
                except Exception as exc:  # the database being down must not stop a turn
                    log.warning("could not read route promotions, keeping the last known: %s", exc)
                self._read_at = now
            return dict(self._cached)

    def resolve(self, route: str, configured: str | None, loaded: Collection[str]) -> Serving:
        """The adapter for `route`: its promotion when the generator has it loaded (or it is the base model), else
        the route's configured adapter, with a note saying why (the caller logs it: this is also read per request by
        `/v1/models`, which must not warn each time)."""
        promotion = self.current().get(route)
        if promotion is None:
            return Serving(configured, "configured")
        if promotion.adapter is None or promotion.adapter in loaded:
            return Serving(promotion.adapter, "promoted")
        return Serving(
            configured, "configured", f"promoted adapter {promotion.adapter} not loaded: configured one used"
        )
