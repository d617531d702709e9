"""Reading the conversation: is this message a follow-up to the last turn, or a request to rework the last answer?

These are cues of English grammar, not of any data set: a short message that starts with a continuation
("and ...", "what about ...") or leans on a pronoun with nothing else to go on continues the previous
topic; an editing verb aimed at "it/that/this/your answer" (or a bare "shorter, please") reworks the
previous answer, which is skill work whatever route produced that answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"[a-z0-9']+")

_CONTINUATION = re.compile(
    r"^\s*(and|or|also|plus|but|so|then|what about|how about|what if|same (for|with)|and what about|"
    r"and how about|is that|does that|does it|is it|what else|anything else|why not|how come|"
    r"in that case|for (the|a|an)\b|with (the|a|an)\b)\b",
    re.IGNORECASE,
)
_REFERENCE = re.compile(
    r"\b(it|that|this|these|those|them|they|the above|above|your (last )?(answer|reply|response|text)|"
    r"the (answer|reply|response|text|email|e-mail|letter|message|draft|summary|list))\b",
    re.IGNORECASE,
)
_EDIT_VERB = re.compile(
    r"\b(make|rewrite|re-write|rephrase|reword|shorten|lengthen|expand|summari[sz]e|condense|simplify|translate|"
    r"paraphrase|proofread|polish|edit|fix|format|reformat|turn|convert|put|tone down|soften|trim|cut|redo)\b",
    re.IGNORECASE,
)
_BARE_EDIT = re.compile(
    r"^\s*(please\s+)?(shorter|longer|simpler|more (formal|casual|concise|detailed|polite|friendly)|"
    r"less (formal|technical|wordy)|in (plain )?(english|french|spanish|german|italian|portuguese|dutch|"
    r"chinese|japanese|bullet points|bullets|a table|one sentence|one paragraph)|as (a )?(list|table|bullets?)|"
    r"tl;?dr|again)\b[\s,.!?]*(please)?[\s.!?]*$",
    re.IGNORECASE,
)
_INTERROGATIVE_CONTENT = re.compile(r"\b(what|which|who|whom|whose|when|where|why|how)\b", re.IGNORECASE)

SHORT_FOLLOW_UP_WORDS = 8


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def is_transform_request(message: str) -> bool:
    """An instruction to rework the previous answer ("make it shorter", "translate that to French")."""
    if _BARE_EDIT.match(message):
        return True
    tokens = words(message)
    if not tokens or len(tokens) > 14:
        return False
    verb = _EDIT_VERB.search(message)
    if not verb:
        return False
    # the edit must be aimed at something already said, and not be a question about the world
    before = message[: verb.start()]
    if _INTERROGATIVE_CONTENT.search(before) and not re.search(r"\b(can|could|would|will)\s+you\b", before, re.I):
        return False
    return bool(_REFERENCE.search(message[verb.start() :]))


def is_follow_up(message: str) -> bool:
    """A short message that only makes sense with the previous turn ("and for annual plans?")."""
    tokens = words(message)
    if not tokens or len(tokens) > SHORT_FOLLOW_UP_WORDS:
        return False
    if _CONTINUATION.match(message):
        return True
    return len(tokens) <= 4 and bool(_REFERENCE.search(message)) and message.rstrip().endswith("?")


def last_route(history: Sequence[dict]) -> str | None:
    """The route of the most recent turn that recorded one (the assistant's answer usually carries it)."""
    for turn in reversed(history):
        route = turn.get("route") if isinstance(turn, dict) else None
        if route:
            return str(route)
    return None


def last_user_message(history: Sequence[dict]) -> str | None:
    for turn in reversed(history):
        if isinstance(turn, dict) and turn.get("role") == "user" and turn.get("content"):
            return str(turn["content"])
    return None


def has_answer(history: Sequence[dict]) -> bool:
    return any(isinstance(turn, dict) and turn.get("role") == "assistant" for turn in history)
