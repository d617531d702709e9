"""What the pipeline needs of its collaborators: a memory, a router, a knowledge store (the generator's contract
is `bot.llm.types.Generator`). The real ones are `bot.memory.MemoryStore`, `router.Router` and
`knowledge.KnowledgeStore`; unit tests pass small fakes that fulfil the same protocols.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Memory(Protocol):
    def context(self, session_id: str, owner: str) -> Any: ...  # .summary, .messages

    def save_turn(self, session_id: str, owner: str, user_text: str, answer: str, **details: Any) -> int: ...


class Router(Protocol):
    routes: list[Any]  # RouteSpec: name, action, adapter, collection, retrieve

    def decide(
        self,
        message: str,
        history: Sequence[dict] = (),
        *,
        retrieval_strength: float | None = None,
        embedding: Any = None,
    ) -> Any: ...


class Store(Protocol):
    def search(
        self,
        query: str,
        *,
        collection: Any = None,
        k: int = 5,
        mode: str = "hybrid",
        filters: dict | None = None,
        embedding: Any = None,
    ) -> list[Any]: ...
