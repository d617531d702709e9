"""Turn a peft LoRA adapter directory into a GGUF LoRA file that llama.cpp loads beside its base GGUF.

Written here on the `gguf` package's writer rather than by running llama.cpp's `convert_lora_to_gguf.py`:
that script imports torch, transformers and llama.cpp's whole `convert_hf_to_gguf` module and needs the
base model's Hugging Face `config.json` (which a GGUF-loaded transformers model saves with
`architectures: null`). Everything the conversion needs is in the base GGUF itself: the architecture,
the head counts for llama's q/k row order, and each base tensor's shape, so every LoRA tensor is checked
against the weight it adapts before a file is written. numpy only, so the serving process converts an
adapter without importing torch.

What llama.cpp expects (as its own converter writes it): `general.type = adapter`,
`adapter.type = lora`, `adapter.lora.alpha`, and per adapted weight `<gguf name>.lora_a` (rank x in)
and `<gguf name>.lora_b` (out x rank). llama.cpp scales each pair by `alpha / rank`; peft variants that
scale otherwise (rsLoRA, per-module `alpha_pattern`) get the difference folded into `lora_b`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
GGUF_FILE = "adapter.gguf"
BASE_KEY = "ragtune.base_model"  # which base GGUF the cached file was converted for
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")
# Architectures whose HF q/k rows llama.cpp's converter permutes (rotary pairs interleaved, not halves),
# and the ones it stores as they are. Others are refused: a wrong row order would convert "fine" and
# silently break the adapter.
_QK_PERMUTED = {"llama"}
_QK_AS_IS = {"qwen2", "qwen3"}
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


class AdapterConversionError(ValueError):
    """The adapter cannot become a GGUF LoRA for this base; the message says which tensor and why."""


@dataclass(frozen=True)
class GGUFBase:
    """What the conversion needs from the base GGUF: architecture, layer and head counts, tensor shapes."""

    path: Path
    arch: str
    block_count: int
    head_count: int
    head_count_kv: int
    shapes: dict[str, tuple[int, int]]  # GGUF name -> (out_features, in_features)

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.path)


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}"


def read_base(path: str | Path) -> GGUFBase:
    """Read the base model's metadata and tensor shapes (about 2 s for the packaged model, so cached)."""
    resolved = Path(path).expanduser().resolve()
    return _read_base(resolved, _fingerprint(resolved))


