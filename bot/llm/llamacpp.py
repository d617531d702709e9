"""The llama.cpp generator: the GGUF model served by llama.cpp's own server, inside this process (xllamacpp).

Chosen with `RAGTUNE_GENERATOR_BACKEND=llamacpp`. On this project's CPU it decodes several times faster
than transformers in fp32 and never imports torch or transformers. Requests run in parallel slots of the
server (continuous batching), so there is no model lock: each request names its own LoRA adapter, and
llama.cpp never batches two slots whose adapters differ.

How the pieces map onto llama.cpp:
- Generation goes through `Server.handle_chat_completions` with `stream: true`; that call blocks until the
  answer is done and hands each SSE chunk to a callback, so it runs in a worker thread that feeds a queue
  the caller's iterator reads. The callback's return value is llama.cpp's "stop" signal: once the caller
  closes the stream, the next chunk returns True and the server cancels the task and frees the slot.
- The server's `stop` strings are cut by llama.cpp itself, which holds back a partial match until the
  next token settles it, like `StopFilter`; `max_tokens`, `temperature`, `top_p` and `seed` are request
  fields. `top_k` and `min_p` are switched off so sampling is what the transformers path does.
- Adapters are GGUF LoRA files (converted once from the peft directory by `training.gguf_lora`) listed
  when the server starts. An empty or missing `lora` list means "every adapter at its load scale" to
  llama.cpp, not "the base model" (checked: with load scale 1 it ran all adapters at once), so they are
  registered at scale 0 and every request still sends the full list, 1 for its adapter and 0 for the
  rest. llama.cpp cannot add an adapter to a running server, so `load_adapter` starts a new server with
  the longer list (well under a second for the packaged model) and swaps it in; requests already
  running finish on the old one.
- Token counts are the server's own `usage`: when the model ends its answer, the end-of-turn token is
  counted (the transformers loop stops before counting it), so an answer that ends early reads one more.
- Prompt token counts (the context guard, `count_tokens`) come from the same server's `/apply-template`
  and `/tokenize`, which xllamacpp serves only over HTTP; it listens on a unix socket in a private
  directory with a random API key, so no TCP port is opened.
"""

from __future__ import annotations

import atexit
import logging
import queue
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.llm.adapters import check_adapter_name, find_adapter_dirs, read_adapter_config
from bot.llm.context import FitsByRendering, Sampling, check_adapter, check_messages, fit_messages, resolve_sampling
from bot.llm.local import _read_template
from bot.llm.streaming import FromStream, while_generating
from bot.llm.types import Message, StreamStats, TokenStream
from knowledge.cpu_share import default_threads

log = logging.getLogger(__name__)

DEFAULT_PARALLEL = 4  # slots; llama.cpp's own server default (`-np auto`)

# Requests being generated, as (cancel flag, worker thread). At interpreter exit a daemon thread still inside
# llama.cpp would be torn down in C++ code ("FATAL: exception not rethrown", an abort), so they are cancelled
# and joined first.
_RUNNING: set[tuple[threading.Event, threading.Thread]] = set()
_RUNNING_LOCK = threading.Lock()


@atexit.register
def _finish_running_requests(timeout_s: float = 5.0) -> None:
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for cancel, _ in running:
        cancel.set()
    deadline = time.monotonic() + timeout_s
    for _, worker in running:
        worker.join(timeout=max(0.0, deadline - time.monotonic()))


class LlamaCppUnavailable(RuntimeError):
    """This backend cannot serve the configured model here (xllamacpp missing, or the model is not a GGUF)."""


class LlamaCppError(RuntimeError):
    """llama.cpp refused or failed a request; the message is the server's."""


def _xllamacpp() -> Any:
    try:
        import xllamacpp
    except (ImportError, OSError) as exc:  # OSError: the wheel's libgomp.so.1 is missing
        raise LlamaCppUnavailable(f"xllamacpp cannot be imported ({exc}); install it and Debian's libgomp1") from exc
    return xllamacpp


@dataclass
class _Runtime:
    """One started server with its adapter ids and its HTTP side channel; replaced whole by `load_adapter`."""

    server: Any
    http: Any
    adapter_ids: dict[str, int] = field(default_factory=dict)


