"""Turn a follow-up ("and on Windows?") into a query that retrieval can answer on its own.

Deterministic on purpose. Asking the default 135M model to rewrite the question costs a second or more
per turn on a CPU and often changes its meaning; a rule is instant and predictable: when the follow-up is
short or leans on the previous turn (it, that, this, those...), prepend the previous user question. The
hybrid retriever then matches on both, and a self-contained question passes through unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_ANAPHORA = re.compile(
    r"\b(it|its|that|this|these|those|they|them|their|there|he|she|one|ones|same|also|more|else|above|previous|"
    r"what about|how about|and)\b",
    re.IGNORECASE,
)
# Not the router's SHORT_FOLLOW_UP_WORDS (router/memory.py: the longest message that may still be a follow-up):
# this is the length up to which a message is too short to be a retrieval query on its own.
CONDENSE_UP_TO_WORDS = 6


def needs_context(message: str) -> bool:
    words = message.split()
    return len(words) <= CONDENSE_UP_TO_WORDS or bool(_ANAPHORA.search(" ".join(words[:4])))


def condense_query(message: str, history: Sequence[Any]) -> str:
    """The standalone retrieval query for `message`, given history items with `.role`/`.content` or dict keys."""
    message = message.strip()
    if not needs_context(message):
        return message
    for item in reversed(history):
        role = item["role"] if isinstance(item, dict) else item.role
        content = item["content"] if isinstance(item, dict) else item.content
        if role == "user" and content.strip():
            return f"{content.strip()} {message}"
    return message
