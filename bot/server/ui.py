"""The Gradio chat: streaming answers with a route badge and expandable sources, uploads, pickers, sessions.

Everything shown comes from the shared memory, so resuming a session (or restarting the app) redraws the
same badges and sources. The owner of the sessions is the portal's trusted header, the login, or the
local user of an open install.
"""

from __future__ import annotations

import contextlib
import html
import logging
import re
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from bot.conversation import Token, TurnDone, TurnOptions, TurnStart, badge_text
from bot.conversation.messages import MessageError, clean_message
from bot.conversation.services import Services
from bot.memory import SessionNotFound, StoredMessage
from bot.server.auth import may_use_collection, readable_collections, redact, ui_owner
from bot.server.uploads import UploadRefused, ingest_uploads, upload_collection

log = logging.getLogger(__name__)

AUTO = "auto (router decides)"
ALL_COLLECTIONS = "all collections"

CSS = """
.rt-badge {display:inline-block;padding:1px 8px;border-radius:10px;font-size:0.8em;margin-bottom:4px;
  background:#e8eefc;color:#1d3a8a;border:1px solid #b9c8f2}
.rt-badge.rt-skill {background:#eaf7ee;color:#17623a;border-color:#b5e0c4}
.rt-badge.rt-notfound {background:#fdf1e6;color:#8a4b12;border-color:#f0cfa9}
"""


def badge_html(route: str, action: str, confidence: float, reason: str, adapter: str | None, not_found: bool) -> str:
    """The route badge; the router's full reason is stored with the turn, the badge shows its first clause."""
    kind = "rt-notfound" if not_found else f"rt-{action}"
    text = html.escape(badge_text(route, confidence or 0.0, short_reason(reason or ""), adapter))
    route_class = "rt-route-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in route)
    return f'<span class="rt-badge {kind} {route_class}">{text}</span>'


def short_reason(reason: str, limit: int = 110) -> str:
    first = reason.split(". ", 1)[0].strip()
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


_MARKDOWN = re.compile(r"([\\`*_#\[\]<>|~])")


def plain(text: str) -> str:
    """Document text shown as text: its markdown (headings, emphasis) and HTML are escaped, not rendered."""
    return _MARKDOWN.sub(r"\\\1", text)


def sources_markdown(sources: list[dict[str, Any]]) -> str:
    lines = []
    for s in sources:
        page = f", page {s['page']}" if s.get("page") else ""
        title = plain(s.get("title") or s.get("source") or "document")
        quoted = " … ".join(q["text"] for q in s.get("quotes") or [])
        snippet = plain(quoted or s.get("snippet", ""))
        lines.append(f"**\\[{s['n']}\\] {title}**{page} · score {s.get('score', 0):.2f}  \n> {snippet}")
    return "\n\n".join(lines)


