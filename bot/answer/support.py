"""Is an answer sentence supported by the passages it cites? Measurable checks, each with a reason a person can read.

No NLI model ships with ragtune and nothing may be downloaded, so support is the conjunction of explainable checks:
- **facts**: every number (with its unit: doses, percentages, durations, money) and every name in the sentence
  appears in the cited passages. "ninety (90) days" supports "90 days", "five" supports "5", "1,000" supports
  "1000"; a number that only appears as a citation marker [n] supports nothing.
- **similarity**: the best cosine between the sentence and any passage sentence (the product's embedder) reaches
  the threshold, calibrated on COVID-QA by `bench/bench_support.py`, or the sentence is a close quote (80% of its
  content words, at least 3, stand in one passage sentence: a quoted fragment of a long sentence has a low cosine).
- **contradiction**: the best-matching passage sentence has the same polarity (both negated or neither) and does
  not state a different number in the same place ("within 4 days" against "within 45 days").
- **a claim at all**: "Yes." / "No." / "Maybe." carry nothing to check against a passage, so they are not
  supported (an embedding proxy used to score such answers 1.0 when the evidence said the opposite).

Used by the evaluation (unsupported-claim rate) and by the knowledge path's verifier, so a sentence the user sees
and a sentence the report counts are judged the same way.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import numpy as np

from bot.answer.sentences import split_sentences, strip_markdown
from bot.answer.terms import STOP_WORDS

# Calibrated by `.venv/bin/python -m bench.bench_support` (COVID-QA, 160 seeded questions x 2 answer-like claims:
# the gold answer span, and the question restated with its answer; all-MiniLM-L6-v2, ONNX int8). Supported = the
# claim against its gold passage; unsupported = against the best-matching passage of another article (on-topic, so
# hard). The threshold maximising TPR - FPR of the whole checker on the first half (0.725; 0.675 ties, the stricter
# wins) gives on the held-out half: whole checker TPR 0.781 / FPR 0.062 (cosine alone: 0.644 / 0.131); 0.6, the
# old faithfulness default, gives 0.831 / 0.125. Changed numbers are caught 97%, inserted negations 96%.
DEFAULT_SUPPORT_THRESHOLD = 0.725
CACHE_PASSAGES = 4096  # passages whose sentence vectors are kept (a long-lived verifier must not grow forever)


@dataclass(frozen=True)
class Passage:
    key: str  # e.g. the source number "1" or a chunk id
    text: str


@dataclass(frozen=True)
class SentenceSupport:
    sentence: str  # the answer sentence, citations like [1] removed
    supported: bool
    score: float  # best cosine with a passage sentence
    passage: str | None  # key of the passage holding the best-matching sentence
    evidence: str | None  # that best-matching passage sentence
    problems: tuple[str, ...]  # human-readable reasons it is not supported


# --- text pieces ----------------------------------------------------------------------------------------------------
CITATION = re.compile(r"\[\s*\d{1,3}(?:\s*[,;–-]\s*\d{1,3})*\s*\]")
_LEADING_CITATIONS = re.compile(r"^(?:\s*\[\s*\d{1,3}(?:\s*[,;–-]\s*\d{1,3})*\s*\])+[\s.,;:]*")

_SMALL = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_NUMBER_WORD = "|".join(sorted([*_SMALL, *_TENS, *_SCALES], key=len, reverse=True))
_WORD_NUMBER = re.compile(
    rf"(?<![^\W\d_])(?:{_NUMBER_WORD})(?:(?:[\s-]+and)?[\s-]+(?:{_NUMBER_WORD}))*(?![^\W\d_])", re.IGNORECASE
)
# Digits not glued to a word ("COVID-19", "H1N1", "IL-6" are names, checked as names), with thousands separators,
# decimals and ordinal suffixes.
_DIGITS = re.compile(r"(?<![\w.])(?<![^\W\d_]-)(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(\.\d+)?(?:st|nd|rd|th)?", re.IGNORECASE)
_AFTER = re.compile(r"(?:\s*\(\s*[\d.,]+\s*\))?\)?[\s-]*(%|per\s+cent\b|[^\W\d_]+)?")
_BEFORE_WORD = re.compile(r"([^\W\d_]+)[\s(\-–]*$")
_CURRENCY = {"$": "usd", "€": "eur", "£": "gbp"}
_UNITS = {
    "%": "%",
    "percent": "%",
    "per cent": "%",
    "pct": "%",
    "mg": "mg",
    "milligram": "mg",
    "milligrams": "mg",
    "g": "g",
    "gram": "g",
    "grams": "g",
    "kg": "kg",
    "kilogram": "kg",
    "kilograms": "kg",
    "mcg": "mcg",
    "µg": "mcg",
    "ug": "mcg",
    "microgram": "mcg",
    "micrograms": "mcg",
    "ml": "ml",
    "millilitre": "ml",
    "milliliter": "ml",
    "millilitres": "ml",
    "milliliters": "ml",
    "l": "l",
    "litre": "l",
    "liter": "l",
    "litres": "l",
    "liters": "l",
    "iu": "iu",
    "units": "unit",
    "unit": "unit",
    "mmol": "mmol",
    "mm": "mm",
    "cm": "cm",
    "m": "m",
    "km": "km",
    "mmhg": "mmhg",
    "second": "second",
    "seconds": "second",
    "sec": "second",
    "minute": "minute",
    "minutes": "minute",
    "min": "minute",
    "mins": "minute",
    "hour": "hour",
    "hours": "hour",
    "h": "hour",
    "hr": "hour",
    "hrs": "hour",
    "day": "day",
    "days": "day",
    "week": "week",
    "weeks": "week",
    "wk": "week",
    "month": "month",
    "months": "month",
    "year": "year",
    "years": "year",
    "yr": "year",
    "yrs": "year",
    "times": "times",
    "fold": "times",
    "x": "times",
    "usd": "usd",
    "dollar": "usd",
    "dollars": "usd",
    "eur": "eur",
    "euro": "eur",
    "euros": "eur",
    "gbp": "gbp",
    "pound": "gbp",
    "pounds": "gbp",
}

_FILLER_TEXT = "yes no maybe perhaps possibly answer ok okay sure well indeed true false correct"
_FILLERS = frozenset(_FILLER_TEXT.split())  # "Yes." / "The answer is:" state nothing a passage could support
_NEGATION_TEXT = "not no never none cannot without nor neither nobody nothing nowhere"
_NEGATIONS = frozenset(_NEGATION_TEXT.split())
_WORDS = re.compile(r"[^\W\d_][\w'’]*(?:-[\w'’]+)*")
_NAME = re.compile(r"[^\W\d_][\w'’]*(?:-[\w'’]+)*")


def strip_citations(text: str) -> str:
    """The text without its [n] markers (and the space before them)."""
    return re.sub(r"\s+([.,;:!?])", r"\1", CITATION.sub("", text)).strip()


def cited_numbers(text: str) -> set[int]:
    """Source numbers cited as [n], [n, m] or [n-m] in `text`."""
    numbers: set[int] = set()
    for marker in CITATION.findall(text):
        parts = [int(p) for p in re.findall(r"\d+", marker)]
        if re.search(r"\d\s*[–-]\s*\d", marker) and len(parts) == 2 and 0 <= parts[1] - parts[0] <= 20:
            numbers.update(range(parts[0], parts[1] + 1))
        else:
            numbers.update(parts)
    return numbers


@dataclass(frozen=True)
class Quantity:
    value: str  # canonical: "1000", "3.5", "90"
    unit: str | None  # canonical unit when the next word is one ("day", "mg", "%")
    next: str | None  # the word after it, lower case (where it stands)
    prev: str | None  # the word before it, lower case
    text: str  # as written, with its unit

    def shown(self) -> str:
        return self.text


def _canonical(number: str) -> str | None:
    try:
        value = Decimal(number.replace(",", ""))
    except InvalidOperation:
        return None
    return format(value.normalize(), "f")


def _word_value(phrase: str) -> int:
    total = current = 0
    for word in re.split(r"[\s-]+", phrase.lower()):
        if word == "and" or not word:
            continue
        if word in _SMALL:
            current += _SMALL[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        else:
            total += max(current, 1) * _SCALES[word]
            current = 0
    return total + current


def quantities(text: str, *, claim: bool = False) -> list[Quantity]:
    """Numbers in `text` (digits and number words) with the unit and words around them; citations are ignored.

    `claim=True` (an answer sentence) skips a lone "one", which is rarely a quantity ("one of the causes"); a
    passage keeps it, so "1 day" in an answer still matches "one day" in a source.
    """
    text = CITATION.sub(lambda m: " " * len(m.group(0)), text)
    found: list[tuple[int, int, str]] = []
    for match in _DIGITS.finditer(text):
        value = _canonical(match.group(1) + (match.group(2) or ""))
        if value is not None:
            found.append((match.start(), match.end(), value))
    for match in _WORD_NUMBER.finditer(text):
        phrase = match.group(0)
        words = [w for w in re.split(r"[\s-]+", phrase.lower()) if w != "and"]
        if claim and words == ["one"]:
            continue
        found.append((match.start(), match.end(), str(_word_value(phrase))))
    out = []
    for start, end, value in sorted(found):
        after = _AFTER.match(text, end)
        next_word = after.group(1).lower() if after and after.group(1) else None
        if next_word in _SCALES and next_word != "hundred":  # "1.5 million" = 1500000
            value = _canonical(str(Decimal(value) * _SCALES[next_word])) or value
            end = after.end()
            after = _AFTER.match(text, end)
            next_word = after.group(1).lower() if after and after.group(1) else None
        unit = _UNITS.get(re.sub(r"\s+", " ", next_word)) if next_word else None
        before = _BEFORE_WORD.search(text[max(0, start - 40) : start])
        currency = _CURRENCY.get(text[start - 1 : start]) if start else None
        unit = unit or currency
        shown_end = after.end() if unit and after and not currency else end
        out.append(
            Quantity(
                value=value,
                unit=unit,
                next=next_word,
                prev=before.group(1).lower() if before else None,
                text=" ".join(text[start - (1 if currency else 0) : shown_end].split()),
            )
        )
    return out


def _words(text: str) -> list[str]:
    return [w.lower().replace("’", "'") for w in _WORDS.findall(text)]


def negated(text: str) -> bool:
    """The sentence says not/no/never/none/n't/without/cannot ("not only" is not a negation)."""
    lowered = text.lower().replace("’", "'")
    lowered = re.sub(r"\bnot only\b", " ", lowered)
    return bool(re.search(r"n't\b", lowered)) or any(w in _NEGATIONS for w in _words(lowered))


