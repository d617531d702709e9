"""Finding and vetting LoRA adapter directories before they touch the shared base model.

peft reports a mismatched adapter late and messily (a size-mismatch traceback half-way through
injecting layers), so the tensor shapes are checked against the base model first: an adapter
trained on another base is refused with one line and the live model stays untouched.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


def check_adapter_name(name: str) -> str:
    if not isinstance(name, str) or not ADAPTER_NAME.match(name):
        raise ValueError(f"adapter name {name!r}: use 1-64 letters, digits, '-' or '_' (first a letter or digit)")
    return name


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """The adapter's peft config; ValueError when `path` is not a peft LoRA directory."""
    directory = Path(path).expanduser()
    config_file = directory / CONFIG_FILE
    if not directory.is_dir():
        raise ValueError(f"adapter {str(directory)!r}: no such directory")
    if not config_file.is_file():
        raise ValueError(f"adapter {str(directory)!r}: no {CONFIG_FILE} (not a peft adapter directory)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"adapter {str(directory)!r}: unreadable {CONFIG_FILE}: {exc}") from exc
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"adapter {str(directory)!r}: peft_type {config.get('peft_type')!r}, only LORA is supported")
    if not (directory / WEIGHTS_FILE).is_file() and not (directory / "adapter_model.bin").is_file():
        raise ValueError(f"adapter {str(directory)!r}: no {WEIGHTS_FILE}")
    return config


def find_adapter_dirs(root: Path) -> dict[str, Path]:
    """Every `<root>/<name>/` holding an adapter_config.json, by folder name."""
    if not root.is_dir():
        return {}
    return {child.name: child for child in sorted(root.iterdir()) if (child / CONFIG_FILE).is_file()}


def check_fits_base(model: Any, path: str | Path) -> None:
    """Raise ValueError unless every LoRA tensor in the adapter matches a layer of `model` in shape."""
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        return  # legacy .bin adapters: peft's own load is the check
    from safetensors import safe_open

    modules = dict(model.named_modules())
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            match = _LORA_KEY.match(key)
            if match is None or "lora_embedding" in key:
                continue
            module_name = match["module"]
            layer = modules.get(module_name)
            layer = getattr(layer, "base_layer", layer)
            if layer is None or not hasattr(layer, "in_features"):
                raise ValueError(
                    f"adapter {str(path)!r} was built on another base model: it adapts {module_name!r}, "
                    "which this model does not have"
                )
            shape = handle.get_slice(key).get_shape()
            expected, actual = (layer.in_features, shape[1]) if match["part"] == "A" else (layer.out_features, shape[0])
            if expected != actual:
                raise ValueError(
                    f"adapter {str(path)!r} was built on another base model: {module_name} has {expected} "
                    f"features here, the adapter expects {actual}"
                )
