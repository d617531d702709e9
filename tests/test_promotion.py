"""Route promotions: the history table on the real database, the cached provider, the pipeline's route step,
`/healthz` and `/v1/models`, and the CLI's refusals (no model is loaded here)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from bot.cli import cli as cli_main
from bot.conversation import Conversation, TurnOptions
from bot.conversation.services import Services
from bot.memory import MemoryStore
from bot.promotion import NothingToRollBack, PromotedAdapters, Promotion, PromotionStore
from bot.server.app import create_app
from router.routes import RouteSpec
from tests.fakes import Decision, FakeGenerator, FakeStore

ROUTE = "skill-promo-test"  # a route name of this file only: other tests share the database


@pytest.fixture
def store(db) -> PromotionStore:
    with db.connection() as conn:
        conn.execute("DELETE FROM route_adapters WHERE route LIKE %s", (f"{ROUTE}%",))
    return PromotionStore(db.pool)


def test_promote_then_rollback_walks_the_history_back(store) -> None:
    assert ROUTE not in store.serving()
    store.promote(ROUTE, "first", "ana")
    store.promote(ROUTE, "second", "bo")
    store.promote(f"{ROUTE}-other", "elsewhere", "ana")
    assert store.serving()[ROUTE].adapter == "second"
    retired, now = store.rollback(ROUTE, "cy")
    assert (retired.adapter, retired.rolled_back_by, now.adapter) == ("second", "cy", "first")
    assert store.serving()[ROUTE].adapter == "first" and store.serving()[f"{ROUTE}-other"].adapter == "elsewhere"
    retired, now = store.rollback(ROUTE, "cy")
    assert retired.adapter == "first" and now is None and ROUTE not in store.serving()
    with pytest.raises(NothingToRollBack):
        store.rollback(ROUTE, "cy")
    history = store.history(ROUTE)
    assert [(p.adapter, p.promoted_by, p.rolled_back_at is not None) for p in history] == [
        ("second", "bo", True),
        ("first", "ana", True),
    ]


def test_base_model_can_be_promoted(store) -> None:
    store.promote(ROUTE, "team", "ana")
    promotion = store.promote(ROUTE, None, "ana")
    assert promotion.label == "base" and store.serving()[ROUTE].adapter is None


def test_concurrent_rollbacks_retire_one_promotion_each(store) -> None:
    """The route lock makes two rollbacks at once retire two different rows, never the same one twice."""
    for name in ("a", "b", "c"):
        store.promote(ROUTE, name, "ana")
    retired: list[str] = []
    threads = [threading.Thread(target=lambda: retired.append(store.rollback(ROUTE, "x")[0].adapter)) for _ in "12"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(retired) == ["b", "c"] and store.serving()[ROUTE].adapter == "a"


def _promotion(route: str, adapter: str | None) -> Promotion:
    return Promotion(1, route, adapter, datetime.now(UTC), "ana")


@dataclass
class Reads:
    """A fake `serving()` whose answer the test changes, counting how often it is read."""

    value: dict = field(default_factory=dict)
    count: int = 0
    fail: bool = False

    def __call__(self) -> dict:
        self.count += 1
        if self.fail:
            raise ConnectionError("database down")
        return dict(self.value)


def test_provider_reads_at_most_once_per_ttl_and_survives_a_failed_read() -> None:
    now = [0.0]
    reads = Reads({"skill": _promotion("skill", "team")})
    provider = PromotedAdapters(reads, ttl_s=2.0, clock=lambda: now[0])
    assert provider.resolve("skill", None, ["team"]).adapter == "team"
    reads.value = {}
    now[0] = 1.0
    assert provider.resolve("skill", None, ["team"]).adapter == "team" and reads.count == 1  # cached
    now[0] = 2.5
    assert provider.resolve("skill", "configured", ["team"]).source == "configured" and reads.count == 2
    reads.value, reads.fail = {"skill": _promotion("skill", "team")}, True
    now[0] = 5.0
    assert provider.resolve("skill", None, ["team"]).adapter is None  # the last good read (no promotion) stands


def test_promoted_adapter_that_is_not_loaded_falls_back_with_a_note() -> None:
    provider = PromotedAdapters(lambda: {"skill": _promotion("skill", "ghost")})
    serving = provider.resolve("skill", "concise", ["concise"])
    assert serving.adapter == "concise" and serving.source == "configured" and "ghost" in serving.note
    assert provider.resolve("skill", "concise", []).adapter == "concise"  # base: promoted None is always there
    base = PromotedAdapters(lambda: {"skill": _promotion("skill", None)}).resolve("skill", "concise", ["concise"])
    assert base.adapter is None and base.source == "promoted"


class RoutesRouter:
    """Sends everything to the skill route (configured adapter `concise`) and lists the routes."""

    routes = [
        RouteSpec("knowledge", "documents", "knowledge"),
        RouteSpec("skill", "writing", "skill", adapter="concise"),
    ]

    def decide(self, message, history=(), *, retrieval_strength=None, embedding=None):
        return Decision("skill", "skill", "concise")


class TwoAdapters(FakeGenerator):
    def adapters(self):
        return ["concise", "team"]


def _conversation(db, promoted: dict) -> tuple[Conversation, TwoAdapters]:
    generator = TwoAdapters()
    provider = PromotedAdapters(lambda: dict(promoted), ttl_s=0.0)
    return Conversation(MemoryStore(db.pool), generator, RoutesRouter(), promotions=provider), generator


def test_route_step_serves_the_promoted_adapter_per_turn(db) -> None:
    promoted: dict = {}
    conversation, generator = _conversation(db, promoted)
    memory = conversation.memory
    sid = memory.create_session("promo-user")
    assert conversation.ask(sid, "promo-user", "write a note").adapter == "concise"
    promoted["skill"] = _promotion("skill", "team")
    done = conversation.ask(sid, "promo-user", "write another")
    assert done.adapter == "team" and generator.calls[-1]["adapter"] == "team"
    assert [m.adapter for m in memory.messages(sid, "promo-user") if m.role == "assistant"] == ["concise", "team"]
    forced = conversation.ask(sid, "promo-user", "again", TurnOptions(adapter="concise"))
    assert forced.adapter == "concise"  # an adapter the caller names wins over the promotion
    assert conversation.ask(sid, "promo-user", "by name", TurnOptions(route="skill")).adapter == "team"
    promoted["skill"] = _promotion("skill", "ghost")
    fallback = conversation.ask(sid, "promo-user", "and now")
    assert fallback.adapter == "concise" and "ghost" in fallback.reason
    serving = conversation.route_adapters()
    assert serving["skill"].adapter == "concise" and serving["knowledge"].adapter is None


def test_healthz_and_models_show_the_serving_adapter(db, settings) -> None:
    conversation, _ = _conversation(db, {"skill": _promotion("skill", "team")})
    services = Services(settings, db, conversation.memory, conversation, store=FakeStore())
    client = TestClient(create_app(services))
    health = client.get("/healthz").json()
    assert health["routes"]["skill"] == {"adapter": "team", "source": "promoted"}
    assert health["routes"]["knowledge"] == {"adapter": None, "source": "configured"}
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["skill"]["adapter"] == "team" and models["skill"]["adapter_source"] == "promoted"
    assert "adapter" not in models["team"]  # an adapter entry is the adapter itself
    assert client.get("/v1/models/skill").json()["adapter"] == "team"


def test_cli_refuses_unknown_adapter_and_route_then_promotes_and_rolls_back(store, settings, database_url) -> None:
    env = {"RAGTUNE_HOME": str(settings.home), "RAGTUNE_DATABASE_URL": database_url}
    runner = CliRunner()
    unknown = runner.invoke(cli_main, ["adapters", "promote", "no-such-adapter", "--route", "skill"], env=env)
    assert unknown.exit_code == 2 and "no adapter named 'no-such-adapter'" in unknown.output
    bad_route = runner.invoke(cli_main, ["adapters", "promote", "base", "--route", "nowhere"], env=env)
    assert bad_route.exit_code == 2 and "route 'nowhere': unknown" in bad_route.output
    with store.pool.connection() as conn:
        conn.execute("DELETE FROM route_adapters WHERE route = 'skill'")
    promoted = runner.invoke(cli_main, ["adapters", "promote", "base", "--route", "skill", "--by", "ana"], env=env)
    assert promoted.exit_code == 0 and "served by base" in promoted.output, promoted.output
    assert store.serving()["skill"].adapter is None and store.serving()["skill"].promoted_by == "ana"
    back = runner.invoke(cli_main, ["adapters", "rollback", "--route", "skill"], env=env)
    assert back.exit_code == 0 and "configured adapter" in back.output and "skill" not in store.serving()
    again = runner.invoke(cli_main, ["adapters", "rollback", "--route", "skill"], env=env)
    assert again.exit_code == 2 and "no promoted adapter" in again.output