def content_words(text: str) -> list[str]:
    """Words that carry a claim: not stop words, not "yes"/"no"/"maybe"/"answer"."""
    return [w for w in _words(strip_citations(text)) if len(w) > 1 and w not in STOP_WORDS and w not in _FILLERS]


def names(text: str) -> list[str]:
    """Capitalised words that are not a sentence's first word (nor the first after a colon), and acronyms or
    identifiers such as "COVID-19" anywhere: each must appear in the cited passages."""
    text = strip_citations(text)
    found = []
    for match in _NAME.finditer(text):
        word = match.group(0).rstrip("'’-")
        if not word[:1].isupper() or len(word) < 2:  # "I", "Vitamin C": a letter says little
            continue
        head = text[: match.start()].rstrip(" \t\"'“‘(*")
        starts = not head or head[-1] in ".!?:;\n" or re.search(r"(?:^|\s)[-*•]$", head)
        identifier = sum(c.isupper() for c in word) >= 2 or any(c.isdigit() for c in word)
        if starts and not identifier:
            continue
        found.append(word)
    return found


def _mentions(haystack: str, name: str) -> bool:
    """`name` (lower case) occurs in `haystack` (lower case) as a word, allowing a plural or possessive."""
    name = name.lower().replace("’", "'")
    name = re.sub(r"'s$", "", name)
    candidates = [name] + ([name[:-1]] if name.endswith("s") and len(name) > 3 else [])
    for candidate in candidates:
        if re.search(rf"(?<![^\W_]){re.escape(candidate)}(?:'s|s|es)?(?![^\W_])", haystack):
            return True
    parts = [p for p in re.split(r"[-'’]", name) if len(p) > 1]
    if len(parts) > 1 and re.search(r"[\s-]?".join(re.escape(p) for p in parts), haystack):  # "B-cells", "B cells"
        return True
    return len(parts) > 1 and all(_mentions(haystack, p) for p in parts)


