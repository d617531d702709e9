"""The knowledge store: idempotent, per-file transactional ingestion into pgvector and hybrid retrieval.

Ingest: files are loaded and chunked first, unchanged documents are skipped before any embedding, then
the chunks of many files are embedded in one call (sentence-transformers sorts them by length, so batches
pad little), vectors of chunks already embedded by the same model are reused (content hash), and each file
is written in its own transaction with a binary COPY. A file that fails leaves the store as it was.

Search: dense (HNSW, cosine), keyword (BM25 over Postgres full-text lexemes, see knowledge/keyword.py) or hybrid
(both candidate lists re-scored exactly and fused, by default a convex combination of normalised cosine and BM25),
each one SQL statement. Every filter value is a bound parameter; only fixed clause templates are put together.

Texts by key (`put_texts`, `texts_by_source`, `delete_sources`) store LangChain Documents whole, one chunk each, in the
same tables and transactions; knowledge/langchain_faces.py builds the LangChain VectorStore on them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from knowledge.bulk import DeferredVectorIndex, ensure_vector_index, maintenance_connection
from knowledge.chunking import Chunk, chunk_document
from knowledge.embedding import Embedder
from knowledge.keyword import FUSIONS, Fusion, hybrid_ctes, keyword_ctes
from knowledge.loaders import RECORD_SUFFIXES, LoadedDocument, LoadError, discover, load_file, without_nul
from knowledge.names import check_collection_name
from knowledge.search_modes import SEARCH_MODES, SearchMode

log = logging.getLogger(__name__)

# Kept as names of this module: callers import `knowledge.MODES` and `knowledge.store.SearchMode`.
MODES = SEARCH_MODES
# Chunks embedded together in one call: big enough for length bucketing, small enough to write often.
_WAVE_CHUNKS = 1024
# After a bulk load the planner's row estimates are stale until autovacuum gets round to it, and it may then
# scan every vector instead of using the HNSW index; refreshing them costs well under a second.
_ANALYZE_AFTER_CHUNKS = 1000


# Chunks are written with one binary COPY per transaction (ingest and put_texts).
_CHUNKS_COPY = (
    "COPY chunks (document_id, ordinal, text, page, char_start, char_end, heading, metadata, embedding, content_sha256)"
    " FROM STDIN WITH (FORMAT BINARY)"
)
_CHUNKS_COPY_TYPES = ["int8", "int4", "text", "int4", "int4", "int4", "text", "jsonb", "vector", "bytea"]


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    chunks: int = 0  # chunks written
    seconds: float = 0.0
    documents: int = 0  # documents written (a .jsonl/.csv file holds many)
    embedded: int = 0  # chunks embedded now; chunks - embedded reused a stored vector

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.replaced)} replaced, {len(self.unchanged)} unchanged, "
            f"{len(self.failed)} failed; {self.documents} documents, {self.chunks} chunks "
            f"({self.embedded} embedded) in {self.seconds:.1f}s"
        )


@dataclass
class SearchHit:
    chunk_id: int
    document_id: int
    collection: str
    source: str
    title: str
    page: int | None
    heading: str
    text: str
    char_start: int | None
    char_end: int | None
    # In [0, 1], higher is better: cosine similarity (dense, hybrid: thresholdable, the same scale in both) or
    # BM25 divided by the best BM25 this query could reach (keyword). Hybrid *order* follows ranks["fused"].
    score: float
    metadata: dict
    ranks: dict = field(default_factory=dict)  # {"dense": r, "keyword": r, "fused": rrf} where applicable


@dataclass
class CollectionInfo:
    name: str
    description: str
    embedding_model: str | None
    documents: int
    chunks: int
    created_at: datetime | None = None


@dataclass
class DocumentInfo:
    id: int
    collection: str
    source: str
    title: str
    sha256: str
    chunks: int
    metadata: dict
    ingested_at: datetime | None = None


@dataclass
class _PreparedFile:
    """A loaded, chunked file whose new documents still need vectors and a write."""

    path: str
    docs: list[tuple[LoadedDocument, list[Chunk]]]
    vectors: list[np.ndarray | None] = field(default_factory=list)  # per doc: (n_chunks, dim)

    @property
    def n_chunks(self) -> int:
        return sum(len(chunks) for _, chunks in self.docs)


@dataclass
class TextRecord:
    """A text stored as it is, one chunk, under a caller's key (a LangChain Document and its id)."""

    key: str  # stored as the document's source: the id it is read, replaced and deleted by
    text: str
    metadata: dict = field(default_factory=dict)


