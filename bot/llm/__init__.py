"""Text generation: a local transformers model with LoRA adapters, or an OpenAI-compatible server.

Both routes of the pipeline call `create_generator(settings)` and use the `Generator` interface;
`RagtuneChatModel` (in `bot.llm.chat_model`) wraps one as a LangChain chat model. Torch and
transformers are imported only when a local model is actually built.
"""

from __future__ import annotations

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
    """The remote backend when `openai_base_url` is set, else the local model with its adapters."""
    if settings.openai_base_url:
        from bot.llm.remote import RemoteGenerator

        return RemoteGenerator.from_settings(settings)
    from bot.llm.local import LocalGenerator

    return LocalGenerator.from_settings(settings)