# --- the checker ----------------------------------------------------------------------------------------------------
@dataclass
class _PassageFacts:
    sentences: list[str]
    vectors: np.ndarray
    lowered: str
    quantities: list[Quantity]
    words: list[frozenset[str]]  # content words of each sentence, for the close-quote test
    verbatim: str  # the passage as `_verbatim` normalises it, for the exact-quote test


class SupportChecker:
    """Judges answer sentences against passages with the product's embedder; passage sentence vectors are cached
    by passage text (bounded), answer sentences are embedded in one batch per answer."""

    def __init__(self, embedder, threshold: float = DEFAULT_SUPPORT_THRESHOLD) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"support threshold must be in (0, 1], got {threshold}")
        self.embedder = embedder
        self.threshold = threshold
        self._cache: OrderedDict[str, _PassageFacts] = OrderedDict()
        self._lock = threading.Lock()

    def describe(self) -> str:
        name = getattr(self.embedder, "name", None) or getattr(self.embedder, "model_name", None)
        name = name or type(self.embedder).__name__
        return (
            f"numbers, units and names must appear in the cited passages; best sentence cosine ({name}) >= "
            f"{self.threshold:g}; same negation and no different number than the best-matching source sentence"
        )

    # --- passages -------------------------------------------------------------------------------------------
    def _facts(self, text: str) -> _PassageFacts:
        with self._lock:
            facts = self._cache.get(text)
            if facts is not None:
                self._cache.move_to_end(text)
                return facts
        plain = strip_markdown(text)
        sentences = [s.text for s in split_sentences(plain)] or [plain.strip() or text]
        vectors = np.asarray(self.embedder.embed_documents(sentences), dtype=np.float32)
        lowered = CITATION.sub(" ", plain).lower().replace("’", "'")
        words = [frozenset(content_words(s)) for s in sentences]
        facts = _PassageFacts(sentences, vectors, lowered, quantities(plain), words, _verbatim(plain))
        with self._lock:
            self._cache[text] = facts
            while len(self._cache) > CACHE_PASSAGES:
                self._cache.popitem(last=False)
        return facts

    # --- public API -----------------------------------------------------------------------------------------
    def check_sentence(self, sentence: str, passages: Sequence[Passage]) -> SentenceSupport:
        """One sentence against `passages` (all of them: the caller passes the ones it cites)."""
        text = strip_citations(strip_markdown(sentence))
        vector = self._embed([text])[0] if content_words(text) or quantities(text, claim=True) else None
        return self._judge(text, vector, passages)

    def check_answer(self, answer: str, passages: Sequence[Passage]) -> list[SentenceSupport]:
        """One result per answer sentence. A sentence that cites [n] is checked against the passages whose key is
        "n" (when the keys are source numbers); one that cites nothing, against all `passages`."""
        pieces = answer_sentences(answer)
        if not pieces:
            return []
        texts = [text for text, _ in pieces]
        checkable = [i for i, t in enumerate(texts) if content_words(t) or quantities(t, claim=True)]
        vectors = self._embed([texts[i] for i in checkable]) if checkable else np.zeros((0, 0), np.float32)
        by_index = dict(zip(checkable, vectors, strict=True))
        keys = {p.key for p in passages}
        results = []
        for i, (text, cited) in enumerate(pieces):
            chosen, problem = list(passages), None
            if cited and keys and all(k.isdigit() for k in keys):
                chosen = [p for p in passages if int(p.key) in cited]
                if not chosen:
                    problem = f"cites [{', '.join(map(str, sorted(cited)))}], not among the passages"
            result = self._judge(text, by_index.get(i), chosen)
            if problem:
                result = SentenceSupport(
                    text, False, result.score, result.passage, result.evidence, (problem, *result.problems)
                )
            results.append(result)
        return results

    # --- the rules ------------------------------------------------------------------------------------------
    def _embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.embedder.embed_documents(texts), dtype=np.float32)

    def _judge(self, text: str, vector: np.ndarray | None, passages: Sequence[Passage]) -> SentenceSupport:
        if vector is None:
            return SentenceSupport(text, False, 0.0, None, None, ("no checkable claim",))
        if not passages:
            return SentenceSupport(text, False, 0.0, None, None, ("no cited passage",))
        facts = [(p.key, self._facts(p.text)) for p in passages]
        quoted = _verbatim(text)
        if len(content_words(quoted)) >= QUOTE_MIN_WORDS:
            for key, fact in facts:
                if _whole_sentences_of(quoted, fact.verbatim):  # word for word from the passage: no misstatement
                    return SentenceSupport(text, True, 1.0, key, text, ())
        claimed = quantities(text, claim=True)
        best_score, best_key, best_sentence = _closest(vector, facts, {q.value for q in claimed})
        problems: list[str] = []
        known = [q for _, fact in facts for q in fact.quantities]
        known_values = {q.value for q in known}
        for q in claimed:
            if q.value not in known_values:
                problems.append(f"number {q.value} not in the cited passages")
            elif q.unit and not any(k.value == q.value and k.unit == q.unit for k in known):
                other = next((k for k in known if k.value == q.value and k.unit), None)
                if other is not None:
                    problems.append(f"{q.shown()}: the cited passages give {other.shown()}")
        haystack = " ".join(fact.lowered for _, fact in facts)
        for name in dict.fromkeys(names(text)):
            if not _mentions(haystack, name):
                problems.append(f"name {name!r} not in the cited passages")
        if best_score < self.threshold and not _quotes(text, facts):
            problems.append(f"similarity {best_score:.2f} below {self.threshold:g}: no passage sentence says this")
        if best_sentence is not None:
            if negated(text) not in _aligned_polarity(text, best_sentence):
                problems.append("negation differs from the source")
            problems.extend(_different_numbers(claimed, quantities(best_sentence)))
        return SentenceSupport(
            text, not problems, round(best_score, 4), best_key, best_sentence, tuple(dict.fromkeys(problems))
        )


