"""The Gradio chat: streaming answers with a route badge and expandable sources, uploads, pickers, sessions, and
the team's feedback (thumbs up/down on each answer, a corrected reply) for `ragtune train --from-feedback`.

Everything shown comes from the shared memory, so resuming a session (or restarting the app) redraws the
same badges, sources and thumbs. The owner of the sessions is the portal's trusted header, the login, or the
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

from bot.answer.sentences import strip_markdown
from bot.conversation import NOT_FOUND, Token, TurnDone, TurnOptions, TurnStart
from bot.conversation.messages import MessageError, clean_message
from bot.conversation.pipeline import DB_NOTICE
from bot.conversation.services import Services
from bot.conversation.turn import badge_for
from bot.db.connection import UNAVAILABLE_ERRORS
from bot.feedback import MAX_CORRECTION_CHARS, FeedbackStore, TurnNotFound
from bot.memory import SessionNotFound, StoredMessage
from bot.server.auth import may_use_collection, readable_collections, redact, ui_owner
from bot.server.uploads import UploadRefused, ingest_uploads, upload_collection
from knowledge.loaders import without_nul

log = logging.getLogger(__name__)

AUTO = "auto (router decides)"
ALL_COLLECTIONS = "all collections"

CSS = """
.rt-badge {display:inline-block;padding:1px 8px;border-radius:10px;font-size:0.8em;margin-bottom:4px;cursor:pointer;
  background:#e8eefc;color:#1d3a8a;border:1px solid #b9c8f2}
.rt-badge.rt-skill {background:#eaf7ee;color:#17623a;border-color:#b5e0c4}
.rt-badge.rt-notfound {background:#fdf1e6;color:#8a4b12;border-color:#f0cfa9}
.rt-badge.rt-degraded {background:#f4f4f5;color:#52525b;border-color:#d4d4d8}
.rt-badge summary {list-style:none;display:inline}
.rt-badge summary::-webkit-details-marker {display:none}
.rt-badge summary::after {content:"i";display:inline-block;width:1.2em;height:1.2em;line-height:1.15em;
  margin-left:5px;border-radius:50%;border:1px solid currentColor;text-align:center;font-size:0.8em;
  font-style:italic;font-family:serif;opacity:0.7}
.rt-badge[open] {display:block;max-width:46em;border-radius:8px;padding:4px 10px}
.rt-badge .rt-details {display:block;margin-top:3px;font-size:0.95em;opacity:0.9}
#rt-files .file-preview .file {flex-wrap:wrap}
#rt-files .filename {display:block;flex-basis:100%;overflow:visible;font-size:0}
#rt-files .filename .stem, #rt-files .filename .ext {display:inline;white-space:normal;overflow-wrap:anywhere;
  font-size:var(--text-md, 14px)}
#rt-files .download {width:auto;min-width:0;text-align:left}
#rt-notice {color:#8a4b12}
#rt-notice:empty {display:none}
#rt-feedback-status:empty {display:none}
"""


def badge_html(meta: dict[str, Any] | Any) -> str:
    """The badge above an answer: plain words ("From your documents · 3 sources"). The route, how sure the router
    was and why show on hover (`title`) and when the badge is clicked open. `meta` is a TurnStart/TurnDone or a
    stored answer's fields."""
    badge = badge_for(meta)
    route = (meta.get("route") if isinstance(meta, dict) else getattr(meta, "route", None)) or "?"
    route_class = "rt-route-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in route)
    details = html.escape(badge.details, quote=True)
    return (
        f'<details class="rt-badge rt-{badge.kind} {route_class}" title="{details}">'
        f"<summary>{html.escape(badge.label)}</summary>"
        f'<span class="rt-details">{details}</span></details>'
    )


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
        snippet = plain(" ".join(strip_markdown(quoted or s.get("snippet", "")).split()))
        lines.append(f"**\\[{s['n']}\\] {title}**{page} · score {s.get('score', 0):.2f}  \n> {snippet}")
    return "\n\n".join(lines)


def answer_messages(answer: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """An answer as chat messages: badge + text, then a collapsed 'Sources' box when there are sources."""
    out = [{"role": "assistant", "content": f"{badge_html(meta)}\n\n{answer}"}]
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
            reason = m.reason or ""
            meta = {
                "route": m.route or "?",
                "action": action,
                "confidence": m.confidence,
                "reason": reason,
                "adapter": m.adapter,
                "sources": m.sources,
                "not_found": action == "knowledge" and not m.sources and m.content.strip() == NOT_FOUND,
                "notice": DB_NOTICE if reason.startswith(DB_NOTICE) else None,
            }
            chat.extend(answer_messages(m.content, meta))
    return chat


def message_text(content: Any) -> str:
    """A chat message's text: a plain string, or Gradio 6's list of content blocks ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    blocks = content if isinstance(content, list) else [content]
    return "".join(b.get("text") or "" for b in blocks if isinstance(b, dict) and b.get("type", "text") == "text")


def answer_turns(chat: list[dict[str, Any]], stored: list[StoredMessage]) -> dict[int, int]:
    """The stored turn of each answer shown in the chat: {index of an assistant message: turn}.

    The chat's questions are matched with the stored ones in order, by their text. A question shown but not stored
    (a turn that failed, or one still being answered) matches nothing and its answer gets no turn, so a thumb or a
    correction never lands on a neighbouring turn."""
    asked = [m for m in stored if m.role == "user"]
    answered = {m.turn for m in stored if m.role == "assistant"}
    turns: dict[int, int] = {}
    next_asked, current = 0, None
    for i, message in enumerate(chat):
        role = message.get("role")
        if role == "user":
            current = None
            text = message_text(message.get("content")).strip()
            if next_asked < len(asked) and text == asked[next_asked].content.strip():
                current, next_asked = asked[next_asked].turn, next_asked + 1
        elif role == "assistant" and current in answered:
            turns[i] = current
    return turns


def answer_starts(chat: list[dict[str, Any]]) -> list[int]:
    """Where each answer begins: an answer and its Sources box show as one bubble with one pair of thumbs."""
    return [
        i
        for i, m in enumerate(chat)
        if m.get("role") == "assistant" and (i == 0 or chat[i - 1].get("role") != "assistant")
    ]


THUMBS = {"up": "Like", "down": "Dislike"}  # the chatbot's feedback_options, which show as thumb icons
SAVED = "Thanks — saved for training."
DB_DOWN = "⚠ The database is unavailable right now: nothing was saved. {kept}Try again in a moment."
NO_TARGET_LABEL = "Corrects the **last answer**; click 👎 on another answer to correct that one instead."


def _shorten(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ChatHandlers:
    """What the chat page does on each event; every method reads the caller from Gradio's request."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.memory = services.memory
        self.conversation = services.conversation

    @property
    def feedback(self) -> FeedbackStore:
        return FeedbackStore(self.services.db.pool)

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
            gr.update(choices=[AUTO, *self.conversation.adapters()], value=AUTO, info=self.serving_text()),
            gr.update(choices=self.collection_choices(owner), value=ALL_COLLECTIONS),
        )

    def serving_text(self) -> str:
        """Which adapter answers each writing route now ("skill: support-tone (promoted)"), as `/healthz` says."""
        try:
            serving = self.conversation.route_adapters()
            actions = {spec.name: getattr(spec, "action", "") for spec in self.conversation.routes()}
        except Exception:  # the database behind promotions is down: the picker still works
            return ""
        parts = [
            f"{route}: {now.adapter or 'base model'}" + (" (promoted)" if now.source == "promoted" else "")
            for route, now in serving.items()
            if actions.get(route) == "skill"
        ]
        return "Serving now · " + ", ".join(parts) if parts else ""

    def new_session(self, request: gr.Request):
        return None, _empty_chat(), gr.update(choices=self.session_choices(self.owner_of(request)), value=None)

    def resume(self, session_id: str | None, request: gr.Request):
        if not session_id:
            return None, _empty_chat()
        owner = self.owner_of(request)
        try:
            stored = self.memory.messages(session_id, owner)
        except SessionNotFound:
            gr.Warning("That conversation no longer exists.")
            return None, _empty_chat()
        chat = history_from_memory(stored)
        return session_id, gr.update(value=chat, feedback_value=self._thumbs(chat, stored, session_id, owner))

    def ask_delete(self, session_id: str | None):
        """Delete asks first: it shows the confirmation row (or says there is nothing to delete)."""
        if not session_id:
            gr.Info("Open a conversation first: there is nothing to delete.")
        return gr.update(visible=bool(session_id))

    def delete(self, session_id: str | None, request: gr.Request):
        owner = self.owner_of(request)
        if session_id:
            with contextlib.suppress(SessionNotFound):
                self.memory.delete_session(session_id, owner)
        return None, _empty_chat(), gr.update(choices=self.session_choices(owner), value=None), gr.update(visible=False)

    def length_notice(self, length: int) -> str:
        limit = self.settings.max_message_chars
        return (
            f"⚠ Your message is {length:,} characters long; the limit is {limit:,}. "
            "Nothing was sent and nothing was cut: shorten it, then send it again."
        )

    def respond(
        self, message: str, session_id: str | None, adapter: str, collection: str, chat: list, request: gr.Request
    ) -> Iterator[tuple]:
        """Outputs: the chat, the message box, the session, the session list, the notice under the box."""
        owner = self.owner_of(request)
        try:
            message = clean_message(message, self.settings.max_message_chars)
        except MessageError as exc:
            notice = ""
            if exc.code == "message_too_long":  # kept in the box as typed: the user decides what to cut
                notice = self.length_notice(len((message or "").strip()))
                gr.Warning(notice.lstrip("⚠ "))
            elif exc.code != "empty_message":
                gr.Warning(f"{exc}.")
            yield chat, "" if exc.code == "empty_message" else message, session_id, gr.update(), notice
            return
        session_id = session_id or self.memory.create_session(owner)
        wanted = None if collection in (None, ALL_COLLECTIONS) else collection
        try:
            listed = self.all_collections() if self.settings.restricted_collections else []
            scope = readable_collections(owner, wanted, listed, self.settings)
        except LookupError:
            gr.Warning(f"Collection {wanted!r} not found.")
            yield chat, message, session_id, gr.update(), ""
            return
        options = TurnOptions(adapter=None if adapter in (None, AUTO) else adapter, collection=scope)
        chat = [*chat, {"role": "user", "content": message}]
        yield chat, "", session_id, gr.update(), ""
        for update in self._answer(chat, message, session_id, owner, options):
            yield (*update, gr.update())

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

    # --- feedback: thumbs and corrections ----------------------------------------------------------------
    def _thumbs(
        self, chat: list, stored: list[StoredMessage], session_id: str, owner: str, ratings: dict | None = None
    ) -> list[str | None]:
        """The thumb shown on each answer of the chat (the chatbot's feedback_value: one entry per answer bubble)."""
        if ratings is None:
            try:
                ratings = self.feedback.of_session(session_id, owner)
            except UNAVAILABLE_ERRORS:
                ratings = {}
        turns = answer_turns(chat, stored)
        return [THUMBS[ratings[turns[i]].rating] if turns.get(i) in ratings else None for i in answer_starts(chat)]

    def _target(self, session_id: str, turn: int, stored: list[StoredMessage]) -> tuple[dict, str]:
        """The answer a correction is for: the state kept between events and the line above the box."""
        question = next((m.content for m in stored if m.turn == turn and m.role == "user"), "")
        label = f"Correcting the answer to: “{plain(_shorten(question))}”" if question else "Correcting an answer"
        return {"session": session_id, "turn": turn}, label

    def rate(
        self, chat: list, session_id: str | None, target: dict | None, box: str, like: gr.LikeData, request: gr.Request
    ):
        """A thumb on an answer; clicking a thumb again takes it off. Outputs: the chatbot's thumbs, the correction
        target, its label, the correction box, the correction accordion, the status line. A thumb down picks that
        answer for a correction and puts its text in the box to edit, unless the box holds an unsaved correction of
        another answer (that text is kept)."""
        keep = (gr.update(), target, gr.update(), gr.update(), gr.update())
        rating = "up" if like.liked is True else "down" if like.liked is False else None  # None: the thumb is off
        if not session_id:
            return (*keep, "⚠ Nothing to rate yet: send a message first.")
        owner = self.owner_of(request)
        index = like.index[0] if isinstance(like.index, (list, tuple)) else like.index
        try:
            stored = self.memory.messages(session_id, owner)
            turn = answer_turns(chat, stored).get(index)
            if turn is None:
                return (*keep, "⚠ That answer is not saved yet, so it cannot be rated: wait for it to finish.")
            earlier = self.feedback.of_session(session_id, owner).get(turn)
            correction = earlier.correction if earlier else None  # a new thumb keeps the team's correction
            if rating is not None:
                saved = self.feedback.rate(session_id, turn, owner, rating, correction)
            elif correction is None:
                self.feedback.remove(session_id, turn, owner)
            ratings = self.feedback.of_session(session_id, owner)
        except SessionNotFound:
            return (*keep, "⚠ That conversation no longer exists: nothing was saved.")
        except TurnNotFound:
            return (*keep, "⚠ That answer is not saved yet, so it cannot be rated: wait for it to finish.")
        except UNAVAILABLE_ERRORS:
            return (*keep, DB_DOWN.format(kept=""))
        thumbs = gr.update(feedback_value=self._thumbs(chat, stored, session_id, owner, ratings))
        if rating is None:
            status = (
                f"Your correction of answer {turn} stays saved for training; only a new 👍 or 👎 replaces its thumb."
                if correction
                else f"Rating of answer {turn} removed."
            )
            return thumbs, target, gr.update(), gr.update(), gr.update(), status
        status = f"{SAVED} (👍 on answer {turn})" if rating == "up" else f"{SAVED} (👎 on answer {turn})"
        if rating == "up":
            return thumbs, target, gr.update(), gr.update(), gr.update(), status
        answer = next((m.content for m in stored if m.turn == turn and m.role == "assistant"), "")
        prefill = saved.correction or answer
        unsaved = (box or "").strip() and (box or "").strip() != (target or {}).get("prefill", "").strip()
        if unsaved and target and (target.get("session"), target.get("turn")) != (session_id, turn):
            status += " Your unsaved correction is still in the box, for the answer it was written for."
            return thumbs, target, gr.update(), gr.update(), gr.update(open=True), status
        state, label = self._target(session_id, turn, stored)
        state["prefill"] = prefill
        status += " Correct it below if you know the right answer."
        return thumbs, state, label, prefill if not unsaved else gr.update(), gr.update(open=True), status

    def save_correction(self, text: str, chat: list, session_id: str | None, target: dict | None, request: gr.Request):
        """The team's corrected reply for the picked answer (a thumb down) or the last one. Outputs: the chatbot's
        thumbs, the correction target, its label, the status line. The box keeps its text whatever happens."""
        keep = (gr.update(), target, gr.update())
        if not session_id:
            return (*keep, "⚠ There is no answer to correct yet: send a message first.")
        if not (text or "").strip():
            return (*keep, "⚠ Type the corrected answer in the box first.")
        if len(text) > MAX_CORRECTION_CHARS:
            return (*keep, f"⚠ The correction is {len(text):,} characters long; the limit is {MAX_CORRECTION_CHARS:,}.")
        owner = self.owner_of(request)
        try:
            stored = self.memory.messages(session_id, owner)
            turns = answer_turns(chat, stored)
            picked = target.get("turn") if target and target.get("session") == session_id else None
            turn = picked if picked in turns.values() else max(turns.values(), default=None)
            if turn is None:
                return (*keep, "⚠ There is no saved answer to correct yet: wait for the answer to finish.")
            earlier = self.feedback.of_session(session_id, owner).get(turn)
            self.feedback.rate(session_id, turn, owner, earlier.rating if earlier else "down", text)
            ratings = self.feedback.of_session(session_id, owner)
        except SessionNotFound:
            return (*keep, "⚠ That conversation no longer exists: nothing was saved.")
        except TurnNotFound:
            return (*keep, "⚠ That answer is no longer saved: nothing was saved.")
        except UNAVAILABLE_ERRORS:
            return (*keep, DB_DOWN.format(kept="Your correction is still in the box. "))
        except ValueError as exc:
            return (*keep, f"⚠ {exc}.")
        state, label = self._target(session_id, turn, stored)
        state["prefill"] = text
        thumbs = gr.update(feedback_value=self._thumbs(chat, stored, session_id, owner, ratings))
        return thumbs, state, label, f"{SAVED} (correction of answer {turn})"

    def reset_feedback(self):
        """Another conversation: the correction is for its last answer until a thumb down picks one."""
        return None, NO_TARGET_LABEL, ""

    def upload_target(self, collection: str | None) -> str:
        """Uploads go where the chat reads: the picked collection, or the default one while it reads them all."""
        return self.settings.default_collection if collection in (None, "", ALL_COLLECTIONS) else collection

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
            shown = plain(path.name)
            try:  # Gradio's temp folder differs per upload: the file's own name is its source
                report = ingest_uploads(self.services, name, {path: path.name})
            except ValueError as exc:
                lines.append(f"- {shown}: error: {plain(str(exc))}")
                continue
            if report.failed:
                lines.extend(f"- {plain(file_name)}: error: {plain(reason)}" for file_name, reason in report.failed)
            else:
                state = "added" if report.added else "replaced" if report.replaced else "unchanged"
                lines.append(f"- {shown}: {state}, {report.chunks} chunk{'' if report.chunks == 1 else 's'}")
            log.info("upload %d/%d into %s", i + 1, len(files), name)
        return f"Collection **{plain(name)}**:\n" + "\n".join(lines)

    def refresh_collections(self, target: str | None, current: str | None, request: gr.Request):
        """The collection list after an upload; the chat moves to the upload's collection when it read another one."""
        choices = self.collection_choices(self.owner_of(request))
        name = without_nul(target or "").strip() or self.settings.default_collection
        value = current if current in (None, ALL_COLLECTIONS) or name not in choices else name
        return gr.update(choices=choices, value=value if value in choices else ALL_COLLECTIONS)


def _empty_chat() -> Any:
    """An empty chat, and no thumbs left over from the conversation shown before."""
    return gr.update(value=[], feedback_value=[])


@dataclass
class Page:
    """The chat page's components, as `_layout` places them."""

    session_state: Any
    sessions: Any
    new_button: Any
    delete_button: Any
    confirm_row: Any
    confirm_delete: Any
    cancel_delete: Any
    adapter: Any
    collection: Any
    files: Any
    target: Any
    upload_button: Any
    upload_status: Any
    chatbot: Any
    box: Any
    send: Any
    notice: Any
    feedback_status: Any
    feedback_target: Any
    correct_box: Any
    correction_label: Any
    correction: Any
    save_correction: Any


def _layout(settings: Any) -> Page:
    """The sidebar (conversations, adapter, collection, uploads) and the chat column; call inside a Blocks."""
    session_state = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1, min_width=240):
            gr.Markdown("### ragtune")
            sessions = gr.Radio(label="Conversations", choices=[], elem_id="rt-sessions")
            with gr.Row():
                new_button = gr.Button("New", size="sm", elem_id="rt-new")
                delete_button = gr.Button("Delete", size="sm", variant="secondary", elem_id="rt-delete")
            with gr.Column(visible=False, elem_id="rt-confirm-delete") as confirm_row:
                gr.Markdown("**Delete this conversation?** It cannot be undone.")
                with gr.Row():
                    cancel_delete = gr.Button("Cancel", size="sm", elem_id="rt-delete-no")
                    confirm_delete = gr.Button("Delete it", size="sm", variant="stop", elem_id="rt-delete-yes")
            adapter = gr.Dropdown(label="Adapter", choices=[AUTO], value=AUTO, elem_id="rt-adapter")
            collection = gr.Dropdown(
                label="Collection", choices=[ALL_COLLECTIONS], value=ALL_COLLECTIONS, elem_id="rt-collection"
            )
            with gr.Accordion("Add documents", open=False, elem_id="rt-add-documents"):
                files = gr.File(
                    file_count="multiple", label="Files (pdf, docx, md, txt, html, csv, jsonl)", elem_id="rt-files"
                )
                target = gr.Textbox(
                    label="Into collection",
                    value=settings.default_collection,
                    info="Follows the Collection picked above; type a new name to start a collection.",
                    elem_id="rt-target",
                )
                upload_button = gr.Button("Upload", size="sm", elem_id="rt-upload")
                upload_status = gr.Markdown(elem_id="rt-upload-status")
        with gr.Column(scale=4):
            chatbot = gr.Chatbot(
                label="Chat",
                height=560,
                elem_id="rt-chat",
                feedback_options=tuple(THUMBS.values()),
                placeholder="Ask about your documents, or ask for a rewrite.",
            )
            with gr.Row():
                # No max_length: a browser cap would cut a pasted text without a word; the notice below says instead.
                box = gr.Textbox(placeholder="Message", show_label=False, scale=8, elem_id="rt-input")
                send = gr.Button("Send", variant="primary", scale=1, elem_id="rt-send")
            notice = gr.Markdown(elem_id="rt-notice")
            feedback_status = gr.Markdown(elem_id="rt-feedback-status")
            feedback_target = gr.State(None)
            with gr.Accordion("Correct an answer", open=False, elem_id="rt-correct") as correct_box:
                correction_label = gr.Markdown(NO_TARGET_LABEL, elem_id="rt-correction-target")
                correction = gr.Textbox(
                    label="The right answer",
                    lines=4,
                    placeholder="Write the answer the bot should have given; it is kept for training.",
                    elem_id="rt-correction",
                )
                save_correction = gr.Button("Save correction", size="sm", elem_id="rt-save-correction")
    return Page(
        session_state,
        sessions,
        new_button,
        delete_button,
        confirm_row,
        confirm_delete,
        cancel_delete,
        adapter,
        collection,
        files,
        target,
        upload_button,
        upload_status,
        chatbot,
        box,
        send,
        notice,
        feedback_status,
        feedback_target,
        correct_box,
        correction_label,
        correction,
        save_correction,
    )


def _live_length_check(limit: int) -> str:
    """Browser-side: the notice under the box appears while the text is over the limit, before anything is sent."""
    return (
        "(text) => { const n = (text || '').trim().length; "
        f"return n > {limit} ? '⚠ Your message is ' + n.toLocaleString('en') + ' characters long; the limit is "
        f"{limit:,}. Shorten it before sending.' : ''; }}"
    )


def build_ui(services: Services) -> gr.Blocks:
    """The chat page, with each event wired to its handler."""
    handlers = ChatHandlers(services)
    with gr.Blocks(title="ragtune", fill_height=True) as demo:
        page = _layout(services.settings)
        demo.load(handlers.on_load, None, [page.sessions, page.adapter, page.collection])
        outputs = [page.chatbot, page.box, page.session_state, page.sessions, page.notice]
        inputs = [page.box, page.session_state, page.adapter, page.collection, page.chatbot]
        page.send.click(handlers.respond, inputs, outputs)
        page.box.submit(handlers.respond, inputs, outputs)
        page.box.change(
            None, [page.box], [page.notice], js=_live_length_check(services.settings.max_message_chars), queue=False
        )
        page.new_button.click(handlers.new_session, None, [page.session_state, page.chatbot, page.sessions])
        page.delete_button.click(handlers.ask_delete, [page.session_state], [page.confirm_row])
        page.confirm_delete.click(
            handlers.delete, [page.session_state], [page.session_state, page.chatbot, page.sessions, page.confirm_row]
        )
        page.cancel_delete.click(lambda: gr.update(visible=False), None, [page.confirm_row])
        page.sessions.input(handlers.resume, [page.sessions], [page.session_state, page.chatbot])
        page.collection.change(handlers.upload_target, [page.collection], [page.target])
        page.chatbot.like(
            handlers.rate,
            [page.chatbot, page.session_state, page.feedback_target, page.correction],
            [
                page.chatbot,
                page.feedback_target,
                page.correction_label,
                page.correction,
                page.correct_box,
                page.feedback_status,
            ],
            show_progress="hidden",
        )
        page.save_correction.click(
            handlers.save_correction,
            [page.correction, page.chatbot, page.session_state, page.feedback_target],
            [page.chatbot, page.feedback_target, page.correction_label, page.feedback_status],
            show_progress="hidden",
        )
        page.session_state.change(
            handlers.reset_feedback, None, [page.feedback_target, page.correction_label, page.feedback_status]
        )
        page.upload_button.click(handlers.upload, [page.files, page.target], [page.upload_status]).then(
            handlers.refresh_collections, [page.target, page.collection], [page.collection]
        )
    return demo