@dataclass
class StoredChunk:
    """A chunk read back by its document's source."""

    source: str
    text: str
    metadata: dict  # the document's metadata with the chunk's own on top, as search returns it
    chunk_id: int
    ordinal: int


def source_name(path: Path, roots: Sequence[Path]) -> str:
    """The stored and shown form of an ingested file's path: relative to the first folder of `roots` holding it
    (POSIX separators), else the file's name. The same on every face (API, UI, CLI, LangChain), free of the
    server's directory layout, and unchanged when the folder moves."""
    for root in roots:
        if root != path and path.is_relative_to(root):  # a root that is a file holds only itself
            return path.relative_to(root).as_posix()
    return path.name


class KnowledgeStore:
    """Collections of documents, chunked and embedded in PostgreSQL, searchable three ways."""

    def __init__(
        self,
        pool: ConnectionPool,
        embedder: Embedder,
        *,
        ef_search: int = 100,
        rrf_k: int = 60,
        candidates: int = 30,
        dense_weight: float = 1.0,
        keyword_weight: float = 1.0,
        fusion: Fusion = "convex",
        alpha: float = 0.6,
        bm25_depth: int = 600,
        prepare: bool = True,
    ) -> None:
        self.pool = pool
        self.embedder = embedder
        self.ef_search = ef_search
        self.rrf_k = rrf_k
        self.candidates = candidates
        # fusion="rrf" only: w_dense / (rrf_k + dense rank) + w_keyword / (rrf_k + keyword rank). The old 3:1 was
        # tuned for a ts_rank_cd keyword side; with BM25, 1:1 scored 0.720 on SciFact train (convex, default: 0.742).
        self.dense_weight = float(dense_weight)
        self.keyword_weight = float(keyword_weight)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, not {fusion!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
        if bm25_depth < 1:
            raise ValueError(f"bm25_depth must be at least 1, not {bm25_depth}")
        self.fusion = fusion
        # Convex fusion: alpha * min-max normalised cosine + (1 - alpha) * BM25 / best BM25 among the candidates.
        # 0.6 was the best of 0.3-0.8 on SciFact *train* queries (nDCG@10 0.742; weighted RRF 1:1 0.720).
        self.alpha = float(alpha)
        # Postings read for the rarest query term on the unfiltered path (highest impact first; commoner terms read
        # fewer, see knowledge/keyword.py). With 30 candidates per side, SciFact *train* nDCG@10 stayed within 0.002
        # of depth 1000 / 50 candidates while hybrid p95 at 100k chunks fell by about half (bench_knowledge).
        self.bm25_depth = int(bm25_depth)
        # Let psycopg prepare a query text after a few runs (its connection's prepare_threshold; None there turns
        # it off, e.g. behind PgBouncer): the hybrid statement plans in ~3-8 ms, a large share of its latency. The
        # session settings hnsw.ef_search / iterative_scan are read at execution, so cached plans honour them.
        # prepare=False (a transaction pooler) also sets those per transaction, never for the session.
        self.prepare = bool(prepare)

    # ------------------------------------------------------------------ ingest
    def ingest(
        self,
        paths: Sequence[str | Path],
        collection: str = "default",
        *,
        glob: str | None = None,
        chunk_size: int = 1000,
        chunk_overlap: int = 150,
        progress: bool = False,
        source_names: Mapping[str, str] | None = None,
    ) -> IngestReport:
        """Add files/folders to a collection. Per-file problems land in `report.failed`; nothing raises for them.

        A document's source is its path relative to the folder named in `paths` (a file named directly: its
        name), the one form every face shows (see `source_name`). `source_names` maps a file path to the source
        to store instead (uploads arrive under temporary paths; keyed by their own name, a changed upload
        replaces its earlier version instead of adding a copy).
        """
        started = time.perf_counter()
        if isinstance(paths, str | Path):
            paths = [paths]
        check_collection_name(collection)
        if chunk_overlap >= chunk_size:
            raise ValueError(f"chunk_overlap ({chunk_overlap}) must be smaller than chunk_size ({chunk_size})")
        self._ensure_collection(collection)
        ensure_vector_index(self.pool)
        report = IngestReport()
        files, problems = discover(paths, glob)
        report.failed.extend(problems)
        wave: list[_PreparedFile] = []
        renames = {str(Path(k).resolve()): v for k, v in (source_names or {}).items()}
        roots = [Path(p).expanduser().resolve() for p in paths]
        names = {str(f): renames.get(str(f)) or source_name(f, roots) for f in files}
        self._adopt_legacy_sources(collection, names)
        from tqdm.auto import tqdm

        with (
            tqdm(total=len(files), unit="file", desc="ingest", disable=not progress) as bar,
            DeferredVectorIndex(self.pool) as deferred,
        ):
            for path in files:
                source = names[str(path)]
                prepared = self._prepare_or_report(path, collection, chunk_size, chunk_overlap, source, report)
                if prepared is not None and not prepared.docs:
                    report.unchanged.append(str(path))
                elif prepared is not None:
                    wave.append(prepared)
                    if sum(p.n_chunks for p in wave) >= _WAVE_CHUNKS:
                        self._flush(wave, collection, report, progress, deferred)
                        bar.update(len(wave))
                        wave = []
                if prepared is None or not prepared.docs:
                    bar.update(1)
            self._flush(wave, collection, report, progress, deferred)
            bar.update(len(wave))
        if report.chunks >= _ANALYZE_AFTER_CHUNKS:
            self._analyze()
        report.seconds = time.perf_counter() - started
        log.info("ingest into %s: %s", collection, report.summary())
        return report

    def _ensure_collection(self, collection: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO collections (name, embedding_model) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                (collection, self.embedder.name),
            )
            row = conn.execute("SELECT embedding_model FROM collections WHERE name = %s", (collection,)).fetchone()
            if row[0] is None:
                conn.execute(
                    "UPDATE collections SET embedding_model = %s WHERE name = %s", (self.embedder.name, collection)
                )
            elif row[0] != self.embedder.name:
                raise ValueError(
                    f"collection {collection!r} was built with embedding model {row[0]!r}, "
                    f"not {self.embedder.name!r}: use that model or another collection"
                )

    def _adopt_legacy_sources(self, collection: str, names: Mapping[str, str]) -> None:
        """Rows stored before sources took their relative form (keyed by the file's absolute path) take the new
        form, so a changed file still replaces its earlier version instead of being stored a second time."""
        renamed = {old: new for old, new in names.items() if old != new}
        if not renamed:
            return
        with self.pool.connection() as conn, conn.transaction():
            legacy = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM documents WHERE collection = %s AND starts_with(source, '/'))",
                (collection,),
            ).fetchone()[0]
            if not legacy:
                return
            olds, news = list(renamed), list(renamed.values())
            conn.execute(
                "UPDATE documents d SET source = m.new FROM unnest(%s::text[], %s::text[]) AS m(old, new)"
                " WHERE d.collection = %s AND d.source = m.old",
                (olds, news, collection),
            )
            records = [(old, new) for old, new in renamed.items() if Path(old).suffix.lower() in RECORD_SUFFIXES]
            if records:  # one document per record, stored as "<path>#<record id>"
                conn.execute(
                    "UPDATE documents d SET source = m.new || substr(d.source, length(m.old) + 1)"
                    " FROM unnest(%s::text[], %s::text[]) AS m(old, new)"
                    " WHERE d.collection = %s AND starts_with(d.source, m.old || '#')",
                    ([old for old, _ in records], [new for _, new in records], collection),
                )

    def _prepare_or_report(
        self, path: Path, collection: str, chunk_size: int, chunk_overlap: int, source: str | None, report: IngestReport
    ) -> _PreparedFile | None:
        """`_prepare`, or None with the reason in `report.failed`: one bad file must not sink the others."""
        try:
            return self._prepare(path, collection, chunk_size, chunk_overlap, source)
        except LoadError as exc:
            report.failed.append((str(path), str(exc)))
        except Exception as exc:  # a loader bug must not sink the other files
            log.exception("unexpected error loading %s", path)
            report.failed.append((str(path), f"{type(exc).__name__}: {exc}"))
        return None

    def _prepare(
        self, path: Path, collection: str, chunk_size: int, chunk_overlap: int, source: str | None = None
    ) -> _PreparedFile:
        """Load and chunk one file, dropping documents already stored with the same content."""
        if path.suffix.lower() not in RECORD_SUFFIXES:
            try:
                sha = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as exc:
                raise LoadError(f"cannot read file: {exc.strerror or exc}") from None
            if self._existing_shas(collection, [sha]):
                return _PreparedFile(str(path), [])
        docs = load_file(path)
        if source:
            for doc in docs:  # records keep their "#id" suffix after the file's name
                doc.source = source + doc.source[len(str(path)) :]
                if doc.title == path.stem:  # a title taken from the temporary file name: use the real one
                    doc.title = Path(source).stem
        unique: dict[str, LoadedDocument] = {}
        for doc in docs:
            unique.setdefault(doc.sha256, doc)
        known = self._existing_shas(collection, list(unique))
        fresh = [doc for sha, doc in unique.items() if sha not in known]
        chunked = [(doc, chunk_document(doc, chunk_size, chunk_overlap)) for doc in fresh]
        return _PreparedFile(str(path), [(doc, chunks) for doc, chunks in chunked if chunks])

    def _existing_shas(self, collection: str, shas: list[str]) -> set[str]:
        if not shas:
            return set()
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT sha256 FROM documents WHERE collection = %s AND sha256 = ANY(%s)", (collection, shas)
            ).fetchall()
        return {row[0] for row in rows}

    def _flush(
        self,
        wave: list[_PreparedFile],
        collection: str,
        report: IngestReport,
        progress: bool,
        deferred: DeferredVectorIndex,
    ) -> None:
        if not wave:
            return
        deferred.consider(report.chunks + sum(p.n_chunks for p in wave))
        inputs: list[str] = []
        hashes: list[bytes] = []
        for prepared in wave:
            for doc, chunks in prepared.docs:
                for chunk in chunks:
                    inputs.append(chunk.embedding_input(doc.title))
                    hashes.append(chunk.content_hash(doc.title))
        vectors, embedded = self._vectors(inputs, hashes, progress=progress)
        report.embedded += embedded
        position = 0
        for prepared in wave:
            n = prepared.n_chunks
            try:
                status, docs_written, chunks_written = self._write_file(
                    prepared, collection, vectors[position : position + n], hashes[position : position + n]
                )
            except psycopg.Error as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                report.failed.append((prepared.path, f"database error: {reason}"))
                position += n
                continue
            position += n
            getattr(report, status).append(prepared.path)
            report.documents += docs_written
            report.chunks += chunks_written

    def _vectors(self, inputs: list[str], hashes: list[bytes], *, progress: bool = False) -> tuple[np.ndarray, int]:
        """A vector per input: from the embedding cache where this model embedded the same content before, else
        embedded now; and how many were embedded."""
        vectors = np.zeros((len(inputs), self.embedder.dim), dtype=np.float32)
        cached = self._cached_vectors(hashes)
        todo = [i for i, h in enumerate(hashes) if h not in cached]
        for i, h in enumerate(hashes):
            if h in cached:
                vectors[i] = cached[h]
        if todo:
            vectors[todo] = self.embedder.embed_documents([inputs[i] for i in todo], show_progress=progress)
        return vectors, len(todo)

    def _cached_vectors(self, hashes: list[bytes]) -> dict[bytes, np.ndarray]:
        """Stored vectors for chunk inputs this model has embedded before (any collection using the same model)."""
        if not hashes:
            return {}
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT DISTINCT ON (c.content_sha256) c.content_sha256, c.embedding FROM chunks c"
                " JOIN documents d ON d.id = c.document_id JOIN collections col ON col.name = d.collection"
                " WHERE c.content_sha256 = ANY(%s) AND col.embedding_model = %s",
                (list(set(hashes)), self.embedder.name),
            ).fetchall()
        return {bytes(h): np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32) for h, v in rows}

    def _write_file(
        self, prepared: _PreparedFile, collection: str, vectors: np.ndarray, hashes: list[bytes]
    ) -> tuple[str, int, int]:
        """One transaction: drop the old versions of these sources, insert the new documents and their chunks."""
        docs = [doc for doc, _ in prepared.docs]
        with self.pool.connection() as conn, conn.transaction():
            lock_key = f"{collection}|{prepared.path}"
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock_key,))
            replaced = conn.execute(
                "DELETE FROM documents d USING unnest(%s::text[], %s::text[]) AS n(source, sha)"
                " WHERE d.collection = %s AND d.source = n.source AND d.sha256 <> n.sha RETURNING d.id",
                ([d.source for d in docs], [d.sha256 for d in docs], collection),
            ).fetchall()
            inserted = conn.execute(
                "INSERT INTO documents (collection, source, title, sha256, metadata)"
                " SELECT %s, s, t, h, m::jsonb"
                " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS n(s, t, h, m)"
                " ON CONFLICT (collection, sha256) DO NOTHING RETURNING id, sha256",
                (
                    collection,
                    [d.source for d in docs],
                    [d.title for d in docs],
                    [d.sha256 for d in docs],
                    [json.dumps(d.metadata, default=str) for d in docs],
                ),
            ).fetchall()
            ids = {sha: doc_id for doc_id, sha in inserted}
            with conn.cursor() as cur, cur.copy(_CHUNKS_COPY) as copy:
                copy.set_types(_CHUNKS_COPY_TYPES)
                row = written = 0
                for doc, chunks in prepared.docs:
                    doc_id = ids.get(doc.sha256)
                    for chunk in chunks:
                        if doc_id is not None:
                            copy.write_row(
                                (
                                    doc_id,
                                    chunk.ordinal,
                                    chunk.text,
                                    chunk.page,
                                    chunk.char_start,
                                    chunk.char_end,
                                    chunk.heading,
                                    Jsonb(chunk.metadata),
                                    vectors[row],
                                    hashes[row],
                                )
                            )
                            written += 1
                        row += 1
        status = "replaced" if replaced else "added" if inserted else "unchanged"
        return status, len(inserted), written

    # ------------------------------------------------------------------ search
    def search(
        self,
        query: str,
        *,
        collection: str | Sequence[str] | None = None,
        k: int = 5,
        mode: SearchMode = "hybrid",
        filters: dict | None = None,
        embedding: np.ndarray | None = None,
    ) -> list[SearchHit]:
        """Top-k chunks for a query. `embedding` skips embedding the query (it must come from the same model)."""
        if mode not in SEARCH_MODES:
            raise ValueError(f"mode must be one of {', '.join(SEARCH_MODES)}, not {mode!r}")
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        where, params = _filter_clause(collection, filters)
        # Only a collection filter keeps the pruned BM25 path exact enough; other filters score filtered chunks fully.
        exact = any(name != "f_collections" for name in params)
        scope = "ts.collection = ANY(%(f_collections)s)" if "f_collections" in params else "TRUE"
        params.update(q=query, w_dense=self.dense_weight, w_keyword=self.keyword_weight, alpha=self.alpha)
        if mode != "keyword":
            vector = self.embedder.embed_query(query) if embedding is None else np.asarray(embedding, np.float32)
            params["vec"] = vector
        # Each side of a hybrid search hands over its top max(candidates, k): any chunk in either top-k is a candidate
        # (2k per side doubled the exact-scoring work at k=100 for the same SciFact nDCG@10).
        n = k if mode == "dense" else max(self.candidates, k)
        # Row counts are written into the statement as integer literals, not bound: with LIMIT $n the planner cannot
        # trust its cached generic plan (10x slower here), so it re-planned every query (3-4 ms of a ~10 ms hybrid
        # search); with literals the plan is cached per (k, settings). They are ints from this object, never input.
        # `pool` leaves room for chunks dropped by a -negated term.
        sizes = {"k": k, "n": n, "pool": n + 20, "depth": self.bm25_depth, "rrf_k": self.rrf_k}
        if mode == "dense":
            sql = _DENSE_SQL.replace("{where}", where)
        elif mode == "keyword":
            sql = _KEYWORD_SQL.replace("{ctes}", keyword_ctes(where, scope, exact))
        else:
            ctes = hybrid_ctes(where, scope, exact, self.fusion)
            sql = _HYBRID_SQL.replace("{where}", where).replace("{ctes}", ctes)
        for name, value in sizes.items():
            sql = sql.replace(f"%({name})s", str(int(value)))
        with self.pool.connection() as conn:
            try:
                if mode != "keyword":
                    _use_hnsw_settings(conn, max(self.ef_search, n), session=self.prepare)
                rows = conn.execute(sql, params, prepare=None if self.prepare else False).fetchall()
            except BaseException:
                _HNSW_SESSION.pop(conn, None)  # a rollback undoes the session SET too
                raise
        return [_hit(row) for row in rows]

    # ------------------------------------------------------------------ management
    def list_collections(self) -> list[CollectionInfo]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT col.name, col.description, col.embedding_model,"
                " count(DISTINCT d.id), count(c.id), col.created_at"
                " FROM collections col LEFT JOIN documents d ON d.collection = col.name"
                " LEFT JOIN chunks c ON c.document_id = d.id GROUP BY col.name ORDER BY col.name"
            ).fetchall()
        return [CollectionInfo(*row) for row in rows]

    def list_documents(self, collection: str | None = None) -> list[DocumentInfo]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT d.id, d.collection, d.source, d.title, d.sha256,"
                " (SELECT count(*) FROM chunks c WHERE c.document_id = d.id), d.metadata, d.ingested_at"
                " FROM documents d WHERE %(c)s::text IS NULL OR d.collection = %(c)s"
                " ORDER BY d.collection, d.source, d.id",
                {"c": collection},
            ).fetchall()
        return [DocumentInfo(*row) for row in rows]

    def delete_document(self, document_id: int) -> bool:
        with self.pool.connection() as conn:
            return conn.execute("DELETE FROM documents WHERE id = %s", (document_id,)).rowcount > 0

    def delete_collection(self, name: str) -> bool:
        with self.pool.connection() as conn:
            return conn.execute("DELETE FROM collections WHERE name = %s", (name,)).rowcount > 0

    # ------------------------------------------------------------------ texts by key (the LangChain VectorStore)
    def put_texts(self, collection: str, records: Sequence[TextRecord]) -> None:
        """Store each text as a one-chunk document whose source is its key, replacing whatever that key held.

        One transaction for all of them, like one ingested file: the BM25 triggers count the new chunks, vectors of
        texts this model embedded before are reused, and a failure leaves the collection as it was. A key given
        twice keeps its last text.
        """
        check_collection_name(collection)
        latest = {record.key: record for record in records}
        for record in latest.values():
            if not record.key:
                raise ValueError("a text's key (its id) must not be empty")
            if "\x00" in record.key or "\x00" in record.text:
                raise ValueError(f"text {record.key[:50]!r}: NUL characters cannot be stored")
        if not latest:
            return
        self._ensure_collection(collection)
        ensure_vector_index(self.pool)
        keys = list(latest)
        texts = [latest[key].text for key in keys]
        hashes = [hashlib.sha256(text.encode("utf-8")).digest() for text in texts]  # Chunk.content_hash, no title
        vectors, _ = self._vectors(texts, hashes)
        if any(without_nul(latest[key].metadata) != latest[key].metadata for key in keys):
            raise ValueError("metadata: NUL characters cannot be stored")
        metadata = [json.dumps(latest[key].metadata, default=str, sort_keys=True) for key in keys]
        # The key is part of the hash: the same text under two keys is two documents, as LangChain expects.
        shas = [
            hashlib.sha256(json.dumps([key, text, meta], ensure_ascii=False).encode("utf-8")).hexdigest()
            for key, text, meta in zip(keys, texts, metadata, strict=True)
        ]
        with self.pool.connection() as conn, conn.transaction():
            with conn.cursor() as cur:  # a lock per key, taken in one order: two writers of a key queue, never deadlock
                locks = [(f"{collection}|{key}",) for key in sorted(keys)]
                cur.executemany("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", locks)
            conn.execute("DELETE FROM documents WHERE collection = %s AND source = ANY(%s)", (collection, keys))
            inserted = conn.execute(
                "INSERT INTO documents (collection, source, title, sha256, metadata)"
                " SELECT %s, s, '', h, m::jsonb FROM unnest(%s::text[], %s::text[], %s::text[]) AS n(s, h, m)"
                " RETURNING id, source",
                (collection, keys, shas, metadata),
            ).fetchall()
            ids = {source: doc_id for doc_id, source in inserted}
            with conn.cursor() as cur, cur.copy(_CHUNKS_COPY) as copy:
                copy.set_types(_CHUNKS_COPY_TYPES)
                for i, key in enumerate(keys):
                    row = (ids[key], 0, texts[i], None, 0, len(texts[i]), "", Jsonb({}), vectors[i], hashes[i])
                    copy.write_row(row)

    def texts_by_source(self, collection: str, sources: Sequence[str]) -> list[StoredChunk]:
        """The chunks of the documents with these sources, in the order asked and then chunk order; unknown
        sources are left out."""
        if not sources:
            return []
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT d.source, c.text, d.metadata || c.metadata, c.id, c.ordinal"
                " FROM unnest(%s::text[]) WITH ORDINALITY AS w(source, position)"
                " JOIN documents d ON d.collection = %s AND d.source = w.source"
                " JOIN chunks c ON c.document_id = d.id ORDER BY w.position, d.id, c.ordinal",
                (list(dict.fromkeys(sources)), collection),
            ).fetchall()
        return [StoredChunk(*row) for row in rows]

    def delete_sources(self, collection: str, sources: Sequence[str] | None = None) -> int:
        """Delete the documents with these sources (None: every document; the collection stays); how many went."""
        with self.pool.connection() as conn:
            if sources is None:
                return conn.execute("DELETE FROM documents WHERE collection = %s", (collection,)).rowcount
            return conn.execute(
                "DELETE FROM documents WHERE collection = %s AND source = ANY(%s)", (collection, list(sources))
            ).rowcount

    def _analyze(self) -> None:
        with self.pool.connection() as conn:
            for table in ("chunks", "documents", "bm25_postings"):
                conn.execute(f"ANALYZE {table}")

    def rebuild_indexes(self, maintenance_work_mem: str = "1GB") -> None:
        """Rebuild the HNSW and full-text indexes without blocking readers (after a very large bulk load)."""
        with maintenance_connection(self.pool, maintenance_work_mem) as conn:
            for index in ("chunks_embedding_hnsw_idx", "chunks_tsv_idx", "bm25_postings_impact_idx"):
                conn.execute(f"REINDEX INDEX CONCURRENTLY {index}")


