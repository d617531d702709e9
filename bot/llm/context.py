"""The context-length guard: drop the oldest memory first, never the system prompt or the current message."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from bot.llm.types import ContextOverflow, Message, UnknownAdapter

ROLES = ("system", "user", "assistant", "tool")


def check_messages(messages: list[Message]) -> None:
    """Reject malformed chat messages with a one-line reason before they reach a model."""
    if not messages:
        raise ValueError("messages: empty; at least the current message is needed")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"messages[{index}]: expected {{'role': ..., 'content': str}}")
        if message.get("role") not in ROLES:
            raise ValueError(f"messages[{index}]: unknown role {message.get('role')!r} (use one of {', '.join(ROLES)})")


@dataclass(frozen=True)
class Sampling:
    """One request's decoding settings, checked: what both local backends decode with."""

    max_new_tokens: int
    temperature: float
    top_p: float


def resolve_sampling(
    defaults: Sampling, context_length: int, max_new_tokens: int | None, temperature: float | None, top_p: float | None
) -> Sampling:
    """The request's values over the generator's defaults; ValueError with the reason for a bad one."""
    max_new = defaults.max_new_tokens if max_new_tokens is None else max_new_tokens
    temp = defaults.temperature if temperature is None else temperature
    nucleus = defaults.top_p if top_p is None else top_p
    if max_new < 1:
        raise ValueError(f"max_new_tokens={max_new}: must be at least 1")
    if temp < 0:
        raise ValueError(f"temperature={temp}: must be >= 0 (0 is greedy)")
    if not 0 < nucleus <= 1:
        raise ValueError(f"top_p={nucleus}: must be in (0, 1]")
    return Sampling(min(max_new, context_length - 1), temp, nucleus)


def check_adapter(adapter: str | None, known: Collection[str]) -> None:
    if adapter is not None and adapter not in known:
        names = ", ".join(sorted(known)) or "none loaded"
        raise UnknownAdapter(f"adapter {adapter!r} is not loaded (available: {names})")


def fit_messages(
    messages: list[Message],
    *,
    max_new_tokens: int,
    context_length: int,
    count_prompt: Callable[[list[Message]], int],
) -> list[Message]:
    """Return `messages` with the fewest oldest non-system turns removed so prompt + answer fit.

    System messages and the last message are always kept; if they alone do not fit, `ContextOverflow`
    says by how much. `count_prompt` counts the tokens of the rendered prompt (chat template included),
    and is monotone in the number of turns kept, so a binary search finds the cut in O(log n) renders.
    A cut never leaves the history starting with an assistant turn whose question was dropped.
    """
    check_messages(messages)
    budget = context_length - max_new_tokens
    if budget <= 0:
        raise ContextOverflow(f"max_new_tokens={max_new_tokens} leaves no room in a {context_length}-token context")
    last = len(messages) - 1
    history = [i for i in range(last) if messages[i]["role"] != "system"]

    def keep_from(start: int) -> list[Message]:
        dropped = set(history[:start])
        return [message for i, message in enumerate(messages) if i not in dropped]

    if count_prompt(messages) <= budget:
        return list(messages)
    minimal = keep_from(len(history))
    needed = count_prompt(minimal)
    if needed > budget:
        raise ContextOverflow(
            f"the system prompt and current message need {needed} tokens but only {budget} fit "
            f"({context_length}-token context minus max_new_tokens={max_new_tokens}); shorten the message"
        )
    low, high = 1, len(history)  # invariant: dropping `high` fits, dropping `low - 1` does not
    while low < high:
        middle = (low + high) // 2
        if count_prompt(keep_from(middle)) <= budget:
            high = middle
        else:
            low = middle + 1
    start = high
    while start < len(history) and messages[history[start]]["role"] != "user":
        start += 1
    return keep_from(start)


class FitsByRendering:
    """`fit_messages` for a generator that renders its chat template to token ids (both local backends)."""

    context_length: int

    def render(self, messages: list[Message]) -> list[int]:  # pragma: no cover - each backend has its own
        raise NotImplementedError

    def fit_messages(self, messages: list[Message], max_new_tokens: int) -> list[Message]:
        return fit_messages(
            messages,
            max_new_tokens=max_new_tokens,
            context_length=self.context_length,
            count_prompt=lambda candidate: len(self.render(candidate)),
        )
