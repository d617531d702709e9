"""OpenAI-compatible chat: `POST /v1/chat/completions` (JSON or SSE) and `GET /v1/models`.

Model "ragtune" (or "auto") lets the router decide; a route or adapter name forces it. ragtune keeps the
conversation itself: send `session_id` (body field or `X-Session-Id` header) to continue one; without it a new
session starts, seeded with the messages the client sent. Every answer carries a `ragtune` object with the
session, route, confidence, reason and sources.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
import uuid
from collections.abc import Iterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from bot.conversation import Token, TurnDone, TurnOptions, TurnStart
from bot.conversation.messages import MessageError, check_length
from bot.conversation.services import Services
from bot.conversation.turn import final_event
from bot.server.api.common import (
    SESSION_ID_PATTERN,
    ApiError,
    Body,
    OwnerDep,
    ServicesDep,
    check_session,
    collection_scope,
    error_body,
)
from bot.server.auth import redact
from knowledge.names import COLLECTION_NAME_PATTERN

log = logging.getLogger(__name__)
router = APIRouter()

AUTO_MODELS = ("ragtune", "auto")
# Longest system/developer text a client may add to ragtune's own instructions: a prompt that stays short on a small
# model (about 500 tokens), and room for a persona or a format rule.
MAX_CLIENT_INSTRUCTIONS_CHARS = 2000


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class ChatRequest(Body):
    model_config = ConfigDict(extra="allow")

    model: str = "ragtune"
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=8192)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1)
    session_id: str | None = Field(default=None, pattern=SESSION_ID_PATTERN)
    collection: str | None = Field(default=None, pattern=COLLECTION_NAME_PATTERN)

    def stops(self) -> list[str] | None:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s] or None


# OpenAI fields ragtune does not implement: refused with a 400 naming the field, never silently ignored. A field
# whose value is its OpenAI default (n=1, logprobs=false, response_format text, no tools) asks for nothing and passes.
NEUTRAL_VALUES: dict[str, tuple] = {
    "logprobs": (False, None),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None, True, False),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "seed": (None,),
    "user": None,  # any value: an end-user label for the provider's abuse monitoring, which ragtune has none of
    "metadata": None,
    "store": (None, False),
}


def _refuse_unsupported(body: ChatRequest) -> None:
    """400 for a request that asks for something ragtune cannot do (see NEUTRAL_VALUES and docs/api.md)."""
    if body.n not in (None, 1):
        raise ApiError(400, "n: only one choice per request is supported (n=1)", "unsupported_parameter", "n")
    for name, value in (body.model_extra or {}).items():
        if name == "response_format":
            continue
        if name not in NEUTRAL_VALUES:
            raise ApiError(
                400, f"{name}: not a parameter ragtune supports (docs/api.md lists them)", "unsupported_parameter", name
            )
        allowed = NEUTRAL_VALUES[name]
        if allowed is not None and value not in allowed:
            raise ApiError(400, f"{name}: not supported by ragtune (send it unset)", "unsupported_parameter", name)


def _response_format(body: ChatRequest, generator: Any) -> dict | None:
    """The JSON shape the answer must take, or None for text. Honoured where the generator constrains its output
    (llama.cpp compiles it to a grammar); elsewhere a 400, never free text under a JSON promise."""
    value = (body.model_extra or {}).get("response_format")
    if value in (None, {"type": "text"}):
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("json_object", "json_schema"):
        raise ApiError(
            400, "response_format: type must be text, json_object or json_schema", "invalid_request", "response_format"
        )
    if kind == "json_schema" and not isinstance((value.get("json_schema") or {}).get("schema"), dict):
        raise ApiError(
            400, "response_format: json_schema needs a json_schema.schema object", "invalid_request", "response_format"
        )
    if not getattr(generator, "structured_output", False):
        raise ApiError(
            400,
            "response_format: this generator cannot constrain its output (the llama.cpp backend can)",
            "unsupported_parameter",
            "response_format",
        )
    return value


def model_catalogue(services: Services) -> dict[str, TurnOptions]:
    """Model id → the options it forces. Routes and adapters are models."""
    models: dict[str, TurnOptions] = {name: TurnOptions() for name in AUTO_MODELS}
    models["knowledge"] = TurnOptions(route="knowledge")
    models["skill"] = TurnOptions(route="skill")
    for spec in services.conversation.routes():
        models[spec.name] = TurnOptions(route=spec.name)
    for adapter in services.conversation.adapters():
        models.setdefault(adapter, TurnOptions(adapter=adapter))
    return models


def turn_payload(event: TurnDone | TurnStart) -> dict[str, Any]:
    """The `ragtune` object of a response: the session, route, confidence, reason and sources of the turn."""
    data = {
        "session_id": event.session_id,
        "route": event.route,
        "action": event.action,
        "adapter": event.adapter,
        "confidence": event.confidence,
        "reason": event.reason,
        "sources": event.sources,
        "not_found": event.not_found,
    }
    if isinstance(event, TurnDone):
        data.update(turn=event.turn, timings=event.timings)
    return data


def _model(name: str, options: TurnOptions, created: int, serving: dict[str, Any] | None = None) -> dict[str, Any]:
    kind = "adapter" if options.adapter else "route" if options.route else "auto"
    entry = {"id": name, "object": "model", "created": created, "owned_by": "ragtune", "ragtune": kind}
    now = (serving or {}).get(options.route) if kind == "route" else None
    if now is not None:  # which adapter answers this route now (None: the base model), and why
        entry["adapter"], entry["adapter_source"] = now.adapter, now.source
    return entry


@router.get("/v1/models")
def list_models(services: ServicesDep, _: OwnerDep) -> dict:
    created, serving = int(time.time()), services.conversation.route_adapters()
    return {"object": "list", "data": [_model(n, o, created, serving) for n, o in model_catalogue(services).items()]}


@router.get("/v1/models/{model_id}")
def get_model(model_id: str, services: ServicesDep, _: OwnerDep) -> dict:
    options = model_catalogue(services).get(model_id)
    if options is None:
        raise ApiError(404, f"model {model_id[:100]!r}: unknown (GET /v1/models lists them)", "model_not_found")
    return _model(model_id, options, int(time.time()), services.conversation.route_adapters())


def _check_messages(body: ChatRequest, max_chars: int) -> ChatMessage:
    """The last message, once every message is a usable length and the last is a non-empty user message."""
    last = body.messages[-1]
    if last.role != "user" or not last.text().strip():
        raise ApiError(
            400, "messages: the last message must be a non-empty user message", "invalid_messages", "messages"
        )
    try:
        for i, message in enumerate(body.messages):
            check_length(message.text(), max_chars, f"messages[{i}]")
    except MessageError as exc:
        raise ApiError(400, str(exc), exc.code, "messages") from None
    return last


async def _session(services: Services, owner: str, body: ChatRequest, request: Request) -> str:
    """The session to continue (checked), or a new one holding the conversation the client sent, turn by turn, so
    that continuing it by id later sees the whole of it."""
    session_id = body.session_id or request.headers.get("x-session-id")
    if session_id:
        await run_in_threadpool(check_session, services, owner, session_id)
        return session_id
    session_id = await run_in_threadpool(services.memory.create_session, owner, "")
    await run_in_threadpool(_store_history, services, owner, session_id, body.messages[:-1])
    return session_id


def _store_history(services: Services, owner: str, session_id: str, messages: list[ChatMessage]) -> None:
    """The client's earlier user/assistant messages as stored turns (an unanswered question keeps an empty answer)."""
    question: str | None = None
    for message in messages:
        if message.role == "user":
            if question is not None:
                services.memory.save_turn(session_id, owner, question, "")
            question = message.text()
        elif message.role == "assistant":
            services.memory.save_turn(session_id, owner, question or "", message.text())
            question = None
    if question is not None:
        services.memory.save_turn(session_id, owner, question, "")


