"""A LangChain chat model over any ragtune `Generator`, so the pipeline is built from runnables.

`langchain-huggingface`'s `ChatHuggingFace` wraps a pipeline without per-request LoRA adapters or
a remote fallback, so this thin `BaseChatModel` delegates to our generator instead. The adapter can
be fixed on the model (`RagtuneChatModel(generator=g, adapter="support")`) or chosen per call
(`model.invoke(messages, adapter="support")`, or `.bind(adapter=...)`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ChatMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from bot.llm.streaming import iterate_in_thread
from bot.llm.types import Generator, Message

_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}


def to_chat_messages(messages: Sequence[BaseMessage]) -> list[Message]:
    """LangChain messages to the `{"role", "content"}` dicts generators take."""
    converted = []
    for message in messages:
        role = message.role if isinstance(message, ChatMessage) else _ROLES.get(message.type)
        if role is None:
            raise ValueError(f"message type {message.type!r} is not supported by the generator")
        content = message.content if isinstance(message.content, str) else message.text
        converted.append({"role": role, "content": content})
    return converted


class RagtuneChatModel(BaseChatModel):
    """`BaseChatModel` over a ragtune `Generator` (local with adapters, or remote)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    generator: Any = Field(description="A bot.llm Generator (LocalGenerator or RemoteGenerator).")
    adapter: str | None = None
    max_new_tokens: int | None = None
    max_tokens: int | None = Field(default=None, description="LangChain's standard name for max_new_tokens.")
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    streaming: bool = Field(default=False, description="invoke() streams underneath, so callbacks see each token.")

    @property
    def _llm_type(self) -> str:
        return "ragtune"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"generator": getattr(self.generator, "name", "?"), "adapter": self.adapter}

    @property
    def model_name(self) -> str:
        return str(getattr(self.generator, "name", "ragtune"))

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        """LangSmith's standard tracing parameters (model name, length, temperature, stop)."""
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "ragtune"
        params["ls_model_name"] = kwargs.get("model") or self.model_name
        options = self._options(stop, {name: value for name, value in kwargs.items() if name != "model"})
        if options["max_new_tokens"] is not None:
            params["ls_max_tokens"] = options["max_new_tokens"]
        if options["temperature"] is not None:
            params["ls_temperature"] = options["temperature"]
        if options["stop"]:
            params["ls_stop"] = options["stop"]
        return params

    def _options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The generator's arguments for one call. A per-call `model` other than the generator's is refused: one
        model answers (pick a LoRA skill with `adapter=`), and a silently ignored override would mislabel traces."""
        requested = kwargs.get("model")
        if requested not in (None, self.model_name):
            raise ValueError(
                f"model {requested!r}: this chat model runs {self.model_name!r} only (choose a skill with adapter=)"
            )
        merged_stop = list(self.stop or []) + list(stop or []) + list(kwargs.get("stop") or [])
        length = kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens or self.max_tokens))
        return {
            "adapter": kwargs.get("adapter", self.adapter),
            "max_new_tokens": length,
            "temperature": kwargs.get("temperature", self.temperature),
            "top_p": kwargs.get("top_p", self.top_p),
            "stop": merged_stop or None,
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        generator: Generator = self.generator
        options = self._options(stop, kwargs)
        result = generator.generate(to_chat_messages(messages), **options)
        message = AIMessage(
            content=result.text,
            response_metadata={
                "finish_reason": result.finish_reason,
                "adapter": options["adapter"],
                "seconds": result.seconds,
                "time_to_first_token_s": result.time_to_first_token_s,
                "model_name": getattr(generator, "name", None),
            },
            usage_metadata={
                "input_tokens": result.prompt_tokens,
                "output_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens,
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        options = self._options(stop, kwargs)
        pieces = self.generator.stream(to_chat_messages(messages), **options)
        try:
            for piece in pieces:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
        stats = getattr(pieces, "stats", None)
        if stats is not None:
            yield self._last_chunk(stats, options)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        options = self._options(stop, kwargs)
        token_stream = self.generator.stream(to_chat_messages(messages), **options)
        async for piece in iterate_in_thread(lambda: token_stream):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        stats = getattr(token_stream, "stats", None)
        if stats is not None:
            yield self._last_chunk(stats, options)

    def _last_chunk(self, stats: Any, options: dict[str, Any]) -> ChatGenerationChunk:
        """The stream's closing chunk: finish reason, model name and token usage, as LangChain expects them."""
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                chunk_position="last",
                response_metadata={
                    "finish_reason": stats.finish_reason,
                    "adapter": options["adapter"],
                    "model_name": self.model_name,
                },
                usage_metadata={
                    "input_tokens": stats.prompt_tokens,
                    "output_tokens": stats.completion_tokens,
                    "total_tokens": stats.prompt_tokens + stats.completion_tokens,
                },
            )
        )