QUOTE_MIN_WORDS = 3
QUOTE_COVERAGE = 0.8
NEAR_BEST = 0.05  # passage sentences this close to the best cosine are equally likely to be the one paraphrased


def _closest(vector: np.ndarray, facts: Sequence[tuple[str, _PassageFacts]], values: set[str]) -> tuple:
    """(cosine, passage key, sentence) of the passage sentence the claim restates: the most similar one, unless a
    nearly as similar one states the claim's numbers ("within 3 days" beside "within 45 days" in one policy)."""
    ranked = []
    for key, fact in facts:
        for score, sentence in zip((fact.vectors @ vector).tolist(), fact.sentences, strict=True):
            ranked.append((float(score), key, sentence))
    if not ranked:
        return -1.0, None, None
    best = max(ranked, key=lambda r: r[0])
    if values:
        near = [r for r in ranked if r[0] >= best[0] - NEAR_BEST and values <= {q.value for q in quantities(r[2])}]
        if near:
            return max(near, key=lambda r: r[0])
    return best


def _whole_sentences_of(quoted: str, passage: str) -> bool:
    """`quoted` stands in `passage` from a sentence start to a sentence end: a fragment ("X causes Y" out of "no
    evidence that X causes Y") can say the opposite of its sentence, so it gets the full checks instead."""
    return re.search(r"(?:^|[.!?:]\s)" + re.escape(quoted) + r"(?:[.!?]|$)", passage) is not None