def answer_messages(answer: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """An answer as chat messages: badge + text, then a collapsed 'Sources' box when there are sources."""
    badge = badge_html(
        meta["route"],
        meta.get("action") or "knowledge",
        meta.get("confidence") or 0.0,
        meta.get("reason") or "",
        meta.get("adapter"),
        meta.get("not_found", False),
    )
    out = [{"role": "assistant", "content": f"{badge}\n\n{answer}"}]
    if meta.get("sources"):
        out.append(
            {
                "role": "assistant",
                "content": sources_markdown(meta["sources"]),
                "metadata": {"title": f"Sources ({len(meta['sources'])})", "status": "done"},
            }
        )
    return out


def _guessed_action(message: StoredMessage) -> str:
    """The action of an answer stored before migration 0005 recorded it."""
    reworded = message.route and message.route != "knowledge" and not message.sources
    return "skill" if message.adapter or reworded else "knowledge"


def history_from_memory(messages: list[StoredMessage]) -> list[dict[str, Any]]:
    chat: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "user":
            chat.append({"role": "user", "content": m.content})
        elif m.role == "assistant":
            action = m.action or _guessed_action(m)
            meta = {
                "route": m.route or "?",
                "action": action,
                "confidence": m.confidence,
                "reason": m.reason,
                "adapter": m.adapter,
                "sources": m.sources,
                "not_found": False,
            }
            chat.extend(answer_messages(m.content, meta))
    return chat


def build_ui(services: Services) -> gr.Blocks:
    settings = services.settings
    memory = services.memory
    conversation = services.conversation

    def owner_of(request: gr.Request | None) -> str:
        if request is None:
            return "local"
        headers = dict(request.headers) if request.headers else {}
        return ui_owner(getattr(request, "username", None), headers, settings)

    def session_choices(owner: str) -> list[tuple[str, str]]:
        return [(f"{s.title or 'new conversation'} ({s.turns})", s.id) for s in memory.list_sessions(owner)]

    def all_collections() -> list[str]:
        try:
            return [getattr(c, "name", str(c)) for c in services.store.list_collections()]
        except Exception:  # the store is optional in a degraded start
            return []

    def collection_choices(owner: str) -> list[str]:
        return [ALL_COLLECTIONS, *(n for n in all_collections() if may_use_collection(owner, n, settings))]

    def on_load(request: gr.Request):
        owner = owner_of(request)
        return (
            gr.update(choices=session_choices(owner), value=None),
            gr.update(choices=[AUTO, *conversation.adapters()], value=AUTO),
            gr.update(choices=collection_choices(owner), value=ALL_COLLECTIONS),
        )

    def new_session(request: gr.Request):
        return None, [], gr.update(choices=session_choices(owner_of(request)), value=None)

    def resume(session_id: str | None, request: gr.Request):
        if not session_id:
            return None, []
        try:
            return session_id, history_from_memory(memory.messages(session_id, owner_of(request)))
        except SessionNotFound:
            gr.Warning("That conversation no longer exists.")
            return None, []

    def delete(session_id: str | None, request: gr.Request):
        owner = owner_of(request)
        if session_id:
            with contextlib.suppress(SessionNotFound):
                memory.delete_session(session_id, owner)
        return None, [], gr.update(choices=session_choices(owner), value=None)

    def respond(
        message: str, session_id: str | None, adapter: str, collection: str, chat: list, request: gr.Request
    ) -> Iterator[tuple]:
        owner = owner_of(request)
        try:
            message = clean_message(message, settings.max_message_chars)
        except MessageError as exc:
            if exc.code != "empty_message":
                gr.Warning(f"{exc}.")
            yield chat, "" if exc.code == "empty_message" else message, session_id, gr.update()
            return
        if not session_id:
            session_id = memory.create_session(owner)
        wanted = None if collection in (None, ALL_COLLECTIONS) else collection
        try:
            scope = readable_collections(
                owner, wanted, all_collections() if settings.restricted_collections else [], settings
            )
        except LookupError:
            gr.Warning(f"Collection {wanted!r} not found.")
            yield chat, message, session_id, gr.update()
            return
        options = TurnOptions(adapter=None if adapter in (None, AUTO) else adapter, collection=scope)
        chat = [*chat, {"role": "user", "content": message}]
        yield chat, "", session_id, gr.update()
        answer, meta = "", None
        try:
            for event in conversation.stream(session_id, owner, message, options):
                if isinstance(event, TurnStart):
                    meta = event.__dict__
                elif isinstance(event, Token):
                    answer += event.text
                    yield [*chat, *answer_messages(answer, meta)], "", session_id, gr.update()
                elif isinstance(event, TurnDone):
                    final = [*chat, *answer_messages(event.answer, event.__dict__)]
                    yield final, "", session_id, gr.update(choices=session_choices(owner), value=session_id)
        except ValueError as exc:
            gr.Warning(str(exc))
            yield chat[:-1], message, session_id, gr.update()
        except Exception as exc:
            log.error("turn failed: %s", redact("".join(traceback.format_exception(exc)), settings))
            raise gr.Error(f"The answer failed ({type(exc).__name__}); see the server log.") from None

    def upload(files: list | None, collection: str, request: gr.Request, progress=gr.Progress()):  # noqa: B008
        if not files:
            return "Choose one or more files first."
        try:
            name = upload_collection(services, owner_of(request), collection)
        except UploadRefused as exc:
            return f"Collection **{plain((collection or '').strip())}**: {plain(str(exc))}"
        lines = []
        for i, file in enumerate(progress.tqdm(files, desc="ingesting")):
            path = Path(file if isinstance(file, str) else file.name)
            try:  # Gradio's temp folder differs per upload: the file's own name is its source
                report = ingest_uploads(services, name, {path: path.name})
            except ValueError as exc:
                lines.append(f"- {path.name}: error: {exc}")
                continue
            if report.failed:
                lines.extend(f"- {file_name}: error: {reason}" for file_name, reason in report.failed)
            else:
                state = "added" if report.added else "replaced" if report.replaced else "unchanged"
                lines.append(f"- {path.name}: {state}, {report.chunks} chunks")
            log.info("upload %d/%d into %s", i + 1, len(files), name)
        return f"Collection **{name}**:\n" + "\n".join(lines)

    def refresh_collections(request: gr.Request):
        return gr.update(choices=collection_choices(owner_of(request)))

    with gr.Blocks(title="ragtune", fill_height=True) as demo:
        session_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=240):
                gr.Markdown("### ragtune")
                sessions = gr.Radio(label="Conversations", choices=[], elem_id="rt-sessions")
                with gr.Row():
                    new_button = gr.Button("New", size="sm", elem_id="rt-new")
                    delete_button = gr.Button("Delete", size="sm", variant="stop", elem_id="rt-delete")
                adapter = gr.Dropdown(label="Adapter", choices=[AUTO], value=AUTO, elem_id="rt-adapter")
                collection = gr.Dropdown(
                    label="Collection", choices=[ALL_COLLECTIONS], value=ALL_COLLECTIONS, elem_id="rt-collection"
                )
                with gr.Accordion("Add documents", open=False):
                    files = gr.File(file_count="multiple", label="Files (pdf, docx, md, txt, html, csv, jsonl)")
                    target = gr.Textbox(label="Into collection", value=settings.default_collection)
                    upload_button = gr.Button("Upload", size="sm")
                    upload_status = gr.Markdown()
            with gr.Column(scale=4):
                chatbot = gr.Chatbot(
                    label="Chat",
                    height=560,
                    elem_id="rt-chat",
                    feedback_options=None,
                    placeholder="Ask about your documents, or ask for a rewrite.",
                )
                with gr.Row():
                    box = gr.Textbox(
                        placeholder="Message",
                        show_label=False,
                        scale=8,
                        elem_id="rt-input",
                        max_length=settings.max_message_chars,
                    )
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="rt-send")

        demo.load(on_load, None, [sessions, adapter, collection])
        outputs = [chatbot, box, session_state, sessions]
        inputs = [box, session_state, adapter, collection, chatbot]
        send.click(respond, inputs, outputs)
        box.submit(respond, inputs, outputs)
        new_button.click(new_session, None, [session_state, chatbot, sessions])
        delete_button.click(delete, [session_state], [session_state, chatbot, sessions])
        sessions.input(resume, [sessions], [session_state, chatbot])
        upload_button.click(upload, [files, target], [upload_status]).then(refresh_collections, None, [collection])
    return demo
