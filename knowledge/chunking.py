"""Structure-aware chunking: split inside each section (heading block or PDF page), never across them.

Sections come from the loaders, so a chunk never mixes two headings or two pages and can cite both.
Inside a section, LangChain's RecursiveCharacterTextSplitter cuts at paragraphs, then lines, then
sentences, with overlap; `add_start_index` gives each piece's offset, hence the chunk's character span.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from langchain_text_splitters import RecursiveCharacterTextSplitter

from knowledge.loaders import LoadedDocument

# No "" (cut anywhere) at the end: LangChain's character-level fallback is quadratic in the overlap (46 s for a
# 1 MB run without spaces); a piece still over the size is cut into overlapping windows by `_windows` instead.
_SEPARATORS = ["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " "]


@dataclass
class Chunk:
    ordinal: int
    text: str
    page: int | None
    heading: str
    char_start: int
    char_end: int
    metadata: dict = field(default_factory=dict)

    def embedding_input(self, title: str) -> str:
        """What the embedder sees: the title and heading path give a short chunk its context."""
        context = self.heading or title
        if title and context != title and not context.startswith(title):
            context = f"{title} > {context}"
        return f"{context}\n{self.text}" if context else self.text

    def content_hash(self, title: str) -> bytes:
        """Key of the embedding cache: same input text, same vector (for the same model)."""
        return hashlib.sha256(self.embedding_input(title).encode("utf-8")).digest()


def chunk_document(doc: LoadedDocument, chunk_size: int = 1000, chunk_overlap: int = 150) -> list[Chunk]:
    if chunk_overlap >= chunk_size:
        raise ValueError(f"chunk_overlap ({chunk_overlap}) must be smaller than chunk_size ({chunk_size})")
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        separators=_SEPARATORS,
        keep_separator="end",
        add_start_index=True,
        strip_whitespace=False,
    )
    chunks: list[Chunk] = []
    for section in doc.sections:
        spans = _spans(section.text, splitter, min_chars=min(200, chunk_size // 4))
        for start, end in _windows(section.text, spans, chunk_size, chunk_overlap):
            stripped = section.text[start:end]
            start += section.offset
            chunks.append(
                Chunk(
                    ordinal=len(chunks),
                    text=stripped,
                    page=section.page,
                    heading=section.heading,
                    char_start=start,
                    char_end=start + len(stripped),
                )
            )
    return chunks


def _spans(text: str, splitter: RecursiveCharacterTextSplitter, min_chars: int) -> list[tuple[int, int]]:
    """(start, end) of each stripped piece; a tiny piece (a lone heading line) is merged into the next one."""
    spans: list[tuple[int, int]] = []
    for piece in splitter.create_documents([text]):
        raw = piece.page_content
        if not raw.strip():
            continue
        start = int(piece.metadata["start_index"]) + (len(raw) - len(raw.lstrip()))
        spans.append((start, start + len(raw.strip())))
    merged: list[tuple[int, int]] = []
    pending: int | None = None
    for start, end in spans:
        if pending is not None:
            start, pending = pending, None
        if end - start < min_chars and (start, end) != spans[-1]:
            pending = start
            continue
        merged.append((start, end))
    return merged


def _windows(text: str, spans: list[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    """Spans over `size` (a long run with no separator) cut into windows of `size` that overlap by `overlap`."""
    out: list[tuple[int, int]] = []
    for start, end in spans:
        if end - start <= size:
            out.append((start, end))
            continue
        position = start
        while position < end:
            stop = min(position + size, end)
            piece = text[position:stop]
            lead = len(piece) - len(piece.lstrip())
            if piece.strip():
                out.append((position + lead, position + len(piece.rstrip())))
            if stop == end:
                break
            position = stop - overlap
    return out
