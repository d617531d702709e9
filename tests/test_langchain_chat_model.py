"""`RagtuneChatModel` under LangChain's standard chat model suites, on the real packaged generator (SmolLM2-135M,
offline, answers of a few tokens). Nothing asserts on wording; the suites check the LangChain contract.

Declared unsupported, as the suites' properties ask: tool calling, tool choice, structured output, JSON mode, image,
audio, PDF and video inputs, and a per-call `model` override (one model answers; skills are `adapter=`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from bot.config import load_settings
from bot.llm import create_generator
from bot.llm.chat_model import RagtuneChatModel

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHED_MODELS = REPO_ROOT / "test-artifacts" / "llm-home" / "models"  # de-quantised once, shared with other tests
NEW_TOKENS = 10  # per answer: enough to be non-empty, cheap on two shared cores


@pytest.fixture(scope="module")
def generator() -> Iterator[Any]:
    """The generator as the app builds it from settings, on a private home whose model cache is the tests' one."""
    home = Path(tempfile.mkdtemp(prefix="ragtune-lc-chat-", dir="/tmp"))
    CACHED_MODELS.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(CACHED_MODELS)
    settings = load_settings(
        home=home, device="cpu", generator_dtype="float32", generator_threads=1, max_new_tokens=NEW_TOKENS
    )
    try:
        yield create_generator(settings)
    finally:
        shutil.rmtree(home, ignore_errors=True)  # the symlink goes, the shared cache stays


class _Declared:
    """What RagtuneChatModel does and does not do, said once for both suites."""

    generator: Any = None

    @pytest.fixture(autouse=True)
    def _generator(self, generator: Any) -> None:
        type(self).generator = generator

    @property
    def chat_model_class(self) -> type[RagtuneChatModel]:
        return RagtuneChatModel

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False


class TestChatModelUnit(_Declared, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"generator": self.generator}


class TestChatModelIntegration(_Declared, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"generator": self.generator, "max_tokens": NEW_TOKENS}


def test_usage_finish_reason_and_refused_model_override(generator: Any) -> None:
    model = RagtuneChatModel(generator=generator, max_tokens=3)
    message = model.invoke([HumanMessage("Count from one to twenty.")])
    assert message.response_metadata["finish_reason"] == "length"
    assert message.usage_metadata["output_tokens"] == 3 and message.usage_metadata["input_tokens"] > 0
    assert message.response_metadata["model_name"] == generator.name
    streamed = None
    for chunk in RagtuneChatModel(generator=generator, streaming=True, max_tokens=3).stream("Count to twenty."):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.usage_metadata["output_tokens"] == 3 and streamed.response_metadata["finish_reason"] == "length"
    assert model._get_ls_params(model="other")["ls_model_name"] == "other"  # traces name what was asked for
    with pytest.raises(ValueError, match="adapter="):  # ... which is refused, not silently run on another model
        model.invoke("hello", model="other")
    assert model.invoke("hello", model=generator.name).content  # its own name is fine
