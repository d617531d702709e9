"""Turn files into documents made of structured sections (heading path, page, character offset).

Each loader keeps the structure a citation needs: PDF pages, Markdown/HTML/DOCX heading paths, and the
character offset of every section in the document's extracted text. The libraries underneath are the ones
the LangChain community loaders wrap (pypdf, python-docx, BeautifulSoup); calling them directly keeps the
page and heading structure those loaders flatten away. Record files (.jsonl/.csv, BEIR `corpus.jsonl`)
give one document per record.

Every failure is a `LoadError` whose message names the reason, so a batch ingest can report it per file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown"}
HTML_SUFFIXES = {".html", ".htm"}
RECORD_SUFFIXES = {".jsonl", ".csv"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | RECORD_SUFFIXES | {".pdf", ".docx"}

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


class LoadError(ValueError):
    """A file that cannot be turned into text; the message is the reason."""


@dataclass
class Section:
    """A contiguous part of a document: its text, where it starts, and the structure above it."""

    text: str
    offset: int = 0
    page: int | None = None
    heading: str = ""


@dataclass
class LoadedDocument:
    source: str
    title: str
    sha256: str
    sections: list[Section]
    metadata: dict = field(default_factory=dict)


def discover(paths: Sequence[str | Path], glob: str | None = None) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files and folders (recursively, optionally filtered by a glob) into a sorted, unique file list.

    Returns (files, problems); a path that does not exist is a problem, not an exception, so the rest go in.
    """
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            pattern = glob or "**/*"
            if not pattern.startswith("**/") and "/" not in pattern:
                pattern = f"**/{pattern}"
            found = [p for p in path.glob(pattern) if p.is_file() and not _hidden(p.relative_to(path))]
            if glob is None:
                found = [p for p in found if p.suffix.lower() in SUPPORTED_SUFFIXES]
            files.extend(sorted(found))
        elif path.is_file():
            files.append(path)
        else:
            problems.append((str(raw), "no such file or directory"))
    unique: dict[Path, None] = {}
    for file in files:
        unique.setdefault(file.resolve(), None)
    return list(unique), problems


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def load_file(path: Path) -> list[LoadedDocument]:
    """Load one file into documents (one per file, or one per record for .jsonl/.csv)."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise LoadError(f"unsupported file type {suffix or '(none)'}; expected one of {sorted(SUPPORTED_SUFFIXES)}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LoadError(f"cannot read file: {exc.strerror or exc}") from None
    if not data.strip():
        raise LoadError("empty file")
    source = str(path)
    if suffix in RECORD_SUFFIXES:
        docs = _load_records(data, source, suffix)
    else:
        sha = hashlib.sha256(data).hexdigest()
        if suffix == ".pdf":
            title, sections = _load_pdf(data)
        elif suffix == ".docx":
            title, sections = _load_docx(data)
        elif suffix in HTML_SUFFIXES:
            title, sections = _load_html(_decode(data))
        else:
            text = _decode(data)
            sections = markdown_sections(text) if suffix in {".md", ".markdown"} else [Section(text)]
            title = ""
        title = title or _first_heading(sections) or path.stem
        metadata = {"type": suffix[1:]}
        docs = [LoadedDocument(source=source, title=title, sha256=sha, sections=sections, metadata=metadata)]
    for doc in docs:  # PostgreSQL text and jsonb cannot hold NUL; some PDFs and JSON records carry them
        doc.title = doc.title.replace("\x00", "")
        doc.metadata = without_nul(doc.metadata)
        for section in doc.sections:
            section.text = section.text.replace("\x00", "")
            section.heading = section.heading.replace("\x00", "")
        doc.sections = [s for s in doc.sections if s.text.strip()]
    docs = [d for d in docs if d.sections]
    if not docs:
        raise LoadError("no extractable text")
    return docs


def without_nul(value: Any) -> Any:
    """Every string (keys too) with its NUL characters removed: PostgreSQL text and jsonb cannot store them."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    if isinstance(value, dict):
        return {str(without_nul(k)): without_nul(v) for k, v in value.items()}
    return value


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _decode(data: bytes) -> str:
    """UTF-8 (with or without BOM) or BOM-marked UTF-16; anything else is refused rather than garbled."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise LoadError(f"unreadable UTF-16 text: {exc.reason}") from None
    if b"\x00" in data[:8192]:
        raise LoadError("binary content (NUL bytes), not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoadError(f"not UTF-8 text (invalid byte at position {exc.start})") from None
    controls = sum(1 for ch in text[:8192] if ord(ch) < 32 and ch not in "\n\r\t\f")
    if controls > 0.05 * min(len(text), 8192):
        raise LoadError("binary content (control characters), not text")
    return text


def _first_heading(sections: Iterable[Section]) -> str:
    for section in sections:
        if section.heading:
            return section.heading.split(" > ")[0]
    return ""


def markdown_sections(text: str) -> list[Section]:
    """Split Markdown at ATX headings (outside code fences); each section knows its heading path."""
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    start = 0
    offset = 0
    in_fence = False
    current_heading = ""
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line.rstrip("\r\n"))
        if match:
            if offset > start:
                sections.append(Section(text[start:offset], offset=start, heading=current_heading))
            level, title = len(match.group(1)), match.group(2).strip()
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            current_heading = " > ".join(t for _, t in stack)
            start = offset
        offset += len(line)
    if offset > start:
        sections.append(Section(text[start:offset], offset=start, heading=current_heading))
    return sections


def _load_pdf(data: bytes) -> tuple[str, list[Section]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise LoadError("encrypted PDF")
        sections: list[Section] = []
        offset = 0
        for number, page in enumerate(reader.pages, start=1):
            text = (page.extract_text() or "").strip()
            if text:
                sections.append(Section(text, offset=offset, page=number))
                offset += len(text) + 2  # pages are joined by a blank line in the document's text
        title = ""
        if reader.metadata and reader.metadata.title:
            title = str(reader.metadata.title).strip()
    except LoadError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise LoadError(f"corrupt or unreadable PDF: {exc}") from None
    if not sections:
        raise LoadError("PDF has no extractable text (scanned images need OCR first)")
    return title, sections


def _load_docx(data: bytes) -> tuple[str, list[Section]]:
    import zipfile

    import docx

    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise LoadError(f"corrupt or unreadable DOCX: {exc}") from None
    lines: list[str] = []
    title = (document.core_properties.title or "").strip()
    for paragraph in document.paragraphs:
        text = paragraph.text.strip()
        if not text:
            continue
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        level = _docx_heading_level(style)
        if style == "Title" and not title:
            title = text
        lines.append(f"{'#' * level} {text}" if level else text)
        lines.append("")
    for table in document.tables:
        for row in table.rows:
            cells = [cell.text.strip() for cell in row.cells]
            if any(cells):
                lines.append(" | ".join(cells))
        lines.append("")
    return title, markdown_sections("\n".join(lines))


def _docx_heading_level(style: str) -> int:
    if style == "Title":
        return 1
    match = re.match(r"Heading (\d)", style)
    return min(int(match.group(1)), 6) if match else 0


def _load_html(markup: str) -> tuple[str, list[Section]]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    for level in range(1, 7):
        for heading in soup.find_all(f"h{level}"):
            text = heading.get_text(" ", strip=True)
            heading.replace_with(f"\n\n{'#' * level} {text}\n\n")
    for block in soup.find_all(["p", "li", "div", "br", "tr", "pre", "blockquote", "section", "article"]):
        block.insert_after("\n")
    text = soup.get_text()
    text = re.sub(r"[ \t\r\f\v]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return title, markdown_sections(text)


_ID_KEYS = ("_id", "id", "doc_id", "docid")
_TEXT_KEYS = ("text", "content", "body", "page_content", "contents")


def _load_records(data: bytes, source: str, suffix: str) -> list[LoadedDocument]:
    text = _decode(data)
    rows: list[dict] = []
    if suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LoadError(f"line {number}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise LoadError(f"line {number}: expected a JSON object")
            rows.append(row)
    else:
        try:
            rows = list(csv.DictReader(io.StringIO(text)))
        except csv.Error as exc:
            raise LoadError(f"invalid CSV: {exc}") from None
    docs: list[LoadedDocument] = []
    for number, row in enumerate(rows, start=1):
        docs.append(_record_document(row, number, source))
    return docs


def _record_document(row: dict, number: int, source: str) -> LoadedDocument:
    record_id = next((str(row[k]) for k in _ID_KEYS if row.get(k) not in (None, "")), str(number))
    text_key = next((k for k in _TEXT_KEYS if isinstance(row.get(k), str) and row[k].strip()), None)
    title = str(row.get("title") or "").strip()
    extra = {k: v for k, v in row.items() if k not in _ID_KEYS and k != text_key and k != "title" and k is not None}
    if text_key is not None:
        body = row[text_key]
    else:  # no text column: the record's fields, one per line
        body = "\n".join(f"{k}: {v}" for k, v in extra.items() if v not in (None, ""))
    nested = extra.pop("metadata", None)
    metadata = {k: v for k, v in extra.items() if isinstance(v, str | int | float | bool)} if text_key else {}
    if isinstance(nested, dict):
        metadata.update(nested)
    metadata["record_id"] = record_id
    canonical = json.dumps({"id": record_id, "title": title, "text": body, "metadata": metadata}, sort_keys=True)
    sha = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return LoadedDocument(
        source=f"{source}#{record_id}",
        title=title,
        sha256=sha,
        sections=[Section(body, offset=0, heading=title)],
        metadata=metadata,
    )
