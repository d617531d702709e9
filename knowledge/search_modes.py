"""The retrieval modes, in one place: the store, retriever, settings, CLI and API take their list from here."""

from __future__ import annotations

from typing import Literal, get_args

SearchMode = Literal["dense", "keyword", "hybrid"]
# The same names as a tuple, for click.Choice, loops and error messages; derived so the two cannot drift apart.
SEARCH_MODES: tuple[str, ...] = get_args(SearchMode)
