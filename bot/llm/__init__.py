"""Text generation: a local model (transformers or llama.cpp) with LoRA adapters, or an OpenAI-compatible server.

Both routes of the pipeline call `create_generator(settings)` and use the `Generator` interface;
`RagtuneChatModel` (in `bot.llm.chat_model`) wraps one as a LangChain chat model. Torch and
transformers are imported only when the transformers backend is actually built.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bot.llm.types import (
    ContextOverflow,
    GenerationResult,
    Generator,
    GeneratorUnavailable,
    StreamStats,
    TokenStream,
    UnknownAdapter,
)

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger(__name__)

__all__ = [
    "ContextOverflow",
    "GenerationResult",
    "Generator",
    "GeneratorUnavailable",
    "StreamStats",
    "TokenStream",
    "UnknownAdapter",
    "create_generator",
]


def create_generator(settings: Settings) -> Generator:
    """The remote backend when `openai_base_url` is set, else the local model with its adapters.

    The local model runs on `generator_backend`; llama.cpp that cannot serve here (xllamacpp or libgomp
    missing, a model that is not a GGUF) falls back to transformers with one warning saying why.
    """
    if settings.openai_base_url:
        from bot.llm.remote import RemoteGenerator

        return RemoteGenerator.from_settings(settings)
    if settings.generator_backend == "llamacpp":
        from bot.llm.llamacpp import LlamaCppGenerator, LlamaCppUnavailable

        try:
            return LlamaCppGenerator.from_settings(settings)
        except LlamaCppUnavailable as exc:
            log.warning("generator_backend=llamacpp unavailable, using transformers instead: %s", exc)
    from bot.llm.local import LocalGenerator

    return LocalGenerator.from_settings(settings)
