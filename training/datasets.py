"""Read a user's training data into chat conversations, with every bad row named by its line number.

Three shapes are accepted, because that is what people have lying around:
- chat JSONL: `{"messages": [{"role": ..., "content": ...}, ...]}` (the OpenAI / TRL format; an assistant message
  with `"weight": 0` is context only, as in OpenAI's fine-tuning format: the model sees it but does not learn it);
- prompt/completion JSONL: `{"prompt": ..., "completion": ...}`;
- CSV or JSONL with a column mapping (`input_col` -> user turn, `output_col` -> assistant reply).
Everything is checked here, before a model is loaded, so a typo in a column name costs a second, not a minute.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
OnError = Literal["skip", "fail"]


class DatasetError(ValueError):
    """The data file cannot be used as asked; the message names the file, the line and the reason."""


@dataclass(frozen=True)
class RowProblem:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class Example:
    """One training conversation and the line of the file it came from (for error messages)."""

    messages: list[dict[str, str]]
    line: int


@dataclass
class Dataset:
    examples: list[Example]
    problems: list[RowProblem] = field(default_factory=list)
    sha256: str = ""
    rows_read: int = 0
    path: str = ""
    format: str = ""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_messages(messages: Any, max_chars: int | None) -> str | None:
    """Return why a conversation is unusable, or None if it is fine."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"message {position} is not an object"
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return f"message {position} has role {role!r} (expected one of {', '.join(ROLES)})"
        if not isinstance(content, str):
            return f"message {position} ({role}) has no text 'content'"
        if role == "assistant" and not content.strip():
            return f"message {position} is an empty assistant reply"
        if "weight" in message and (role != "assistant" or message["weight"] not in (0, 1)):
            return f"message {position} ({role}) has weight {message['weight']!r} (only assistant replies, 0 or 1)"
    if not any(m["role"] == "assistant" and m.get("weight", 1) for m in messages):
        return "no assistant reply to learn from"
    if not any(m["role"] == "user" for m in messages):
        return "no user message"
    if max_chars is not None:
        total = sum(len(m["content"]) for m in messages)
        if total > max_chars:
            return f"example is too long ({total} characters > {max_chars})"
    return None


