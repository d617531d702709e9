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
from dataclasses import dataclass
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


class ChatHandlers:
    """What the chat page does on each event; every method reads the caller from Gradio's request."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.memory = services.memory
        self.conversation = services.conversation

    def owner_of(self, request: gr.Request | None) -> str:
        if request is None:
            return "local"
        headers = dict(request.headers) if request.headers else {}
        return ui_owner(getattr(request, "username", None), headers, self.settings)

    def session_choices(self, owner: str) -> list[tuple[str, str]]:
        return [(f"{s.title or 'new conversation'} ({s.turns})", s.id) for s in self.memory.list_sessions(owner)]

    def all_collections(self) -> list[str]:
        try:
            return [getattr(c, "name", str(c)) for c in self.services.store.list_collections()]
        except Exception:  # the store is optional in a degraded start
            return []

    def collection_choices(self, owner: str) -> list[str]:
        allowed = (n for n in self.all_collections() if may_use_collection(owner, n, self.settings))
        return [ALL_COLLECTIONS, *allowed]

    def on_load(self, request: gr.Request):
        owner = self.owner_of(request)
        return (
            gr.update(choices=self.session_choices(owner), value=None),
            gr.update(choices=[AUTO, *self.conversation.adapters()], value=AUTO),
            gr.update(choices=self.collection_choices(owner), value=ALL_COLLECTIONS),
        )

    def new_session(self, request: gr.Request):
        return None, [], gr.update(choices=self.session_choices(self.owner_of(request)), value=None)

    def resume(self, session_id: str | None, request: gr.Request):
        if not session_id:
            return None, []
        try:
            return session_id, history_from_memory(self.memory.messages(session_id, self.owner_of(request)))
        except SessionNotFound:
            gr.Warning("That conversation no longer exists.")
            return None, []

    def delete(self, session_id: str | None, request: gr.Request):
        owner = self.owner_of(request)
        if session_id:
            with contextlib.suppress(SessionNotFound):
                self.memory.delete_session(session_id, owner)
        return None, [], gr.update(choices=self.session_choices(owner), value=None)

    def respond(
        self, message: str, session_id: str | None, adapter: str, collection: str, chat: list, request: gr.Request
    ) -> Iterator[tuple]:
        owner = self.owner_of(request)
        try:
            message = clean_message(message, self.settings.max_message_chars)
        except MessageError as exc:
            if exc.code != "empty_message":
                gr.Warning(f"{exc}.")
            yield chat, "" if exc.code == "empty_message" else message, session_id, gr.update()
            return
        session_id = session_id or self.memory.create_session(owner)
        wanted = None if collection in (None, ALL_COLLECTIONS) else collection
        try:
            listed = self.all_collections() if self.settings.restricted_collections else []
            scope = readable_collections(owner, wanted, listed, self.settings)
        except LookupError:
            gr.Warning(f"Collection {wanted!r} not found.")
            yield chat, message, session_id, gr.update()
            return
        options = TurnOptions(adapter=None if adapter in (None, AUTO) else adapter, collection=scope)
        chat = [*chat, {"role": "user", "content": message}]
        yield chat, "", session_id, gr.update()
        yield from self._answer(chat, message, session_id, owner, options)

    def _answer(self, chat: list, message: str, session_id: str, owner: str, options: TurnOptions) -> Iterator[tuple]:
        """The turn's events as chat updates: the badge and sources first, then the text as it streams."""
        answer, meta = "", None
        try:
            for event in self.conversation.stream(session_id, owner, message, options):
                if isinstance(event, TurnStart):
                    meta = event.__dict__
                elif isinstance(event, Token):
                    answer += event.text
                    yield [*chat, *answer_messages(answer, meta)], "", session_id, gr.update()
                elif isinstance(event, TurnDone):
                    final = [*chat, *answer_messages(event.answer, event.__dict__)]
                    sessions = gr.update(choices=self.session_choices(owner), value=session_id)
                    yield final, "", session_id, sessions
        except ValueError as exc:
            gr.Warning(str(exc))
            yield chat[:-1], message, session_id, gr.update()
        except Exception as exc:
            log.error("turn failed: %s", redact("".join(traceback.format_exception(exc)), self.settings))
            raise gr.Error(f"The answer failed ({type(exc).__name__}); see the server log.") from None

    def upload(self, files: list | None, collection: str, request: gr.Request, progress=gr.Progress()):  # noqa: B008
        if not files:
            return "Choose one or more files first."
        try:
            name = upload_collection(self.services, self.owner_of(request), collection)
        except UploadRefused as exc:
            return f"Collection **{plain((collection or '').strip())}**: {plain(str(exc))}"
        lines = []
        for i, file in enumerate(progress.tqdm(files, desc="ingesting")):
            path = Path(file if isinstance(file, str) else file.name)
            try:  # Gradio's temp folder differs per upload: the file's own name is its source
                report = ingest_uploads(self.services, name, {path: path.name})
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

    def refresh_collections(self, request: gr.Request):
        return gr.update(choices=self.collection_choices(self.owner_of(request)))


@dataclass
class Page:
    """The chat page's components, as `_layout` places them."""

    session_state: Any
    sessions: Any
    new_button: Any
    delete_button: Any
    adapter: Any
    collection: Any
    files: Any
    target: Any
    upload_button: Any
    upload_status: Any
    chatbot: Any
    box: Any
    send: Any


def _layout(settings: Any) -> Page:
    """The sidebar (conversations, adapter, collection, uploads) and the chat column; call inside a Blocks."""
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
    return Page(
        session_state,
        sessions,
        new_button,
        delete_button,
        adapter,
        collection,
        files,
        target,
        upload_button,
        upload_status,
        chatbot,
        box,
        send,
    )


def build_ui(services: Services) -> gr.Blocks:
    """The chat page, with each event wired to its handler."""
    handlers = ChatHandlers(services)
    with gr.Blocks(title="ragtune", fill_height=True) as demo:
        page = _layout(services.settings)
        demo.load(handlers.on_load, None, [page.sessions, page.adapter, page.collection])
        outputs = [page.chatbot, page.box, page.session_state, page.sessions]
        inputs = [page.box, page.session_state, page.adapter, page.collection, page.chatbot]
        page.send.click(handlers.respond, inputs, outputs)
        page.box.submit(handlers.respond, inputs, outputs)
        page.new_button.click(handlers.new_session, None, [page.session_state, page.chatbot, page.sessions])
        page.delete_button.click(
            handlers.delete, [page.session_state], [page.session_state, page.chatbot, page.sessions]
        )
        page.sessions.input(handlers.resume, [page.sessions], [page.session_state, page.chatbot])
        page.upload_button.click(handlers.upload, [page.files, page.target], [page.upload_status]).then(
            handlers.refresh_collections, None, [page.collection]
        )
    return demo