# ef_search last set on each pooled connection. Setting an hnsw.* parameter costs ~2 ms of the next query's time on
# this server even when the value is unchanged (measured: 9.4 -> 12.1 ms p50 at 100k chunks), so it is set at session
# level once per connection and value instead of SET LOCAL per query. Only HNSW scans read these parameters.
_HNSW_SESSION: weakref.WeakKeyDictionary[psycopg.Connection, int] = weakref.WeakKeyDictionary()


def _use_hnsw_settings(conn: psycopg.Connection, ef_search: int, *, session: bool) -> None:
    """`session=False` sets them for this transaction only: behind a transaction pooler (statements not prepared),
    a session SET would reach whichever client gets that server connection next."""
    if session and _HNSW_SESSION.get(conn) == ef_search:
        return
    local = not session
    conn.execute(
        "SELECT set_config('hnsw.ef_search', %s, %s), set_config('hnsw.iterative_scan', 'relaxed_order', %s)",
        (str(ef_search), local, local),
    )
    if session:
        _HNSW_SESSION[conn] = ef_search


# Filter keys that are columns; every other key is matched against document or chunk metadata (jsonb @>).
_COLUMN_FILTERS = {"source": "d.source", "title": "d.title", "document_id": "d.id", "page": "c.page"}


def _filter_clause(collection: str | Sequence[str] | None, filters: dict | None) -> tuple[str, dict[str, Any]]:
    """A WHERE clause from fixed templates plus the bound values; nothing a caller passes is spliced into SQL."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    filters = dict(filters or {})
    collections: list[str] = []
    if collection is not None:
        collections += [collection] if isinstance(collection, str) else list(collection)
    if "collection" in filters:
        value = filters.pop("collection")
        wanted = [value] if isinstance(value, str) else list(value)
        collections = [c for c in collections if c in wanted] if collections else wanted
        if not collections:
            collections = [""]  # matches nothing: names are never empty
    if collections:
        clauses.append("d.collection = ANY(%(f_collections)s)")
        params["f_collections"] = [str(c) for c in collections]
    for key, column in _COLUMN_FILTERS.items():
        if key in filters:
            value = filters.pop(key)
            values = list(value) if isinstance(value, list | tuple | set) else [value]
            if key in ("document_id", "page"):
                try:
                    values = [int(v) for v in values]
                except (TypeError, ValueError):
                    raise ValueError(f"filter {key!r} needs integers, not {value!r}") from None
                clauses.append(f"{column} = ANY(%(f_{key})s::bigint[])")
            else:
                values = [str(v) for v in values]
                clauses.append(f"{column} = ANY(%(f_{key})s::text[])")
            params[f"f_{key}"] = values
    if filters:
        clauses.append("(d.metadata @> %(f_meta)s OR c.metadata @> %(f_meta)s)")
        params["f_meta"] = Jsonb(filters)
    return (" AND ".join(clauses) or "TRUE"), params


_SELECT_HIT = (
    "c.id, d.id, d.collection, d.source, d.title, c.page, c.heading, c.text, c.char_start, c.char_end,"
    " d.metadata || c.metadata"
)

_DENSE_SQL = """
SELECT {{select}}, greatest(0, 1 - s.dist)::float8 AS score, s.rank, NULL::bigint, NULL::float8
FROM (SELECT id, dist, row_number() OVER (ORDER BY dist, id) AS rank FROM (
        SELECT c.id, c.embedding <=> %(vec)s AS dist
        FROM chunks c JOIN documents d ON d.id = c.document_id
        WHERE {where}
        ORDER BY c.embedding <=> %(vec)s LIMIT %(n)s) x) s
