"""Knowledge base: load documents, chunk them, embed them into pgvector, and retrieve them (hybrid search).

Names are imported lazily, so `import knowledge.embedding` (the router does) does not pull in psycopg and
LangChain.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DEFAULT_EMBEDDER": "knowledge.embedding",
    "Embedder": "knowledge.embedding",
    "EmbedderNotFound": "knowledge.embedding",
    "locate_embedder": "knowledge.embedding",
    "LoadError": "knowledge.loaders",
    "KnowledgeRetriever": "knowledge.retriever",
    "MODES": "knowledge.store",
    "CollectionInfo": "knowledge.store",
    "DocumentInfo": "knowledge.store",
    "IngestReport": "knowledge.store",
    "KnowledgeStore": "knowledge.store",
    "SearchHit": "knowledge.store",
}

__all__ = [
    "DEFAULT_EMBEDDER",
    "MODES",
    "CollectionInfo",
    "DocumentInfo",
    "Embedder",
    "EmbedderNotFound",
    "IngestReport",
    "KnowledgeRetriever",
    "KnowledgeStore",
    "LoadError",
    "SearchHit",
    "locate_embedder",
]

if TYPE_CHECKING:
    from knowledge.embedding import DEFAULT_EMBEDDER, Embedder, EmbedderNotFound, locate_embedder
    from knowledge.loaders import LoadError
    from knowledge.retriever import KnowledgeRetriever
    from knowledge.store import MODES, CollectionInfo, DocumentInfo, IngestReport, KnowledgeStore, SearchHit


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'knowledge' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
