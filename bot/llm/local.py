"""The local generator: one transformers base model in memory, any number of LoRA adapters on it.

Generation uses a hand-written decode loop over the model's KV cache instead of `model.generate`
plus `TextIteratorStreamer` in a background thread, because:
- it runs in the caller's thread, so stopping early (a stop sequence, a client that went away,
  `close()`) ends the work at once and releases the model; a `generate` thread runs on to
  `max_new_tokens` unless it is told through a stopping criterion it polls;
- stop sequences are cut from the text the caller sees, not merely detected after the fact;
- it has no per-token thread hand-off. The benchmark (`bench/bench_generation.py`) compares it with
  bare `model.generate`: greedy output is token-for-token identical (a test checks this).

Adapters are peft LoRA modules injected into the one base model; which one is active is global
state on that model, so each generation holds the model's lock from its first token to its last
and sets its own adapter (or disables all of them) inside it. Two requests never interleave on one
model: no request can see another's adapter. On two CPU cores, serialising costs nothing real.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bot.llm.adapters import check_adapter_name, check_fits_base, find_adapter_dirs, read_adapter_config
from bot.llm.context import FitsByRendering, Sampling, check_adapter, check_messages, resolve_sampling
from bot.llm.loading import LoadedModel, load_base_model
from bot.llm.streaming import FromStream, IncrementalDecoder, StopFilter, while_generating
from bot.llm.types import Message, StreamStats, TokenStream
from knowledge.cpu_share import default_threads

log = logging.getLogger(__name__)

# End-of-turn tokens of common chat templates; whichever the vocabulary has also ends generation.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")
DEFAULT_CONTEXT_LENGTH = 2048


class MissingChatTemplate(ValueError):
    """The model has no chat template and none is configured."""


def resolve_dtype(preference: str, device: str) -> str:
    """`auto`: bfloat16 where the hardware multiplies it natively, float32 elsewhere.

    Measured on this project's 2-core AVX2 machine: bf16 decodes faster (memory-bound) but a
    500-token prefill runs 100x slower (no bf16 matmul units: ~1 GFLOP/s against ~160 in fp32),
    which wrecks time-to-first-token for retrieval prompts. So CPU bf16 needs AVX512-BF16 or AMX.
    """
    if preference != "auto":
        return preference
    import torch

    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    cpu = getattr(torch._C, "_cpu", None)
    native_bf16 = cpu is not None and any(
        getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    return "bfloat16" if native_bf16 else "float32"


def _read_template(value: str) -> str:
    path = Path(value).expanduser()
    if "{" not in value and path.is_file():
        return path.read_text()
    return value


class LocalGenerator(FitsByRendering, FromStream):
    """Streams chat completions from a local causal LM with hot-swappable LoRA adapters."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        name: str | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        context_length: int | None = None,
        chat_template: str | None = None,
        threads: int | None = None,
    ) -> None:
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.loaded = loaded
        self.name = name or loaded.location.gguf_file or loaded.location.name_or_path
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.threads = default_threads(threads)
        if chat_template:
            self.tokenizer.chat_template = _read_template(chat_template)
        if not getattr(self.tokenizer, "chat_template", None):
            raise MissingChatTemplate(
                f"generator {self.name!r} has no chat template: set RAGTUNE_GENERATOR_CHAT_TEMPLATE to a Jinja "
                "template (or a file holding one), or use an instruction-tuned model"
            )
        model_limit = getattr(self.model.config, "max_position_embeddings", None) or DEFAULT_CONTEXT_LENGTH
        self.context_length = min(context_length or model_limit, model_limit)
        self.eos_token_ids = self._end_tokens()
        self._lock = threading.Lock()
        self._peft: Any = None
        self._adapter_paths: dict[str, Path] = {}

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Any) -> LocalGenerator:
        """Load `settings.generator_model` and every adapter under `settings.adapters_dir`."""
        from bot.llm.loading import pick_device

        device = pick_device(settings.device)
        dtype = resolve_dtype(getattr(settings, "generator_dtype", "auto"), device)
        loaded = load_base_model(settings.generator_model, settings.model_cache_dir, device=device, dtype=dtype)
        generator = cls(
            loaded,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            context_length=getattr(settings, "generator_context_length", None),
            chat_template=getattr(settings, "generator_chat_template", None),
            threads=getattr(settings, "generator_threads", None),
        )
        generator.load_adapters_from(settings.adapters_dir)
        return generator

    def load_adapters_from(self, root: Path) -> list[str]:
        """Attach every adapter directory under `root`; ones that do not fit this base are skipped with a warning."""
        loaded = []
        for name, path in find_adapter_dirs(Path(root)).items():
            try:
                self.load_adapter(name, path)
            except ValueError as exc:
                log.warning("skipping adapter %s: %s", name, exc)
            else:
                loaded.append(name)
        return loaded

    def _end_tokens(self) -> set[int]:
        ids: set[int] = set()
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for value in (configured, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list | tuple):
                ids.update(v for v in value if isinstance(v, int))
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[token] for token in END_OF_TURN_TOKENS if token in vocab)
        return ids

    # --- adapters --------------------------------------------------------------------------------
    def adapters(self) -> list[str]:
        return sorted(self._adapter_paths)

    def load_adapter(self, name: str, path: str | Path, *, replace: bool = False) -> None:
        """Attach a peft LoRA directory as `name` without reloading the base (waits for a running generation).

        ValueError for a bad name, a directory that is not a LoRA adapter, one built on another base model,
        or a name already taken (unless `replace`, which swaps in a retrained version).
        """
        check_adapter_name(name)
        directory = Path(path).expanduser().resolve()
        read_adapter_config(directory)
        check_fits_base(self.model, directory)
        from peft import PeftModel

        started = time.perf_counter()
        with self._lock:
            if name in self._adapter_paths:
                if not replace:
                    raise ValueError(f"adapter {name!r} is already loaded (from {self._adapter_paths[name]})")
                self._peft.delete_adapter(name)
                del self._adapter_paths[name]
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(self.model, str(directory), adapter_name=name)
                else:
                    self._peft.load_adapter(str(directory), adapter_name=name, is_trainable=False)
            except (RuntimeError, KeyError, ValueError, OSError) as exc:
                if self._peft is not None and name in getattr(self._peft, "peft_config", {}):
                    self._peft.delete_adapter(name)
                raise ValueError(f"adapter {str(directory)!r} could not be attached: {exc}") from exc
            self._peft.eval()
            self._adapter_paths[name] = directory
        log.info("adapter %s loaded from %s in %.2fs", name, directory, time.perf_counter() - started)

    @contextmanager
    def _using(self, adapter: str | None) -> Iterator[None]:
        """Activate exactly `adapter` (None: the bare base model). Caller holds the lock."""
        if self._peft is None:
            yield
        elif adapter is None:
            with self._peft.disable_adapter():
                yield
        else:
            self._peft.set_adapter(adapter, inference_mode=True)
            yield

    # --- prompts and the context guard -----------------------------------------------------------
    def render(self, messages: list[Message]) -> list[int]:
        """Token ids of the chat-templated prompt, ending with the assistant's turn opener."""
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

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
    ) -> TokenStream:
        """Text pieces as they are generated. Bad arguments raise here, before any model work.

        The oldest turns are dropped when the prompt would not fit (`fit_messages`); `.stats` on the
        returned stream holds token counts, time to first token and the finish reason.
        """
        check_messages(messages)
        check_adapter(adapter, self._adapter_paths)
        defaults = Sampling(self.max_new_tokens, self.temperature, self.top_p)
        sampling = resolve_sampling(defaults, self.context_length, max_new_tokens, temperature, top_p)
        prompt_ids = self.render(self.fit_messages(messages, sampling.max_new_tokens))
        stats = StreamStats(prompt_tokens=len(prompt_ids), adapter=adapter)
        pieces = self._decode(
            prompt_ids, adapter, sampling.max_new_tokens, sampling.temperature, sampling.top_p, list(stop or []), stats
        )
        return TokenStream(while_generating(pieces), stats)

    # One function on purpose (68 lines): it is the per-token hot loop, and its state (cache, logits, stop filter,
    # decoder, stats) stays in locals instead of being passed between helpers on every token.
    def _decode(
        self,
        prompt_ids: list[int],
        adapter: str | None,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str],
        stats: StreamStats,
    ) -> Iterator[str]:
        import torch
        from transformers import DynamicCache
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )

        started = time.perf_counter()
        warpers = LogitsProcessorList()
        if temperature > 0:
            warpers.append(TemperatureLogitsWarper(temperature))
            if top_p < 1:
                warpers.append(TopPLogitsWarper(top_p))
        decoder = IncrementalDecoder(self.tokenizer)
        stopper = StopFilter(stop)
        stats.finish_reason = "length"
        with self._lock, self._using(adapter):
            if self.device == "cpu" and torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)  # per calling thread; other code (the embedder) changes it
            try:
                cache = DynamicCache(config=self.model.config)
                input_ids = torch.tensor([prompt_ids], device=self.device)
                with torch.inference_mode():
                    logits = self.model(
                        input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1
                    ).logits[:, -1, :]
                for step in range(max_new_tokens):
                    with torch.inference_mode():
                        if warpers:
                            scores = warpers(input_ids, logits.float())
                            next_id = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)
                        else:
                            next_id = logits.argmax(dim=-1, keepdim=True)
                    token = int(next_id)
                    if token in self.eos_token_ids:
                        stats.finish_reason = "stop"
                        break
                    stats.completion_tokens += 1
                    text = stopper.feed(decoder.add(token))
                    if text:
                        if stats.time_to_first_token_s is None:
                            stats.time_to_first_token_s = time.perf_counter() - started
                        yield text
                    if stopper.stopped:
                        stats.finish_reason = "stop"
                        break
                    if step + 1 == max_new_tokens:
                        break
                    with torch.inference_mode():
                        logits = self.model(input_ids=next_id, past_key_values=cache, use_cache=True).logits[:, -1, :]
                tail = stopper.flush()
                if tail:
                    if stats.time_to_first_token_s is None:
                        stats.time_to_first_token_s = time.perf_counter() - started
                    yield tail
            finally:
                stats.seconds = time.perf_counter() - started