def _verbatim(text: str) -> str:
    """Text for the exact-quote test: no markdown, no [n] markers, lower case, single spaces, no final stop."""
    return " ".join(strip_citations(strip_markdown(text)).lower().replace("’", "'").split()).rstrip(".")


def _quotes(text: str, facts: Sequence[tuple[str, _PassageFacts]]) -> bool:
    """A close quote: at least 80% of the sentence's content words (3 or more) stand in one passage sentence. An
    extractive answer often quotes a fragment of a long sentence, whose cosine with the whole sentence is low."""
    wanted = set(content_words(text))
    if len(wanted) < QUOTE_MIN_WORDS:
        return False
    covered = max((len(wanted & words) for _, fact in facts for words in fact.words), default=0)
    return covered >= QUOTE_COVERAGE * len(wanted)


_CLAUSE = re.compile(r"[,;:()]\s*|\s+(?:but|while|whereas|although|though|however|yet)\s+", re.IGNORECASE)


def _aligned_polarity(claim: str, source: str) -> set[bool]:
    """Polarity of the source clause(s) sharing the most content words with the claim: a long source sentence
    ("… are severe in older adults, but there have not yet been reports …") is negated only where the claim is."""
    wanted = set(content_words(claim))
    clauses = [c for c in _CLAUSE.split(source) if c and c.strip()]
    overlaps = [len(wanted & set(content_words(c))) for c in clauses]
    if not clauses or max(overlaps) == 0:
        return {negated(source)}
    return {negated(c) for c, o in zip(clauses, overlaps, strict=True) if o == max(overlaps)}


