"""The generation contract both backends (local transformers, remote OpenAI-compatible) fulfil.

The conversation pipeline codes against `Generator` only, so swapping the small local model for a
vLLM server is a setting, not a code change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

Message = dict[str, str]
FinishReason = Literal["stop", "length"]


class UnknownAdapter(ValueError):
    """A request named an adapter that is not loaded."""


class GeneratorUnavailable(RuntimeError):
    """The remote generator is down, refused, or timed out; the message is one line saying which."""


class ContextOverflow(ValueError):
    """The system prompt plus the current message alone do not fit the model's context window."""


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    time_to_first_token_s: float | None
    finish_reason: FinishReason


@dataclass
class StreamStats:
    """Filled in while a stream runs; complete once it is exhausted (see `TokenStream`)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    time_to_first_token_s: float | None = None
    finish_reason: FinishReason = "length"
    adapter: str | None = None
    text_parts: list[str] = field(default_factory=list)

    def result(self) -> GenerationResult:
        return GenerationResult(
            text="".join(self.text_parts),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            seconds=self.seconds,
            time_to_first_token_s=self.time_to_first_token_s,
            finish_reason=self.finish_reason,
        )


class TokenStream(Iterator[str]):
    """An iterator of text pieces that also carries the run's statistics in `.stats`.

    Callers that only want text iterate it; callers that want timings (the pipeline stores them with
    each answer) read `.stats` after the loop. `close()` stops generation early and frees the model.
    """

    def __init__(self, pieces: Iterator[str], stats: StreamStats) -> None:
        self._pieces = pieces
        self.stats = stats

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> str:
        piece = next(self._pieces)
        self.stats.text_parts.append(piece)
        return piece

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()


@runtime_checkable
class Generator(Protocol):
    name: str
    structured_output: bool  # `stream(..., response_format=...)` is honoured (see FromStream)

    def stream(
        self,
        messages: list[Message],
        *,
        adapter: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
    ) -> Iterator[str]: ...

    def astream(
        self,
        messages: list[Message],
        *,
        adapter: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
    ) -> AsyncIterator[str]: ...

    def generate(
        self,
        messages: list[Message],
        *,
        adapter: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
    ) -> GenerationResult: ...

    def load_adapter(self, name: str, path: str | Path) -> None: ...

    def adapters(self) -> list[str]: ...

    def fit_messages(self, messages: list[Message], max_new_tokens: int) -> list[Message]: ...

    def count_tokens(self, text: str) -> int: ...
