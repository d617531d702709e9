"""Backend-independent pieces of streaming: stop sequences, incremental decoding, async bridging."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from knowledge.cpu_share import generating


class StopFilter:
    """Cuts a text stream at the first stop sequence, which never reaches the caller.

    A stop sequence can arrive split over several tokens, so the tail that could still be the start of
    one is held back until the next piece settles it.
    """

    def __init__(self, stops: Sequence[str] | None) -> None:
        self.stops = [stop for stop in (stops or []) if stop]
        self._pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add `piece`; return the text that is now safe to emit (empty once stopped)."""
        if self.stopped:
            return ""
        text = self._pending + piece
        if not self.stops:
            self._pending = ""
            return text
        cut, partial = self._earliest_match(text), self._earliest_partial(text)
        if cut >= 0 and (partial is None or partial >= cut):  # no longer stop can still begin before the match
            self.stopped, self._pending = True, ""
            return text[:cut]
        keep = len(text) if partial is None else partial
        self._pending = text[keep:]
        return text[:keep]

    def flush(self) -> str:
        """The held-back tail, once the stream ended (cut at a stop sequence it completes)."""
        if self.stopped:
            return ""
        text, self._pending = self._pending, ""
        cut = self._earliest_match(text)
        self.stopped = cut >= 0
        return text[:cut] if cut >= 0 else text

    def _earliest_match(self, text: str) -> int:
        return min((index for stop in self.stops if (index := text.find(stop)) >= 0), default=-1)

    def _earliest_partial(self, text: str) -> int | None:
        """The first position from which the text so far could still grow into a stop sequence."""
        for position in range(max(0, len(text) - max(len(stop) for stop in self.stops) + 1), len(text)):
            tail = text[position:]
            if any(len(stop) > len(tail) and stop.startswith(tail) for stop in self.stops):
                return position
        return None


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas.

    Decoding token by token breaks multi-byte characters and byte-level BPE spacing; decoding the
    whole completion each step and emitting the new suffix is exact. A trailing U+FFFD means a
    character is still incomplete, so it waits for the next token.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._emitted = 0

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        delta, self._emitted = text[self._emitted :], len(text)
        return delta


async def iterate_in_thread(
    start: Callable[[], Iterator[str]], cancel: threading.Event | None = None
) -> AsyncIterator[str]:
    """Run a blocking token iterator in its own thread and hand its pieces to the event loop.

    The whole iteration stays on one thread (torch's grad mode and the model lock are per thread),
    and leaving the `async for` early sets `cancel` and closes the iterator so the model is freed.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancel = cancel or threading.Event()

    def post(kind: str, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            cancel.set()

    def produce() -> None:
        iterator: Iterator[str] | None = None
        try:
            iterator = start()
            for piece in iterator:
                if cancel.is_set():
                    break
                post("piece", piece)
        except BaseException as exc:  # handed to the consumer, re-raised there
            post("error", exc)
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        post("done", None)

    worker = threading.Thread(target=produce, name="ragtune-generate", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "piece":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        cancel.set()


def while_generating(pieces: Iterator[str]) -> Iterator[str]:
    """`pieces`, with the process told a generation runs until they end (bulk embedding yields its second core,
    see knowledge/cpu_share.py)."""
    with generating():
        yield from pieces


class FromStream:
    """`astream` and `generate` for a generator whose `stream` returns a `TokenStream`: one way for every backend.

    `astream` reads the pieces in a worker thread, so the event loop stays free while a model decodes.
    """

    # Whether `stream` takes `response_format` (OpenAI's json_object / json_schema) and constrains its output to
    # it; a backend that cannot must say no, so the API refuses the field instead of returning free text.
    structured_output: bool = False

    def stream(self, messages: Any, **options: Any) -> Any:  # pragma: no cover - each backend has its own
        raise NotImplementedError

    def astream(self, messages: Any, **options: Any) -> AsyncIterator[str]:
        token_stream = self.stream(messages, **options)
        return iterate_in_thread(lambda: token_stream)

    def generate(self, messages: Any, **options: Any) -> Any:
        token_stream = self.stream(messages, **options)
        for _ in token_stream:
            pass
        return token_stream.stats.result()
