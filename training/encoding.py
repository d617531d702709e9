"""Turn a conversation into token ids and labels that teach only the assistant's words.

The conversation is rendered with the model's own chat template; the character spans of each assistant
reply (its text plus the end-of-turn token) are found by rendering the prefix before and after that reply,
and token labels outside those spans are -100, so the loss never rewards copying the user's message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from training.datasets import DatasetError, Example, OnError, RowProblem

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    line: int

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]  # no `weight`: it is ours, not the model's
    return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=generation_prompt)


def end_of_turn_token(tokenizer: Any) -> str:
    """The string closing an assistant turn: `<|im_end|>` for ChatML models such as SmolLM2."""
    for candidate in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        if candidate in tokenizer.get_vocab():
            return candidate
    return tokenizer.eos_token


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character spans of each learned assistant reply + end token."""
    text = _render(tokenizer, messages, generation_prompt=False)
    end_token = end_of_turn_token(tokenizer)
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:  # weight 0: context, not learned
            continue
        before = _render(tokenizer, messages[:index], generation_prompt=True)
        through = _render(tokenizer, messages[: index + 1], generation_prompt=False)
        if not text.startswith(before) or not text.startswith(through):
            raise DatasetError("the model's chat template does not render conversations prefix by prefix")
        end = through.rfind(end_token)
        end = end + len(end_token) if end >= len(before) else len(through)
        spans.append((len(before), end))
    return text, spans


def encode_example(tokenizer: Any, example: Example) -> EncodedExample:
    """Token ids of the whole conversation; labels copy the ids inside assistant spans and are -100 elsewhere."""
    text, spans = assistant_spans(tokenizer, example.messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = encoded["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        if end > start and any(span_start <= start and end <= span_end for span_start, span_end in spans):
            labels[position] = ids[position]
    return EncodedExample(ids, labels, example.line)


def encode_examples(
    tokenizer: Any, examples: list[Example], max_length: int, on_error: OnError = "skip"
) -> tuple[list[EncodedExample], list[RowProblem]]:
    """Encode all examples; those longer than `max_length` tokens are reported by line (skipped or fatal)."""
    encoded: list[EncodedExample] = []
    problems: list[RowProblem] = []
    for example in examples:
        item = encode_example(tokenizer, example)
        if len(item.input_ids) > max_length:
            problem = RowProblem(example.line, f"example is too long ({len(item.input_ids)} tokens > {max_length})")
            if on_error == "fail":
                raise DatasetError(f"{problem} (raise --max-length or use skip mode)")
            problems.append(problem)
            continue
        if item.trained_tokens == 0:
            problems.append(RowProblem(example.line, "no assistant tokens after encoding"))
            continue
        encoded.append(item)
    if problems:
        log.warning("skipped %d example(s) while encoding: %s", len(problems), "; ".join(map(str, problems[:5])))
    return encoded, problems