JOIN chunks c ON c.id = s.id JOIN documents d ON d.id = c.document_id
ORDER BY s.rank LIMIT %(k)s
""".replace("{{select}}", _SELECT_HIT)

_KEYWORD_SQL = """
WITH {ctes}
SELECT {{select}}, least(1, k.norm)::float8 AS score, NULL::bigint, k.rank, NULL::float8
FROM keyword k JOIN chunks c ON c.id = k.id JOIN documents d ON d.id = c.document_id
ORDER BY k.rank LIMIT %(k)s
""".replace("{{select}}", _SELECT_HIT)

_HYBRID_SQL = """
WITH dense AS (
    SELECT id, row_number() OVER (ORDER BY dist, id) AS rank FROM (
        SELECT c.id, c.embedding <=> %(vec)s AS dist
        FROM chunks c JOIN documents d ON d.id = c.document_id
        WHERE {where}
        ORDER BY c.embedding <=> %(vec)s LIMIT %(n)s) x
), {ctes}
SELECT {{select}}, greatest(0, f.cos)::float8 AS score, f.dense_rank, f.keyword_rank, f.fused::float8
FROM fused f JOIN chunks c ON c.id = f.id JOIN documents d ON d.id = c.document_id
ORDER BY f.fused DESC, c.id LIMIT %(k)s
""".replace("{{select}}", _SELECT_HIT)


def _hit(row: tuple) -> SearchHit:
    (chunk_id, doc_id, collection, source, title, page, heading, text, start, end, metadata, score, dr, kr, fused) = row
    ranks = {name: value for name, value in (("dense", dr), ("keyword", kr), ("fused", fused)) if value is not None}
    return SearchHit(
        chunk_id=chunk_id,
        document_id=doc_id,
        collection=collection,
        source=source,
        title=title,
        page=page,
        heading=heading,
        text=text,
        char_start=start,
        char_end=end,
        score=min(1.0, max(0.0, float(score))),
        metadata=metadata or {},
        ranks=ranks,
    )
