"""Does a reply follow the form the adapter was trained on? An objective rule learned from the TRAIN replies only.

A reply is in trained form when it both
- carries a template slot like `{{Order Number}}` (`placeholder`), and
- opens the way the training replies open: its first two words (lower-cased) are among the most frequent
  openings of the training replies, taken in order until they cover `opening_coverage` of them (`opening`).
The rule is derived from data, never hard-coded, so it works for any data set with the same kind of form.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*[^{}\n]{1,60}?\s*\}\}")
_WORD = re.compile(r"[\w']+[!?.,]?")


def opening(text: str, words: int = 2) -> str:
    return " ".join(_WORD.findall(text.strip().lower())[:words])


@dataclass
class FormRule:
    openings: list[str]
    train_placeholder_rate: float
    train_form_rate: float
    opening_coverage: float

    @classmethod
    def derive(cls, train_replies: list[str], opening_coverage: float = 0.6) -> FormRule:
        counts = Counter(opening(reply) for reply in train_replies if reply.strip())
        total = sum(counts.values()) or 1
        chosen, covered = [], 0
        for head, count in counts.most_common():
            if covered / total >= opening_coverage:
                break
            chosen.append(head)
            covered += count
        rule = cls(chosen, 0.0, 0.0, opening_coverage)
        rule.train_placeholder_rate = sum(rule.has_placeholder(r) for r in train_replies) / max(len(train_replies), 1)
        rule.train_form_rate = sum(rule.matches(r) for r in train_replies) / max(len(train_replies), 1)
        return rule

    def has_placeholder(self, reply: str) -> bool:
        return PLACEHOLDER.search(reply) is not None

    def has_opening(self, reply: str) -> bool:
        return opening(reply) in self.openings

    def matches(self, reply: str) -> bool:
        return self.has_placeholder(reply) and self.has_opening(reply)

    def rates(self, replies: list[str]) -> dict[str, float]:
        n = max(len(replies), 1)
        return {
            "form": sum(self.matches(r) for r in replies) / n,
            "placeholder": sum(self.has_placeholder(r) for r in replies) / n,
            "opening": sum(self.has_opening(r) for r in replies) / n,
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def generate_replies(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    *,
    max_new_tokens: int = 120,
    batch_size: int = 8,
    end_token: str = "<|im_end|>",
) -> list[str]:
    """Greedy replies for each conversation (batched, left-padded), stopping at the end-of-turn token."""
    import torch

    device = next(model.parameters()).device
    eos_id = tokenizer.convert_tokens_to_ids(end_token)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[str] = [""] * len(prompts)
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.no_grad():
                out = model.generate(
                    **batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_id, pad_token_id=pad_id
                )
            new = out[:, batch["input_ids"].shape[1] :]
            for i, tokens in zip(chunk, new, strict=True):
                replies[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side = previous_side
    return replies
