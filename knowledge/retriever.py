"""The store as a LangChain retriever, so chains and agents can use it like any other."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from knowledge.search_modes import SearchMode

# Fields a caller may override for one call, as `retriever.invoke(query, k=1)`: LangChain passes such keywords on.
OVERRIDABLE = frozenset({"collection", "k", "mode", "filters", "min_score"})


class KnowledgeRetriever(BaseRetriever):
    """Top-k chunks from a `KnowledgeStore`; each Document's metadata carries the `SearchHit` fields."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any
    collection: str | list[str] | None = None
    k: int = 5
    mode: SearchMode = "hybrid"
    filters: dict | None = None
    min_score: float = 0.0

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **overrides: Any
    ) -> list[Document]:
        """Top-k chunks; `invoke(query, k=1)` (or collection, mode, filters, min_score) overrides one call."""
        unknown = set(overrides) - OVERRIDABLE
        if unknown:
            raise TypeError(
                f"KnowledgeRetriever: unknown search arguments {sorted(unknown)} (use {sorted(OVERRIDABLE)})"
            )
        params = {name: overrides.get(name, getattr(self, name)) for name in OVERRIDABLE}
        hits = self.store.search(
            query, collection=params["collection"], k=params["k"], mode=params["mode"], filters=params["filters"]
        )
        documents = []
        for hit in hits:
            if hit.score < params["min_score"]:
                continue
            metadata = asdict(hit)
            text = metadata.pop("text")
            documents.append(Document(page_content=text, metadata=metadata, id=str(hit.chunk_id)))
        return documents
