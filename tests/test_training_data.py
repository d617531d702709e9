"""Dataset readers and validation: no model needed, so these run in well under a second."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.datasets import DatasetError, check_source, read_dataset, split_examples


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n")
    return path


def _chat(user: str, reply: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


def test_chat_jsonl_bad_rows_are_reported_by_line(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "chat.jsonl",
        [
            _chat("hi", "hello"),
            {"messages": [{"content": "no role"}, {"role": "assistant", "content": "x"}]},  # line 2
            _chat("question", "   "),  # line 3: empty reply
            "{not json",  # line 4
            {"messages": [{"role": "user", "content": "only a question"}]},  # line 5
            _chat("long", "y" * 500),  # line 6: over-long with max_chars=100
            _chat("fine", "a reply"),
        ],
    )
    dataset = read_dataset(path, max_chars=100)
    assert [e.line for e in dataset.examples] == [1, 7]
    assert [p.line for p in dataset.problems] == [2, 3, 4, 5, 6]
    reasons = {p.line: p.reason for p in dataset.problems}
    assert "role" in reasons[2] and "empty assistant reply" in reasons[3] and "JSON" in reasons[4]
    assert "no assistant" in reasons[5] and "too long" in reasons[6]
    with pytest.raises(DatasetError, match="line 2"):
        read_dataset(path, on_error="fail")


def test_prompt_completion_and_system_prompt(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "2+2?", "completion": "4"}, {"prompt": "x"}])
    dataset = read_dataset(path, system_prompt="Be brief.")
    assert dataset.format == "prompt_completion"
    assert dataset.examples[0].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert [p.line for p in dataset.problems] == [2]


def test_csv_columns_and_line_numbers_with_multiline_fields(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text('q,a\n"first",\n"second","line one\nline two"\n"",orphan\n"third","ok"\n')
    dataset = read_dataset(path, input_col="q", output_col="a")
    assert [(e.line, e.messages[-1]["content"]) for e in dataset.examples] == [(3, "line one\nline two"), (6, "ok")]
    assert [p.line for p in dataset.problems] == [2, 5]


def test_missing_file_and_unknown_column_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        check_source(tmp_path / "nope.csv")
    path = tmp_path / "data.csv"
    path.write_text("question,answer\nhi,hello\n")
    with pytest.raises(DatasetError, match="unknown column.*'instruction'.*the file has question, answer"):
        check_source(path, input_col="instruction", output_col="answer")
    jsonl = _write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}])
    with pytest.raises(DatasetError, match="expected 'messages'"):
        check_source(jsonl)


def test_support_replies_reads_cleanly(shared_data: Path) -> None:
    dataset = read_dataset(shared_data / "support-replies" / "support_replies.csv")
    assert dataset.rows_read == 4514 and len(dataset.examples) + len(dataset.problems) == 4514
    assert len(dataset.sha256) == 64


def test_split_is_seeded_shuffled_and_disjoint(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "c.jsonl", [_chat(f"q{i}", f"a{i}") for i in range(50)])
    examples = read_dataset(path).examples
    first = split_examples(examples, 0.2, seed=1, limit=20)
    again = split_examples(examples, 0.2, seed=1, limit=20)
    assert [e.line for e in first.train] == [e.line for e in again.train]
    assert (len(first.train), len(first.evaluation), len(first.unused)) == (16, 4, 30)
    lines = [e.line for part in (first.train, first.evaluation, first.unused) for e in part]
    assert sorted(lines) == list(range(1, 51))
    assert [e.line for e in first.train] != sorted(e.line for e in first.train)  # shuffled, not the file head
    with pytest.raises(DatasetError, match="eval split"):
        split_examples(examples, 1.5)
