"""Build the real parts once per process: database, embedder, knowledge store, generator, router, pipeline.

The UI, the API, `ragtune chat` and the tests all go through `build_services`, so they run the same
pipeline on the same configuration.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from bot.answer import thresholds
from bot.config import Settings
from bot.conversation.knowledge_answer import KnowledgeAnswerer, resolve_mode
from bot.conversation.pipeline import Conversation
from bot.db.connection import Database, open_database
from bot.llm.weights import DEFAULT_GENERATOR
from bot.memory import MemoryStore
from bot.promotion import PromotedAdapters

log = logging.getLogger(__name__)

DEMO_COLLECTION = "ragtune-docs"


@dataclass
class Services:
    settings: Settings
    db: Database
    memory: MemoryStore
    conversation: Conversation
    store: Any = None
    generator: Any = None
    router: Any = None
    embedder: Any = None
    load_seconds: dict[str, float] = field(default_factory=dict)
    adapter_watcher: Any = None

    def close(self) -> None:
        if self.adapter_watcher is not None:
            self.adapter_watcher.stop()
        self.db.close()


def min_score(settings: Settings) -> float:
    return thresholds.min_relevance(settings.answer_strictness, settings.min_relevance)


def knowledge_answerer(settings: Settings, embedder: Any) -> KnowledgeAnswerer:
    """Evidence-first knowledge answers with the shared embedder; the mode follows the generator (see resolve_mode)."""
    from bot.answer.evidence import EvidenceFinder
    from bot.answer.support import SupportChecker

    packaged = settings.generator_model == DEFAULT_GENERATOR and not settings.openai_base_url
    mode = resolve_mode(settings.answer_mode, packaged_small_model=packaged)
    return KnowledgeAnswerer(
        EvidenceFinder(embedder),
        mode=mode,
        min_evidence=thresholds.min_evidence(settings.answer_strictness, settings.min_evidence),
        checker=SupportChecker(embedder),
    )


def build_services(settings: Settings, *, db: Database | None = None) -> Services:
    """Open the database and load the models (embedder, generator with its adapters, router)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    db = db or open_database(settings)
    timings["database_s"] = time.perf_counter() - started

    from bot.embedder import configured_embedder
    from knowledge import KnowledgeStore

    started = time.perf_counter()
    embedder = configured_embedder(settings)
    store = KnowledgeStore(db.pool, embedder, ef_search=settings.hnsw_ef_search)
    timings["embedder_s"] = time.perf_counter() - started

    from bot.llm import create_generator

    started = time.perf_counter()
    generator = create_generator(settings)
    timings["generator_s"] = time.perf_counter() - started

    started = time.perf_counter()
    router = _build_router(settings, embedder, generator)
    timings["router_s"] = time.perf_counter() - started

    memory = MemoryStore(db.pool)
    conversation = Conversation(
        memory,
        generator,
        router,
        store,
        default_collection=None,
        min_score=min_score(settings),
        search_mode=settings.search_mode,
        max_new_tokens=min(settings.max_new_tokens, settings.chat_max_new_tokens),
        temperature=settings.temperature,
        max_message_chars=settings.max_message_chars,
        top_k=settings.top_k,
        answerer=knowledge_answerer(settings, embedder),
        promotions=PromotedAdapters.from_pool(db.pool),
    )
    watcher = None
    if not settings.openai_base_url:  # a remote server loads adapters from its own disk
        from bot.llm.adapter_watch import AdapterWatcher

        watcher = AdapterWatcher(generator, settings.adapters_dir).start()
    log.info("services ready: %s", ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return Services(settings, db, memory, conversation, store, generator, router, embedder, timings, watcher)


def _build_router(settings: Settings, embedder: Any, generator: Any) -> Any:
    """The configured routes plus the classifier `ragtune router train` saved, if any."""
    from bot.llm import GeneratorUnavailable
    from router import build_router

    try:
        adapters = list(generator.adapters())
    except GeneratorUnavailable as exc:  # a remote server that is down must not stop the app from starting
        log.warning("could not list adapters: %s", exc)
        adapters = []
    return build_router(
        embedder,
        routes_file=settings.routes_file,
        state_dir=settings.state_dir,
        known_adapters=adapters,
        default_route=settings.router_default_route,
        min_confidence=settings.router_min_confidence,
    )


def load_demo_docs(services: Services, docs_dir: os.PathLike | str, collection: str = DEMO_COLLECTION) -> Any:
    """Ingest ragtune's own documentation when the store holds no documents at all; None if not needed."""
    if services.store.list_documents():
        return None
    return services.store.ingest([str(docs_dir)], collection=collection, glob="**/*.md")
