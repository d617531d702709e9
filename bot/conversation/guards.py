"""Stop an answer that loops: a sentence said twice, or a run of words repeating back to back.

The packaged 135M model can fall into "The answer is: The answer is: …" until the token cap (minutes on a CPU).
Decoding is stopped as soon as the loop shows, and the repeated part is cut from the stored answer. The check is
on the text, so it works the same for every generator (local, llama.cpp, a remote server).
"""

from __future__ import annotations

import re

from bot.answer.sentences import split_sentences

_WORD = re.compile(r"\w+")
# A unit of this many words or more repeated back to back once is a loop ("the answer is: the answer is:");
# shorter units ("very very", "no, no") must repeat SHORT_UNIT_REPEATS times in a row.
LONG_UNIT_WORDS = 3
SHORT_UNIT_REPEATS = 4
MAX_UNIT_WORDS = 16


def _normalise(sentence: str) -> str:
    return " ".join(_WORD.findall(sentence.lower()))


class RepetitionGuard:
    """Feed it the answer's pieces; `feed` returns what may be shown, `stopped` says the answer looped.

    `text` is the answer without its repeated tail (what is stored); a piece that completes a loop is not shown.
    """

    def __init__(self) -> None:
        self.text = ""
        self.stopped = False
        self._sentences_seen = 0

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        candidate = self.text + piece
        cut = self._loop_start(candidate)
        if cut is not None:
            self.stopped = True
            self.text = candidate[:cut].rstrip()
            return ""
        self.text = candidate
        return piece

    def _loop_start(self, text: str) -> int | None:
        """Where the repeated part of `text` starts, or None when it does not loop."""
        return self._repeated_sentence(text) or self._repeated_run(text)

    @staticmethod
    def _repeated_sentence(text: str) -> int | None:
        sentences = split_sentences(text)
        complete = sentences[:-1] if sentences and not text.rstrip().endswith((".", "!", "?")) else sentences
        seen: set[str] = set()
        for sentence in complete:
            key = _normalise(sentence.text)
            if len(key.split()) >= 2 and key in seen:
                return sentence.start
            seen.add(key)
        return None

    @staticmethod
    def _repeated_run(text: str) -> int | None:
        words = list(_WORD.finditer(text.lower()))
        tokens = [w.group(0) for w in words]
        n = len(tokens)
        for size in range(1, min(MAX_UNIT_WORDS, n // 2) + 1):
            repeats = 2 if size >= LONG_UNIT_WORDS else SHORT_UNIT_REPEATS
            if n < size * repeats:
                continue
            unit = tokens[n - size :]
            if all(tokens[n - size * (r + 1) : n - size * r] == unit for r in range(1, repeats)):
                return words[n - size * (repeats - 1)].start()
        return None