def _different_numbers(claimed: list[Quantity], source: list[Quantity]) -> list[str]:
    """A number where the best-matching source sentence has another one in the same place (same unit, or the
    same content word right after/before it): "within 4 days" against "within 45 days"."""
    problems = []
    claimed_values = {q.value for q in claimed}
    source_values = {r.value for r in source}
    for q in claimed:
        if q.value in source_values:
            continue
        for r in source:
            if r.value in claimed_values:
                continue
            same_unit = q.unit is not None and q.unit == r.unit
            same_next = q.next is not None and q.next == r.next and q.next not in STOP_WORDS
            same_prev = q.prev is not None and q.prev == r.prev and q.prev not in STOP_WORDS
            if same_unit or same_next or same_prev:
                problems.append(f"states {q.shown()} where the source says {r.shown()}")
                break
    return problems


def answer_sentences(answer: str) -> list[tuple[str, set[int]]]:
    """(sentence without citations, the numbers it cites) for each sentence of an answer. A citation written after
    the full stop ("… delivery. [1]") belongs to the sentence before it; citation-only pieces are not sentences."""
    pieces: list[tuple[str, set[int]]] = []
    for sentence in split_sentences(strip_markdown(answer)):
        raw = sentence.text
        leading = _LEADING_CITATIONS.match(raw)
        if leading and pieces:
            text, cited = pieces[-1]
            pieces[-1] = (text, cited | cited_numbers(leading.group(0)))
            raw = raw[leading.end() :]
        text = strip_citations(raw)
        if not re.search(r"[^\W_]", text):
            continue
        pieces.append((text, cited_numbers(raw)))
    return pieces
