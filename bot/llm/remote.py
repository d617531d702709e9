"""A generator backed by any OpenAI-compatible server (vLLM, llama.cpp server, Ollama).

Adapters are chosen by model name, the way vLLM serves peft adapters with `--enable-lora
--lora-modules name=path`: a request for adapter `x` asks for model `x`, no adapter asks for the
base model. Every network failure becomes `GeneratorUnavailable` with one line naming the server.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bot.llm.adapters import check_adapter_name
from bot.llm.context import check_messages, fit_messages
from bot.llm.streaming import FromStream, StopFilter
from bot.llm.types import GenerationResult, GeneratorUnavailable, Message, StreamStats, TokenStream, UnknownAdapter

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # the server owns the tokenizer; this estimate only drives the context guard
MESSAGE_OVERHEAD_TOKENS = 4


class RemoteGenerator(FromStream):
    """The `Generator` interface over HTTP to `base_url` (which ends in `/v1`)."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        context_length: int | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = f"openai:{model or '?'}@{self.base_url}"
        self._model = model
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self.timeout_s = timeout_s
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.context_length = context_length or 8192
        self._client = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout)

    @classmethod
    def from_settings(cls, settings: Any) -> RemoteGenerator:
        return cls(
            settings.openai_base_url,
            model=getattr(settings, "openai_model", None),
            api_key=settings.openai_api_key,
            timeout_s=settings.generation_timeout_s,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            context_length=getattr(settings, "generator_context_length", None),
        )

    def close(self) -> None:
        self._client.close()

    # --- errors ----------------------------------------------------------------------------------
    def _fail(self, exc: httpx.HTTPError) -> Exception:
        if isinstance(exc, httpx.TimeoutException):
            return GeneratorUnavailable(f"generator server {self.base_url} did not answer within {self.timeout_s:g}s")
        if isinstance(exc, httpx.ConnectError):
            return GeneratorUnavailable(f"generator server {self.base_url} is not reachable: {exc}")
        return GeneratorUnavailable(f"generator server {self.base_url} failed: {type(exc).__name__}: {exc}")

    def _check_status(self, status: int, body: str, adapter: str | None) -> None:
        if status < 400:
            return
        try:
            detail = json.loads(body).get("error", {})
            message = detail.get("message", body) if isinstance(detail, dict) else str(detail)
        except (ValueError, AttributeError):
            message = body
        message = " ".join(str(message).split())[:300]
        if status == 404 and adapter is not None:
            raise UnknownAdapter(f"adapter {adapter!r} is not served by {self.base_url}: {message}")
        if status >= 500 or status in (401, 403, 429):
            raise GeneratorUnavailable(f"generator server {self.base_url} answered HTTP {status}: {message}")
        raise ValueError(f"generator server {self.base_url} rejected the request (HTTP {status}): {message}")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.HTTPError as exc:
            raise self._fail(exc) from exc

    # --- models and adapters ---------------------------------------------------------------------
    def _list_models(self) -> list[dict[str, Any]]:
        with self._errors():
            response = self._client.get("/models")
        self._check_status(response.status_code, response.text, None)
        return list(response.json().get("data", []))

    @property
    def model(self) -> str:
        """The base model's name: configured, or the first (for vLLM: the base) model the server lists."""
        if self._model is None:
            models = self._list_models()
            if not models:
                raise GeneratorUnavailable(f"generator server {self.base_url} lists no models")
            self._model = str(models[0]["id"])
            self.name = f"openai:{self._model}@{self.base_url}"
        return self._model

    def adapters(self) -> list[str]:
        """Served LoRA adapters: vLLM marks them with a `parent`; otherwise every model but the base."""
        models = self._list_models()
        base = self.model
        if any("parent" in entry for entry in models):
            return sorted(str(entry["id"]) for entry in models if entry.get("parent"))
        return sorted(str(entry["id"]) for entry in models if entry["id"] != base)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Ask the server to load an adapter (vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).

        `path` must be readable by the server, which may be another machine.
        """
        check_adapter_name(name)
        with self._errors():
            response = self._client.post("/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
        if response.status_code in (404, 405):
            raise ValueError(
                f"generator server {self.base_url} cannot load adapters at run time "
                "(vLLM: start it with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or list the adapter in --lora-modules)"
            )
        self._check_status(response.status_code, response.text, None)

    # --- the context guard -----------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """An estimate (characters / 4): the server's tokenizer is not available here."""
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def fit_messages(self, messages: list[Message], max_new_tokens: int) -> list[Message]:
        return fit_messages(
            messages,
            max_new_tokens=max_new_tokens,
            context_length=self.context_length,
            count_prompt=lambda candidate: sum(
                self.count_tokens(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in candidate
            ),
        )

    # --- generation ------------------------------------------------------------------------------
    def _request(
        self,
        messages: list[Message],
        adapter: str | None,
        max_new_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        stop: Sequence[str] | None,
        stream: bool,
    ) -> dict[str, Any]:
        check_messages(messages)
        max_new = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if max_new < 1:
            raise ValueError(f"max_new_tokens={max_new}: must be at least 1")
        temp = self.temperature if temperature is None else temperature
        if temp < 0:
            raise ValueError(f"temperature={temp}: must be >= 0 (0 is greedy)")
        nucleus = self.top_p if top_p is None else top_p
        if not 0 < nucleus <= 1:
            raise ValueError(f"top_p={nucleus}: must be in (0, 1]")
        if adapter is not None:
            check_adapter_name(adapter)
        payload: dict[str, Any] = {
            "model": adapter or self.model,
            "messages": self.fit_messages(messages, max_new),
            "max_tokens": max_new,
            "temperature": temp,
            "top_p": nucleus,
            "stream": stream,
        }
        if stop:
            payload["stop"] = list(stop)
        if stream:
            payload["stream_options"] = {"include_usage": True}
        return payload

    @staticmethod
    def _parse_event(line: str) -> dict[str, Any] | None:
        """One SSE line to a chunk; None for keep-alives, comments and the final `[DONE]`."""
        if not line.startswith("data:"):
            return None
        data = line[5:].strip()
        if not data or data == "[DONE]":
            return None
        return json.loads(data)

    @staticmethod
    def _absorb(chunk: dict[str, Any], stats: StreamStats, stopper: StopFilter) -> str:
        usage = chunk.get("usage") or {}
        if usage:
            stats.prompt_tokens = int(usage.get("prompt_tokens", stats.prompt_tokens))
            stats.completion_tokens = int(usage.get("completion_tokens", stats.completion_tokens))
        text = ""
        for choice in chunk.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content") or ""
            if delta and not usage:
                stats.completion_tokens += 1
            text += stopper.feed(delta)
            if choice.get("finish_reason"):
                stats.finish_reason = "length" if choice["finish_reason"] == "length" else "stop"
        if stopper.stopped:
            stats.finish_reason = "stop"
        return text

    def stream(self, messages: list[Message], *, adapter: str | None = None, **options: Any) -> TokenStream:
        payload = self._request(messages, adapter, stream=True, **_options(options))
        stats = StreamStats(adapter=adapter)
        return TokenStream(self._stream(payload, adapter, stats), stats)

    def _stream(self, payload: dict[str, Any], adapter: str | None, stats: StreamStats) -> Iterator[str]:
        started = time.perf_counter()
        stopper = StopFilter(payload.get("stop"))
        try:
            with self._errors(), self._client.stream("POST", "/chat/completions", json=payload) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check_status(response.status_code, response.text, adapter)
                for line in response.iter_lines():
                    chunk = self._parse_event(line)
                    if chunk is None:
                        continue
                    text = self._absorb(chunk, stats, stopper)
                    if text:
                        stats.time_to_first_token_s = stats.time_to_first_token_s or time.perf_counter() - started
                        yield text
                    if stopper.stopped:
                        return
            tail = stopper.flush()
            if tail:
                yield tail
        finally:
            stats.seconds = time.perf_counter() - started

    def generate(self, messages: list[Message], *, adapter: str | None = None, **options: Any) -> GenerationResult:
        payload = self._request(messages, adapter, stream=False, **_options(options))
        started = time.perf_counter()
        with self._errors():
            response = self._client.post("/chat/completions", json=payload)
        self._check_status(response.status_code, response.text, adapter)
        body = response.json()
        choice = (body.get("choices") or [{}])[0]
        stopper = StopFilter(payload.get("stop"))
        text = stopper.feed((choice.get("message") or {}).get("content") or "") + stopper.flush()
        usage = body.get("usage") or {}
        stopped = stopper.stopped or choice.get("finish_reason") != "length"
        return GenerationResult(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            seconds=time.perf_counter() - started,
            time_to_first_token_s=None,
            finish_reason="stop" if stopped else "length",
        )


def _options(options: dict[str, Any]) -> dict[str, Any]:
    allowed = {"max_new_tokens", "temperature", "top_p", "stop"}
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(f"unexpected generation options: {', '.join(sorted(unknown))}")
    return {name: options.get(name) for name in allowed}
