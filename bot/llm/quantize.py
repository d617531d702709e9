"""Re-quantise a GGUF model's weights into another llama.cpp block format, written beside the state dir.

Why: the packaged SmolLM2 file is Q4_1, and llama.cpp's CPU kernels are not equally fast for every block
format (see docs/configuration.md for the measured speed and quality of each). llama.cpp's own `quantize`
tool is a C++ build that does not ship in the xllamacpp wheel, so the conversion is written here on the
`gguf` package's reader, block codecs and writer: every tensor already in a block format is de-quantised
and quantised again into the target; float tensors (norms) and the tensors the source kept at 8 bits
(the embeddings) stay as they are. Metadata is copied, with `general.file_type` set to the new format.

The result is a function of the source file and the format only, so it is cached under a name that
carries both, written to a temporary name first and renamed, so an interrupted run leaves nothing half
written.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Literal, get_args

log = logging.getLogger(__name__)

Quantization = Literal["as-packaged", "q8_0", "q4_1", "q4_0"]

# llama.cpp's LLAMA_FTYPE values for `general.file_type` (llama.h), for the formats offered here.
_FILE_TYPES = {"q4_0": 2, "q4_1": 3, "q8_0": 7}
# Tensors quantised to fewer bits than this keep being re-quantised; 8-bit ones (embeddings) are kept.
_KEEP_TYPES = ("Q8_0", "F32", "F16", "BF16")


def quantized_path(source: Path, quantization: str, cache_dir: Path) -> Path:
    """Where the `quantization` copy of `source` lives (or will), keyed by the source's identity."""
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    return cache_dir / "gguf" / f"{source.stem.split('.')[0]}-{key}.{quantization.upper()}.gguf"


def requantize(source: Path, quantization: str, cache_dir: Path) -> Path:
    """`source` with its block-quantised tensors in `quantization`; the source itself for `as-packaged`.

    Cached: a second call returns the existing file at once. ValueError for a format not offered here.
    """
    if quantization == "as-packaged":
        return source
    if quantization not in _FILE_TYPES:
        raise ValueError(f"quantization {quantization!r}: expected one of {', '.join(get_args(Quantization))}")
    target = quantized_path(source, quantization, cache_dir)
    if target.is_file():
        return target
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(source))
    if _file_type(reader) == _FILE_TYPES[quantization]:
        return source
    wanted = gguf.GGMLQuantizationType[quantization.upper()]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".{os.getpid()}.part")
    architecture = str(reader.get_field(gguf.Keys.General.ARCHITECTURE).contents())
    writer = gguf.GGUFWriter(str(partial), architecture)
    try:
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue  # written by GGUFWriter itself
            kind = field.types[0]
            value = _FILE_TYPES[quantization] if field.name == gguf.Keys.General.FILE_TYPE else field.contents()
            sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, value, kind, sub_type=sub_type)
        for tensor in reader.tensors:
            if tensor.tensor_type.name in _KEEP_TYPES:
                writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
                continue
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            writer.add_tensor(tensor.name, gguf.quants.quantize(values, wanted), raw_dtype=wanted)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    log.debug("wrote %s (%.0f MB)", target.name, target.stat().st_size / 1e6)
    return target


def _file_type(reader: object) -> int | None:
    import gguf

    field = reader.get_field(gguf.Keys.General.FILE_TYPE)  # type: ignore[attr-defined]
    return int(field.contents()) if field is not None else None
