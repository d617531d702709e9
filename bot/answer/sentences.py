"""Sentences with their character spans, and document markdown reduced to plain text.

Evidence is picked, quoted and verified sentence by sentence, and a quote must map back to its place in the
chunk (hence its page), so every sentence keeps `start`/`end` offsets into the text it came from. A regular
expression is enough here (and fast): documents are prose, headings and bullet lists; the splitter treats line
breaks between blocks as boundaries and does not cut after common abbreviations or inside decimals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Abbreviations after which a full stop never ends a sentence (lower case, without the final dot) ...
_ABBREVIATIONS = frozenset(
    (
        "e.g",
        "i.e",
        "vs",
        "cf",
        "al",
        "fig",
        "figs",
        "eq",
        "no",
        "nos",
        "approx",
        "ca",
        "dr",
        "mr",
        "mrs",
        "ms",
        "prof",
        "st",
        "jr",
        "sr",
    )
)
# ... and ones that often close a sentence too ("4.5 mg. Then"): a capital after them starts a new one.
_WEAK_ABBREVIATIONS = frozenset(
    (
        "etc",
        "inc",
        "ltd",
        "co",
        "corp",
        "dept",
        "est",
        "min",
        "max",
        "mg",
        "ml",
        "kg",
        "km",
        "vol",
        "art",
        "sec",
        "ch",
        "p",
        "pp",
        "para",
        "u.s",
        "u.k",
    )
)
_BOUNDARY = re.compile(
    r"[.!?](?:[\"')\]]+)?\s+|\n\s*\n|\n(?=\s*(?:[-*+•]|\d+[.)]|#{1,6})\s)|(?<=\n)(?=#{1,6}\s)|(?m:^#{1,6}\s[^\n]*\n)"
)
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)[.]$")
MIN_SENTENCE_CHARS = 3


@dataclass(frozen=True)
class Sentence:
    text: str
    start: int  # offset of text[0] in the text it was split from
    end: int  # offset just after its last character


def _ends_sentence(text: str, index: int, match: re.Match) -> bool:
    """False when the full stop at `index` belongs to an abbreviation or an initial ("J. Smith")."""
    if text[index] != ".":
        return True
    word = _WORD_BEFORE.search(text[max(0, index - 12) : index + 1])
    if word is None:
        return True
    token = word.group(1).lower()
    if token in _ABBREVIATIONS or (len(token) == 1 and text[index - 1].isupper()):
        return False
    following = text[match.end() : match.end() + 1]
    if token in _WEAK_ABBREVIATIONS:
        return following.isupper()
    return not following.islower()  # "approx. five" / "the U.S. army": no capital, no new sentence


def split_sentences(text: str) -> list[Sentence]:
    """The sentences of `text`, in order, stripped, each with its span (headings and list items count as one)."""
    sentences: list[Sentence] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        found = match.group(0)
        if found[:1] in (".", "!", "?") and not _ends_sentence(text, match.start(), match):
            continue
        if found.startswith("#"):  # a heading line: it is a sentence of its own
            _append(sentences, text, start, match.start())
            start = match.start()
            end = match.end() - 1
        else:
            end = match.start() + (1 if found[:1] in (".", "!", "?") else 0)
        closing = re.match(r"[\"')\]]+", text[end : match.end()])
        if closing:
            end += closing.end()
        _append(sentences, text, start, end)
        start = match.end()
    _append(sentences, text, start, len(text))
    return sentences


def _append(sentences: list[Sentence], text: str, start: int, end: int) -> None:
    piece = text[start:end]
    stripped = piece.strip()
    if len(stripped) < MIN_SENTENCE_CHARS:
        return
    offset = start + (len(piece) - len(piece.lstrip()))
    sentences.append(Sentence(stripped, offset, offset + len(stripped)))


_MARKDOWN_LINE = re.compile(r"^\s{0,3}(?:#{1,6}\s+|>\s?|[-*+•]\s+|\d+[.)]\s+)", re.MULTILINE)
_MARKDOWN_INLINE = re.compile(r"(\*\*|__|`+|~~)")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}.*$", re.MULTILINE)


def strip_markdown(text: str) -> str:
    """Document text as a reader sees it rendered: no heading marks, emphasis, code ticks or link targets."""
    text = _LINK.sub(r"\1", text)
    text = _TABLE_RULE.sub("", text)
    text = _MARKDOWN_LINE.sub("", text)
    text = _MARKDOWN_INLINE.sub("", text)
    text = re.sub(r"(?<!\w)[*_](\S(?:.*?\S)?)[*_](?!\w)", r"\1", text)
    return text.replace("|", " ")