def _instructions(body: ChatRequest) -> str | None:
    """The client's system and developer messages, joined; 400 when longer than ragtune lets them be."""
    text = "\n".join(m.text().strip() for m in body.messages if m.role in ("system", "developer") and m.text().strip())
    if len(text) > MAX_CLIENT_INSTRUCTIONS_CHARS:
        raise ApiError(
            400,
            f"system/developer messages: {len(text)} characters, more than the "
            f"{MAX_CLIENT_INSTRUCTIONS_CHARS} ragtune adds to its instructions",
            "message_too_long",
            "messages",
        )
    return text or None


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatRequest, request: Request, services: ServicesDep, owner: OwnerDep
) -> JSONResponse | StreamingResponse:
    catalogue = model_catalogue(services)
    if body.model not in catalogue:
        raise ApiError(404, f"model {body.model!r}: unknown (GET /v1/models lists them)", "model_not_found", "model")
    _refuse_unsupported(body)
    last = _check_messages(body, services.settings.max_message_chars)
    base = catalogue[body.model]
    scope = await run_in_threadpool(collection_scope, services, owner, body.collection)
    options = TurnOptions(
        route=base.route,
        adapter=base.adapter,
        collection=scope,
        max_new_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stops(),
        instructions=_instructions(body),
        response_format=_response_format(body, services.generator),
    )
    session_id = await _session(services, owner, body, request)
    events = services.conversation.stream(session_id, owner, last.text(), options)
    try:  # routing and retrieval run before the response starts, so their errors are proper 4xx
        start = await run_in_threadpool(next, events)
    except ValueError as exc:
        raise ApiError(400, str(exc), "invalid_request") from None
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    headers = {"X-Session-Id": session_id}
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = _sse(events, start, completion_id, created, body.model, services.settings, usage)
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
    done = await run_in_threadpool(final_event, events)
    return JSONResponse(_completion(done, completion_id, created, body.model), headers=headers)


def _completion(done: TurnDone, completion_id: str, created: int, model: str) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": done.answer}, "finish_reason": done.finish_reason}
        ],
        "usage": done.usage,
        "ragtune": turn_payload(done),
    }


def _sse(
    events: Iterator,
    start: TurnStart,
    completion_id: str,
    created: int,
    model: str,
    settings: Any,
    include_usage: bool = False,
) -> Iterator[str]:
    """OpenAI's chunk stream; the first chunk carries the route and sources, the last the stored turn, then (when
    asked with stream_options.include_usage) a chunk with no choices and the usage."""

    def chunk(delta: dict | None, finish: str | None = None, extra: dict | None = None, usage: Any = None) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage
        if extra:
            body["ragtune"] = extra
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, extra=turn_payload(start))
    try:
        for event in events:  # the pipeline already cut any echo of the system prompt out of the tokens
            if isinstance(event, Token):
                yield chunk({"content": event.text})
            elif isinstance(event, TurnDone):
                yield chunk({}, event.finish_reason, turn_payload(event))
                if include_usage:
                    yield chunk(None, usage=event.usage)
    except Exception as exc:  # headers are sent: report in-band, as OpenAI servers do
        log.error("stream failed: %s", redact("".join(traceback.format_exception(exc)), settings))
        message = f"generation failed ({type(exc).__name__}); see the server log"
        yield f"data: {json.dumps(error_body(message, 'generation_failed', kind='server_error'))}\n\n"
    yield "data: [DONE]\n\n"