def _with_system(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    # `weight: 0` (OpenAI's fine-tuning format) marks a reply that is context only: shown, never learned.
    clean = [
        {"role": m["role"], "content": m["content"], **({"weight": 0} if m.get("weight") == 0 else {})}
        for m in messages
    ]
    if system_prompt and clean[0]["role"] != "system":
        clean.insert(0, {"role": "system", "content": system_prompt})
    return clean


def _jsonl_records(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield line_number, None, f"not valid JSON ({exc.msg})"


def _csv_records(path: Path) -> tuple[list[str], Iterator[tuple[int, dict[str, str], None]]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    handle = path.open(encoding="utf-8", newline="")
    reader = csv.DictReader(handle)
    header = list(reader.fieldnames or [])

    def rows() -> Iterator[tuple[int, dict[str, str], None]]:
        with handle:
            for row in reader:
                # The line where the record *starts*: quoted fields may span lines.
                yield reader.line_num - _newlines_in(row), row, None

    return header, rows()


def _newlines_in(row: dict[str, Any]) -> int:
    return sum(value.count("\n") for value in row.values() if isinstance(value, str))


def detect_format(path: Path, input_col: str | None, output_col: str | None) -> str:
    """'chat', 'prompt_completion' or 'columns' (a CSV, or JSONL with a column mapping)."""
    if path.suffix.lower() == ".csv" or input_col or output_col:
        return "columns"
    for _line, record, error in _jsonl_records(path):
        if error is None and isinstance(record, dict):
            if "messages" in record:
                return "chat"
            if "prompt" in record and "completion" in record:
                return "prompt_completion"
            raise DatasetError(
                f"{path}: rows have keys {sorted(record)}; expected 'messages', 'prompt'+'completion', "
                "or pass --input-col/--output-col"
            )
    raise DatasetError(f"{path}: no JSON object rows found")


def check_source(path: Path, input_col: str | None = None, output_col: str | None = None) -> str:
    """Fail fast (no model needed) on a missing file, an unknown format or unknown columns; return the format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training data {str(path)!r}: no such file")
    if bool(input_col) != bool(output_col) and path.suffix.lower() != ".csv":
        raise DatasetError("pass both --input-col and --output-col")
    fmt = detect_format(path, input_col, output_col)
    if fmt == "columns":
        input_col, output_col = input_col or "instruction", output_col or "response"
        columns = _columns_of(path)
        missing = [c for c in (input_col, output_col) if c not in columns]
        if missing:
            raise DatasetError(
                f"{path}: unknown column(s) {', '.join(map(repr, missing))}; the file has {', '.join(columns)}"
            )
    return fmt


def _columns_of(path: Path) -> list[str]:
    if path.suffix.lower() == ".csv":
        header, rows = _csv_records(path)
        rows.close()  # type: ignore[attr-defined]
        return header
    for _line, record, error in _jsonl_records(path):
        if error is None and isinstance(record, dict):
            return list(record)
    return []


def _record_messages(record: dict, fmt: str, input_col: str | None, output_col: str | None) -> tuple[Any, str | None]:
    """One row as chat messages in its format's way, or (None, why it cannot be)."""
    if fmt == "chat":
        return record.get("messages"), None
    if fmt == "prompt_completion":
        prompt, completion = record.get("prompt"), record.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            return None, "'prompt' and 'completion' must both be text"
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], None
    question, answer = record.get(input_col), record.get(output_col)
    if not isinstance(question, str) or not question.strip():
        return None, f"empty {input_col!r}"
    if not isinstance(answer, str):
        return None, f"missing {output_col!r}"
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], None


def read_dataset(
    path: Path | str,
    *,
    input_col: str | None = None,
    output_col: str | None = None,
    system_prompt: str | None = None,
    on_error: OnError = "skip",
    max_chars: int | None = 20000,
) -> Dataset:
    """Read every usable row of `path`; bad rows are skipped and reported, or (`on_error="fail"`) raise."""
    path = Path(path)
    fmt = check_source(path, input_col, output_col)
    if fmt == "columns":
        input_col, output_col = input_col or "instruction", output_col or "response"
    examples: list[Example] = []
    problems: list[RowProblem] = []
    rows_read = 0

    def bad(line: int, reason: str) -> None:
        problem = RowProblem(line, reason)
        if on_error == "fail":
            raise DatasetError(f"{path}: {problem} (use skip mode to leave bad rows out)")
        problems.append(problem)

    if fmt == "columns" and path.suffix.lower() == ".csv":
        records: Iterator[tuple[int, Any, str | None]] = _csv_records(path)[1]
    else:
        records = _jsonl_records(path)
    for line, record, error in records:
        rows_read += 1
        if error is not None:
            bad(line, error)
            continue
        if not isinstance(record, dict):
            bad(line, "row is not an object")
            continue
        messages, reason = _record_messages(record, fmt, input_col, output_col)
        if reason is None:
            reason = _check_messages(messages, max_chars)
        if reason is not None:
            bad(line, reason)
            continue
        examples.append(Example(_with_system(messages, system_prompt), line))
    if problems:
        shown = "; ".join(map(str, problems[:5])) + (f"; … {len(problems) - 5} more" if len(problems) > 5 else "")
        log.warning("%s: skipped %d bad row(s): %s", path, len(problems), shown)
    if not examples:
        raise DatasetError(f"{path}: no usable rows ({len(problems)} bad of {rows_read})")
    return Dataset(examples, problems, file_sha256(path), rows_read, str(path), fmt)


@dataclass
class Split:
    train: list[Example]
    evaluation: list[Example]
    unused: list[Example]


def split_examples(examples: list[Example], eval_split: float, seed: int = 0, limit: int | None = None) -> Split:
    """Seeded shuffle, keep `limit` rows, hold `eval_split` of them out for eval loss; the rest is `unused`.

    Shuffling before the limit matters: exported files are often sorted (by intent, by date), and the first N
    rows would then teach one topic only. The same inputs always give the same split, so later evaluation can
    rebuild which rows were never trained on.
    """
    if not 0.0 <= eval_split < 1.0:
        raise DatasetError(f"eval split must be in [0, 1), got {eval_split}")
    order = list(examples)
    random.Random(seed).shuffle(order)
    kept = order[:limit] if limit else order
    n_eval = round(len(kept) * eval_split)
    if eval_split > 0 and len(kept) >= 2:
        n_eval = max(1, n_eval)
    n_eval = min(n_eval, len(kept) - 1)
    return Split(train=kept[n_eval:], evaluation=kept[:n_eval], unused=order[len(kept) :])
