"""Load the generator's base model and tokenizer, caching de-quantised GGUF weights as safetensors.

De-quantising the packaged GGUF takes ~17 s; the cached copy reloads in well under a second.
`save_pretrained` refuses a GGUF-loaded model until its quantizer bookkeeping is dropped, which
is done here once, right after the first load.

The cached copy is loaded without `from_pretrained`: the model is built on the meta device and the
safetensors tensors are assigned to it as they are (`_assign_cached_weights`). `from_pretrained`'s
weight-conversion machinery and initialisation cost more than reading the file; the result is the same
model with the same tensors (a test compares logits with `from_pretrained`'s).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.llm.weights import ModelLocation, locate_generator

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says which and why."""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    location: ModelLocation
    device: str
    load_seconds: float
    from_cache: bool


def pick_device(preference: str = "auto") -> str:
    import torch

    if preference == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device=cuda was requested but no CUDA device is available")
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference


def _cache_dir_for(location: ModelLocation, cache_root: Path) -> Path:
    source = Path(location.name_or_path) / (location.gguf_file or "")
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    return cache_root / "dequantised" / f"{Path(location.gguf_file).stem}-{key}"


def _load_pretrained(name_or_path: str, gguf_file: str | None, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **extra)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **extra)
    except OSError as exc:
        hint = " (offline: only local paths and cached models load)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise ModelLoadError(f"could not load generator {name_or_path!r}{hint}: {exc}") from exc
    return model, tokenizer


def _assign_cached_weights(directory: Path, dtype: Any) -> Any | None:
    """The model in `directory` (one `model.safetensors`) built on the meta device with the file's tensors
    assigned; None when this shortcut does not apply (sharded or missing weights, keys that do not match,
    a buffer it cannot rebuild), and the caller uses `from_pretrained`."""
    weights = directory / "model.safetensors"
    if not weights.is_file():
        return None
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(directory)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = load_file(str(weights))
    for key, tensor in state.items():
        if tensor.is_floating_point() and tensor.dtype != dtype:
            state[key] = tensor.to(dtype)
    result = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if result.unexpected_keys or set(result.missing_keys) - tied:
        log.info("cached weights do not match %s exactly; using from_pretrained", type(model).__name__)
        return None
    model.tie_weights()
    for module in model.modules():  # non-persistent buffers (rotary frequencies) are computed, not stored
        if any(buffer.is_meta for buffer in module.buffers(recurse=False)):
            try:
                rebuilt = type(module)(config=config)
            except TypeError:
                return None
            for name, buffer in rebuilt.named_buffers(recurse=False):
                setattr(module, name, buffer)
    if any(t.is_meta for t in model.parameters()) or any(t.is_meta for t in model.buffers()):
        return None
    if (directory / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(directory)
    return model


def _load_cached(directory: Path, dtype: Any) -> tuple[Any, Any]:
    model = _assign_cached_weights(directory, dtype)
    if model is None:
        return _load_pretrained(str(directory), None, dtype)
    from transformers import AutoTokenizer

    return model, AutoTokenizer.from_pretrained(directory)


def _save_cache(model: Any, tokenizer: Any, target: Path) -> None:
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def load_base_model(spec: str, cache_root: Path, *, device: str = "auto", dtype: str = "float32") -> LoadedModel:
    """Load `spec` (see `locate_generator`) on `device`; GGUF weights are cached under `cache_root`."""
    import torch

    started = time.perf_counter()
    location = locate_generator(spec, cache_root)
    torch_dtype = getattr(torch, dtype)
    from_cache = False
    if location.gguf_file:
        cached = _cache_dir_for(location, cache_root)
        if (cached / "config.json").is_file():
            model, tokenizer = _load_cached(cached, torch_dtype)
            from_cache = True
        else:
            log.info("de-quantising %s (first start only)", location.label)
            model, tokenizer = _load_pretrained(location.name_or_path, location.gguf_file, torch_dtype)
            try:
                _save_cache(model, tokenizer, cached)
            except OSError as exc:  # a read-only state dir only costs start-up time
                log.warning("could not cache de-quantised weights in %s: %s", cached, exc)
    else:
        model, tokenizer = _load_pretrained(location.name_or_path, None, torch_dtype)
    resolved_device = pick_device(device)
    model.to(resolved_device)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    elapsed = time.perf_counter() - started
    log.info("loaded %s on %s in %.1fs%s", location.label, resolved_device, elapsed, " (cached)" if from_cache else "")
    return LoadedModel(model, tokenizer, location, resolved_device, elapsed, from_cache)
