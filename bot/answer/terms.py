"""Content words of a question or sentence: lower case, no stop words, a light suffix fold.

Term overlap complements the embedder when evidence is scored: a sentence that names the question's rare words
("amoxicillin", "notice", "refund") is likely the one that answers it even when MiniLM ranks a paraphrase of the
topic higher. The fold is deliberately crude (plural and -ing/-ed endings): it only has to make "refunds" meet
"refund", not be a stemmer.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9][a-z0-9'\-]*")

_STOP_WORD_LIST = """
    a about above after again against all also am an and any are aren't as at be because been before being below
    between both but by can can't cannot could couldn't d did didn't do does doesn't doing don't down during
    each either else few for from further get give got had hadn't has hasn't have haven't having he her here
    hers herself him himself his how however i if in into is isn't it it's its itself just know let's ll m
    many may me might more most much must my myself need neither never no nobody none nor not nothing of off
    on once one ones only or other ought our ours ourselves out over own per please re s same shall she should
    shouldn't so some such t tell than that that's the their theirs them themselves then there there's these
    they this those through thus to too under until up upon us use used using ve very want was wasn't we were
    weren't what what's when where which while who whom whose why will with within without won't would
    wouldn't you your yours yourself yourselves
"""
STOP_WORDS = frozenset(_STOP_WORD_LIST.split())


def fold(word: str) -> str:
    """'refunds' → 'refund', 'charging' → 'charg', 'accepted' → 'accept': enough for overlap, not a stemmer."""
    for suffix in ("ies", "ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def content_words(text: str) -> list[str]:
    """Folded words of `text` that carry meaning, in order (duplicates kept)."""
    return [fold(w.strip("'-")) for w in _WORD.findall(text.lower()) if w not in STOP_WORDS and len(w.strip("'-")) > 1]