class LlamaCppGenerator(FitsByRendering, FromStream):
    """Streams chat completions from a GGUF model through in-process llama.cpp, with per-request LoRA adapters."""

    structured_output = True  # llama.cpp turns a response_format (JSON object or schema) into a sampling grammar

    def __init__(
        self,
        model_path: str | Path,
        *,
        name: str | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        context_length: int | None = None,
        chat_template: str | None = None,
        threads: int | None = None,
        batch_threads: int | None = None,
        parallel: int = DEFAULT_PARALLEL,
        cache_prompt: bool = True,
        adapters: dict[str, str | Path] | None = None,
        poll: int = 0,
    ) -> None:
        """Start the server with `adapters` (name -> peft dir or GGUF LoRA file) already listed.

        `cache_prompt=False` makes greedy output independent of earlier requests: reusing a slot's cached
        prompt changes llama.cpp's batch shapes and with them the last bits of the logits.

        Threads: decoding defaults to one thread and prompts (batches) to every core, with threads that sleep
        rather than spin while they wait (`poll=0`). Measured here (bench/bench_generation.py): a second
        decoding thread adds ~10% on an idle machine, but with one core busy elsewhere two threads fell to
        a third of one thread's rate, while a single thread kept its speed; prompt processing gains 2x from
        the second core and loses ~20% when that core is busy. `threads` sets both.
        """
        self._xlc = _xllamacpp()
        self.model_path = Path(model_path).expanduser().resolve()
        if self.model_path.suffix != ".gguf" or not self.model_path.is_file():
            raise LlamaCppUnavailable(f"{model_path}: llama.cpp needs a .gguf model file")
        self.name = name or self.model_path.name
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.threads = threads or 1
        self.batch_threads = batch_threads or threads or default_threads()
        self.parallel = parallel
        self.cache_prompt = cache_prompt
        self.poll = poll
        self._requested_context = context_length
        self._chat_template = _read_template(chat_template) if chat_template else None
        self._socket_dir = Path(tempfile.mkdtemp(prefix="ragtune-llama-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._socket_dir, True)
        self._starts = 0
        self._reload_lock = threading.Lock()
        self._adapter_files: dict[str, Path] = {}
        self._adapter_sources: dict[str, Path] = {}
        for adapter_name, path in (adapters or {}).items():
            source, gguf = self._convert(adapter_name, path, self.model_path)
            self._adapter_sources[adapter_name], self._adapter_files[adapter_name] = source, gguf
        started = time.perf_counter()
        self._runtime = self._start(self._adapter_files)
        http = self._runtime.http
        slot_context = int(_checked(http.get("/props"))["default_generation_settings"]["n_ctx"])
        trained = int(_checked(http.get("/v1/models"))["data"][0].get("meta", {}).get("n_ctx_train") or 0)
        self.context_length = min(slot_context, trained or slot_context)  # a larger setting cannot stretch the model
        log.info(
            "llama.cpp loaded %s in %.2fs (%d slots, %d/%d threads decode/prompt, %d-token context, adapters: %s)",
            self.name,
            time.perf_counter() - started,
            parallel,
            self.threads,
            self.batch_threads,
            self.context_length,
            ", ".join(self._adapter_files) or "none",
        )

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Any) -> LlamaCppGenerator:
        """The configured GGUF with every adapter under `settings.adapters_dir` (ones that do not fit are skipped)."""

        _xllamacpp()
        model_path = served_model(settings)
        adapters: dict[str, str | Path] = {}
        for adapter_name, path in find_adapter_dirs(Path(settings.adapters_dir)).items():
            try:
                cls._convert(adapter_name, path, model_path)
            except (ValueError, OSError) as exc:
                log.warning("skipping adapter %s: %s", adapter_name, exc)
            else:
                adapters[adapter_name] = path
        return cls(
            model_path,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            name=settings.generator_model,
            context_length=settings.generator_context_length,
            chat_template=settings.generator_chat_template,
            threads=settings.generator_threads,
            adapters=adapters,
        )

    @staticmethod
    def _convert(name: str, path: str | Path, model_path: Path) -> tuple[Path, Path]:
        """(source, GGUF LoRA file) for an adapter given as a peft directory or an already converted .gguf."""
        check_adapter_name(name)
        source = Path(path).expanduser().resolve()
        if source.suffix == ".gguf" and source.is_file():
            return source, source
        read_adapter_config(source)
        from training.gguf_lora import gguf_adapter

        return source, gguf_adapter(source, model_path)

    def _start(self, adapter_files: dict[str, Path]) -> _Runtime:
        """A new server for the model with `adapter_files` listed (ids in this order), all at scale 0 by default."""
        import httpx

        xlc = self._xlc
        self._starts += 1
        socket = self._socket_dir / f"server-{self._starts}.sock"
        key = secrets.token_urlsafe(24)
        params = xlc.CommonParams()
        params.model.path = str(self.model_path)
        params.n_parallel = self.parallel
        # One KV cache shared by the slots (llama.cpp's default with several slots): any one request may use
        # the whole context, and memory does not grow with the slot count.
        params.kv_unified = True
        params.n_ctx = self._requested_context or 0  # 0: the context the model was trained with
        # The KV cache stays f16 (llama.cpp's default). An 8-bit cache (with flash attention, which V needs) took
        # resident memory from ~394 to ~310 MB at the 8192-token context, but a 500-token prompt then took 1.2 s
        # to process instead of 0.75-0.86 s on this CPU: prompt time is what a person waits for.
        params.fit_params = False
        params.warmup = False
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.batch_threads
        params.cpuparams.poll = params.cpuparams_batch.poll = self.poll
        params.hostnames = [str(socket)]
        params.api_keys = [key]
        params.ui = False
        params.n_threads_http = 2
        params.verbosity = -1
        params.reasoning_format = xlc.common_reasoning_format.COMMON_REASONING_FORMAT_NONE
        if self._chat_template:
            params.chat_template = self._chat_template
        params.lora_adapters = [xlc.CommonAdapterLoraInfo(str(path), 0.0) for path in adapter_files.values()]
        params.lora_init_without_apply = True
        try:
            server = xlc.Server(params)
        except RuntimeError as exc:
            raise LlamaCppError(f"llama.cpp could not load {self.model_path.name}: {exc}") from exc
        http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket)),
            base_url="http://llama.cpp",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60.0,
        )
        return _Runtime(server, http, {name: index for index, name in enumerate(adapter_files)})

    # --- adapters --------------------------------------------------------------------------------
    def adapters(self) -> list[str]:
        return sorted(self._runtime.adapter_ids)

    def load_adapter(self, name: str, path: str | Path, *, replace: bool = False) -> None:
        """Convert (once, cached beside it) and attach a peft LoRA directory or GGUF LoRA file as `name`.

        ValueError for a bad name, a directory that is not a LoRA adapter, one built on another base model,
        or a name already taken (unless `replace`). Restarts the server with the new list (the base model
        is re-read from the page cache: under a second here); running requests finish on the old server, which
        is destroyed when the last of them lets go of it.
        """
        source, gguf = self._convert(name, path, self.model_path)
        started = time.perf_counter()
        with self._reload_lock:
            if name in self._adapter_files and not replace:
                raise ValueError(f"adapter {name!r} is already loaded (from {self._adapter_sources[name]})")
            files = {**self._adapter_files, name: gguf}
            self._runtime = self._start(files)
            self._adapter_files = files
            self._adapter_sources[name] = source
        log.info("adapter %s loaded from %s in %.2fs", name, source, time.perf_counter() - started)

    # --- prompts and the context guard -----------------------------------------------------------
    # Each call holds its `_Runtime` (not only its HTTP client) until it returns: `load_adapter` swaps in a new
    # server, and the old one is destroyed when its last holder lets go. Destroying it while a call was still
    # talking to it deadlocked (llama.cpp's destructor waited for the connection, the call for the server).
    def render(self, messages: list[Message]) -> list[int]:
        """Token ids of the chat-templated prompt exactly as the server builds it for a request."""
        runtime = self._runtime
        prompt = _checked(runtime.http.post("/apply-template", json={"messages": messages}))["prompt"]
        tokenized = runtime.http.post("/tokenize", json={"content": prompt, "add_special": True, "parse_special": True})
        return _checked(tokenized)["tokens"]

    def count_tokens(self, text: str) -> int:
        runtime = self._runtime
        return len(_checked(runtime.http.post("/tokenize", json={"content": text}))["tokens"])

    # --- generation ------------------------------------------------------------------------------
    def stream(
        self,
        messages: list[Message],
        *,
        adapter: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> TokenStream:
        """Text pieces as they are generated. Bad arguments raise here, before any model work.

        The oldest turns are dropped when the prompt would not fit (`fit_messages`); `.stats` on the
        returned stream holds token counts, time to first token and the finish reason.
        """
        check_messages(messages)
        runtime = self._runtime
        check_adapter(adapter, runtime.adapter_ids)
        defaults = Sampling(self.max_new_tokens, self.temperature, self.top_p)
        sampling = resolve_sampling(defaults, self.context_length, max_new_tokens, temperature, top_p)
        max_new, temp, nucleus = sampling.max_new_tokens, sampling.temperature, sampling.top_p
        counted: dict[int, int] = {}

        def count_prompt(candidate: list[Message]) -> int:
            counted[len(candidate)] = len(self.render(candidate))
            return counted[len(candidate)]

        fitted = fit_messages(
            messages, max_new_tokens=max_new, context_length=self.context_length, count_prompt=count_prompt
        )
        request = {
            "messages": fitted,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max_new,
            "temperature": temp,
            "top_p": nucleus,
            "top_k": 0,
            "min_p": 0.0,
            "stop": [s for s in (stop or []) if s],
            "cache_prompt": self.cache_prompt,
            "lora": [{"id": i, "scale": 1.0 if name == adapter else 0.0} for name, i in runtime.adapter_ids.items()],
        }
        if seed is not None:
            request["seed"] = seed
        if response_format is not None:  # OpenAI's form; llama.cpp compiles it to a grammar (bad schemas: its error)
            request["response_format"] = response_format
        prompt_tokens = counted.get(len(fitted)) or len(self.render(fitted))
        stats = StreamStats(prompt_tokens=prompt_tokens, adapter=adapter)
        return TokenStream(while_generating(self._pieces(runtime, request, stats)), stats)

    def _pieces(self, runtime: _Runtime, request: dict[str, Any], stats: StreamStats) -> Iterator[str]:
        chunks: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        cancel = threading.Event()

        def on_chunk(chunk: dict[str, Any]) -> bool:
            chunks.put(("chunk", chunk))
            return cancel.is_set()  # True: llama.cpp stops this task and frees its slot

        def run() -> None:
            try:
                runtime.server.handle_chat_completions(request, on_chunk)
            except BaseException as exc:  # handed to the reader, re-raised there
                chunks.put(("error", exc))
            finally:
                chunks.put(("done", None))

        started = time.perf_counter()
        stats.finish_reason = "length"
        pieces = 0
        worker = threading.Thread(target=run, name="ragtune-llamacpp", daemon=True)
        with _RUNNING_LOCK:
            _RUNNING.add((cancel, worker))
        worker.start()
        try:
            while True:
                kind, value = chunks.get()
                if kind == "done":
                    break
                if kind == "error":
                    raise LlamaCppError(f"llama.cpp failed: {value}") from value
                if "error" in value or "choices" not in value:
                    error = value.get("error", value)
                    message = error.get("message", error) if isinstance(error, dict) else error
                    raise LlamaCppError(f"llama.cpp refused the request: {message}")
                usage = value.get("usage")
                if usage:
                    stats.prompt_tokens = int(usage.get("prompt_tokens", stats.prompt_tokens))
                    stats.completion_tokens = int(usage.get("completion_tokens", pieces))
                for choice in value["choices"]:
                    if choice.get("finish_reason"):
                        stats.finish_reason = "stop" if choice["finish_reason"] == "stop" else "length"
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        pieces += 1
                        if not usage:
                            stats.completion_tokens = pieces  # until the final usage chunk says exactly
                        if stats.time_to_first_token_s is None:
                            stats.time_to_first_token_s = time.perf_counter() - started
                        yield text
        finally:
            cancel.set()
            with _RUNNING_LOCK:
                _RUNNING.discard((cancel, worker))
            stats.seconds = time.perf_counter() - started

    def close(self) -> None:
        """Stop the server (running requests end) and remove its socket directory."""
        with self._reload_lock:
            self._runtime.http.close()
            self._runtime = _Runtime(None, self._runtime.http, {})
        self._cleanup()


def served_model(settings: Any) -> Path:
    """The GGUF file llama.cpp serves for these settings: the configured model in `generator_quantization`,
    re-quantised into the model cache the first time (`ragtune models prepare` does that at set-up)."""
    from bot.llm.quantize import requantize
    from bot.llm.weights import locate_generator

    location = locate_generator(settings.generator_model, settings.model_cache_dir)
    if not location.gguf_file:
        raise LlamaCppUnavailable(f"generator_model={settings.generator_model!r} is not a GGUF file")
    source = Path(location.name_or_path) / location.gguf_file
    return requantize(source, settings.generator_quantization, Path(settings.model_cache_dir))


def _checked(response: Any) -> Any:
    if response.status_code != 200:
        raise LlamaCppError(f"llama.cpp {response.request.url.path}: {response.status_code} {response.text[:300]}")
    return response.json()