@lru_cache(maxsize=4)
def _read_base(path: Path, fingerprint: str) -> GGUFBase:
    import gguf

    reader = gguf.GGUFReader(path)

    def field(key: str, default: Any = None) -> Any:
        found = reader.fields.get(key)
        return default if found is None else found.contents()

    arch = field("general.architecture")
    if not arch:
        raise AdapterConversionError(f"{path}: not a GGUF model (no general.architecture)")
    head_count = int(field(f"{arch}.attention.head_count", 0))
    shapes = {
        tensor.name: (int(tensor.shape[1]), int(tensor.shape[0]))  # GGUF lists ne0 (in) first
        for tensor in reader.tensors
        if len(tensor.shape) == 2
    }
    return GGUFBase(
        path=path,
        arch=arch,
        block_count=int(field(f"{arch}.block_count", 0)),
        head_count=head_count,
        head_count_kv=int(field(f"{arch}.attention.head_count_kv", head_count)),
        shapes=shapes,
    )


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as float32 numpy arrays.

    Hand-written (the format is an 8-byte length, a JSON header and raw little-endian data) because
    `safetensors.numpy` cannot read bfloat16, numpy having no such dtype, and torch stays out of here.
    """
    with path.open("rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_size))
        data = handle.read()
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[start:end]
        dtype = info["dtype"]
        if dtype == "BF16":  # the upper half of a float32
            values = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dtype in _SAFETENSORS_DTYPES:
            values = np.frombuffer(raw, dtype=np.dtype(_SAFETENSORS_DTYPES[dtype]).newbyteorder("<"))
        else:
            raise AdapterConversionError(f"{path}: tensor {name} has dtype {dtype}, expected a float type")
        tensors[name] = values.astype(np.float32).reshape(info["shape"])
    return tensors


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's rule for `rank_pattern` / `alpha_pattern`: a key matches a module name's dotted suffix."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _permute_rows(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order: each head's rotary halves interleaved (its converter's `permute`)."""
    out = rows.shape[0]
    return rows.reshape(heads, 2, out // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _gguf_name(base: GGUFBase, module: str) -> str:
    import gguf

    arch_ids = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
    if base.arch not in arch_ids:
        raise AdapterConversionError(f"base architecture {base.arch!r} is unknown to the gguf package")
    name = gguf.get_tensor_name_map(arch_ids[base.arch], base.block_count).get_name(module)
    if name is None:
        raise AdapterConversionError(f"the adapter adapts {module!r}, which has no GGUF name for {base.arch}")
    return name + ".weight"


def convert_adapter(adapter_dir: str | Path, base: GGUFBase | str | Path, output: str | Path | None = None) -> Path:
    """Write the GGUF LoRA for the peft adapter in `adapter_dir` (default: `<adapter_dir>/adapter.gguf`).

    AdapterConversionError when the adapter is not a plain LoRA on Linear layers of this base (DoRA,
    embedding LoRA, LoRA biases, another architecture, or a shape that does not match the base weight).
    """
    import gguf

    directory = Path(adapter_dir).expanduser()
    if not isinstance(base, GGUFBase):
        base = read_base(base)
    config = _adapter_config(directory, base)
    pairs = _lora_pairs(directory)
    target = Path(output) if output is not None else directory / GGUF_FILE
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    writer = gguf.GGUFWriter(str(partial), arch=base.arch)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config.get("lora_alpha", 8)))
        writer.add_string(BASE_KEY, base.fingerprint)
        for name, lora_a, lora_b in _gguf_tensors(directory, base, config, pairs):
            writer.add_tensor(name + ".lora_a", np.ascontiguousarray(lora_a, dtype=np.float32))
            writer.add_tensor(name + ".lora_b", np.ascontiguousarray(lora_b, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(partial, target)
    log.info("converted adapter %s to %s (%d LoRA pairs)", directory, target, len(pairs))
    return target


def _adapter_config(directory: Path, base: GGUFBase) -> dict:
    """The adapter's peft config, refused unless it is a plain LoRA this converter can write for `base`."""
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise AdapterConversionError(f"{directory}: needs {CONFIG_FILE} and {WEIGHTS_FILE} (a peft LoRA directory)")
    config = json.loads(config_path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterConversionError(f"{directory}: peft_type {config.get('peft_type')!r}, only LORA converts")
    for flag, what in (("use_dora", "DoRA"), ("lora_bias", "LoRA biases")):
        if config.get(flag):
            raise AdapterConversionError(f"{directory}: {what} ({flag}=true) has no GGUF LoRA form")
    if base.arch not in _QK_PERMUTED | _QK_AS_IS:
        raise AdapterConversionError(
            f"base architecture {base.arch!r}: the GGUF converter supports {sorted(_QK_PERMUTED | _QK_AS_IS)}"
        )
    return config


def _lora_pairs(directory: Path) -> dict[str, dict[str, np.ndarray]]:
    """Module name → {"A": lora_A, "B": lora_B} from the adapter's safetensors."""
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in read_safetensors(directory / WEIGHTS_FILE).items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise AdapterConversionError(f"{directory}: tensor {key!r} is not a LoRA A/B weight (embedding LoRA?)")
        pairs.setdefault(match["module"], {})[match["part"]] = tensor
    if not pairs:
        raise AdapterConversionError(f"{directory}: no LoRA tensors in {WEIGHTS_FILE}")
    return pairs


def _gguf_tensors(directory: Path, base: GGUFBase, config: dict, pairs: dict[str, dict[str, np.ndarray]]):
    """(GGUF base tensor name, lora_a, lora_b) per adapted module: shapes checked, peft's scale folded into B
    where it differs from llama.cpp's alpha/rank, and q/k rows in llama.cpp's order."""
    alpha = float(config.get("lora_alpha", 8))
    alpha_pattern = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora"))
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise AdapterConversionError(f"{directory}: {module} lacks its lora_{'B' if 'A' in pair else 'A'}")
        lora_a, lora_b = pair["A"], pair["B"]
        name = _gguf_name(base, module.removeprefix("base_model.model."))
        if name not in base.shapes:
            raise AdapterConversionError(f"{directory}: adapts {name}, which the base GGUF does not have")
        out_features, in_features = base.shapes[name]
        rank = lora_a.shape[0]
        if lora_a.shape != (rank, in_features) or lora_b.shape != (out_features, rank):
            raise AdapterConversionError(
                f"{directory}: {module} is A{tuple(lora_a.shape)} B{tuple(lora_b.shape)}, but {name} is "
                f"{out_features}x{in_features} (an adapter for another base model)"
            )
        module_alpha = float(_pattern_value(alpha_pattern, module, alpha))
        peft_scale = module_alpha / (rank**0.5 if rslora else rank)
        llama_scale = alpha / rank if alpha else 1.0
        if peft_scale != llama_scale:
            lora_b = lora_b * (peft_scale / llama_scale)
        if base.arch in _QK_PERMUTED and name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = base.head_count if name.endswith("attn_q.weight") else base.head_count_kv
            lora_b = _permute_rows(lora_b, heads)
        yield name, lora_a, lora_b


def _converted_for(path: Path) -> str | None:
    import gguf

    try:
        field = gguf.GGUFReader(path).fields.get(BASE_KEY)
    except (OSError, ValueError):
        return None
    return None if field is None else str(field.contents())


def gguf_adapter(adapter_dir: str | Path, base_gguf: str | Path) -> Path:
    """The adapter's GGUF LoRA beside it, converted now if missing, older than its weights, or made for another base."""
    directory = Path(adapter_dir).expanduser()
    base_path = Path(base_gguf).expanduser().resolve()
    target = directory / GGUF_FILE
    sources = [directory / CONFIG_FILE, directory / WEIGHTS_FILE]
    if (
        target.is_file()
        and all(source.is_file() and source.stat().st_mtime <= target.stat().st_mtime for source in sources)
        and _converted_for(target) == _fingerprint(base_path)
    ):
        return target
    return convert_adapter(directory, read_base(base_path), target)
