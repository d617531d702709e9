"""Knowledge store against the real PostgreSQL and the real MiniLM embedder: loaders, idempotency, atomic
replace, corrupt files, filters (incl. an injection attempt), the LangChain retriever and the CLI."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from knowledge.chunking import chunk_document
from knowledge.embedding import get_embedder
from knowledge.evaluation import mrr_at_k, ndcg_at_k, recall_at_k
from knowledge.loaders import LoadError, load_file, markdown_sections
from knowledge.retriever import KnowledgeRetriever
from knowledge.store import KnowledgeStore

MARKDOWN = """# Returns policy

Intro to how returns work at the shop.

## Refund window

Customers may return goods within thirty days; the zephyrine refund is paid to the original card.

## Shipping

Return shipping is free for damaged items.
"""


def _pdf(path: Path, pages: list[str]) -> None:
    """A real text PDF built with pypdf (one Helvetica line per page)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    font = writer._add_object(
        DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
            }
        )
    )
    for text in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(stream)
    with path.open("wb") as handle:
        writer.write(handle)


def _docx(path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("Warranty terms", level=1)
    document.add_paragraph("The quorbital warranty covers manufacturing defects for two years.")
    document.save(str(path))


def _corpus(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "txt": folder / "notes.txt",
        "md": folder / "guide" / "returns.md",
        "html": folder / "faq.html",
        "pdf": folder / "manual.pdf",
        "docx": folder / "warranty.docx",
        "jsonl": folder / "corpus.jsonl",
        "csv": folder / "products.csv",
    }
    files["md"].parent.mkdir(exist_ok=True)
    files["txt"].write_text("Office hours: the plumbrix helpdesk opens at nine in the morning.\n")
    files["md"].write_text(MARKDOWN)
    files["html"].write_text(
        "<html><head><title>FAQ</title><script>var x='scriptword';</script></head><body>"
        "<h1>Frequently asked</h1><h2>Passwords</h2><p>Reset your password with the vextral link.</p></body></html>"
    )
    _pdf(files["pdf"], ["Chapter one introduces the device.", "Page two explains the glimmerstat calibration."])
    _docx(files["docx"])
    files["jsonl"].write_text(
        json.dumps({"_id": "d1", "title": "Aspirin", "text": "Aspirin lowers the risk of a snorvel event."})
        + "\n"
        + json.dumps({"_id": "d2", "title": "Statins", "text": "Statins reduce cholesterol.", "metadata": {"y": 1}})
        + "\n"
    )
    files["csv"].write_text("id,name,text,category\np1,Kettle,The brontal kettle boils water fast.,kitchen\n")
    return files


@pytest.fixture(scope="module")
def store(db) -> KnowledgeStore:
    return KnowledgeStore(db.pool, get_embedder())


@pytest.fixture()
def collection() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _chunk_count(store: KnowledgeStore, collection: str) -> int:
    return sum(info.chunks for info in store.list_collections() if info.name == collection)


# ---------------------------------------------------------------- unit: no database


def test_markdown_sections_keep_heading_paths_and_offsets() -> None:
    sections = markdown_sections(MARKDOWN + "```\n# not a heading\n```\n")
    headings = [s.heading for s in sections]
    assert headings == ["Returns policy", "Returns policy > Refund window", "Returns policy > Shipping"]
    for section in sections:
        assert (MARKDOWN + "```\n# not a heading\n```\n")[section.offset :].startswith(section.text)


def test_chunk_spans_point_into_the_text_and_overlap(tmp_path: Path) -> None:
    path = tmp_path / "long.md"
    body = "# Long\n\n" + " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(200))
    path.write_text(body)
    (doc,) = load_file(path)
    chunks = chunk_document(doc, chunk_size=300, chunk_overlap=60)
    assert len(chunks) > 5
    for chunk in chunks:
        assert body[chunk.char_start : chunk.char_end] == chunk.text
        assert len(chunk.text) <= 300 + 200
        assert chunk.heading == "Long"
    assert any(a.char_end > b.char_start for a, b in zip(chunks, chunks[1:], strict=False))


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("broken.pdf", os.urandom(2048), "PDF"),
        ("empty.txt", b"", "empty"),
        ("junk.txt", bytes(range(256)) * 8, "binary"),
        ("latin.md", "caf\xe9 cr\xe8me".encode("latin-1"), "UTF-8"),
        ("bad.jsonl", b'{"text": "ok"}\n{not json\n', "line 2"),
        ("broken.docx", b"PK\x03\x04 not really a zip", "DOCX"),
        ("picture.png", b"\x89PNG....", "unsupported"),
    ],
)
def test_loader_errors_name_the_reason(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LoadError, match=reason):
        load_file(path)


def test_metrics_match_hand_computed_values() -> None:
    relevant = {"a": 1, "b": 1}
    assert ndcg_at_k(["a", "b", "x"], relevant) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "a"], relevant) == pytest.approx((1 / 1.5849625) / (1 + 1 / 1.5849625), rel=1e-6)
    assert recall_at_k(["x", "a"], relevant, 10) == 0.5
    assert mrr_at_k(["x", "y", "b"], relevant) == pytest.approx(1 / 3)
    assert mrr_at_k(["x"], relevant) == 0.0


# ---------------------------------------------------------------- integration: real server + embedder


def test_round_trip_of_each_file_type(store: KnowledgeStore, collection: str, tmp_path: Path) -> None:
    files = _corpus(tmp_path / "kb")
    report = store.ingest([tmp_path / "kb"], collection)
    assert report.failed == []
    assert sorted(report.added) == sorted(str(p.resolve()) for p in files.values())
    assert report.documents == 8  # 5 single-document files, 2 jsonl records, 1 csv record
    expectations = {
        "plumbrix": ("notes.txt", None),
        "zephyrine": ("returns.md", None),
        "vextral": ("faq.html", None),
        "glimmerstat": ("manual.pdf", 2),
        "quorbital": ("warranty.docx", None),
        "snorvel": ("corpus.jsonl#d1", None),
        "brontal": ("products.csv#p1", None),
    }
    for word, (suffix, page) in expectations.items():
        hits = store.search(word, collection=collection, k=3, mode="keyword")
        assert hits, word
        assert hits[0].source.endswith(suffix), (word, hits[0].source)
        assert hits[0].page == page
        assert 0.0 <= hits[0].score <= 1.0
    (md_hit,) = store.search("zephyrine", collection=collection, k=1, mode="keyword")
    assert md_hit.heading == "Returns policy > Refund window"
    assert MARKDOWN[md_hit.char_start : md_hit.char_end] == md_hit.text
    (docx_hit,) = store.search("quorbital", collection=collection, k=1, mode="keyword")
    assert docx_hit.heading == "Warranty terms" and docx_hit.title == "Warranty terms"
    (html_hit,) = store.search("vextral", collection=collection, k=1, mode="keyword")
    assert html_hit.title == "FAQ" and "Passwords" in html_hit.heading
    assert store.search("scriptword", collection=collection, mode="keyword") == []
    (record,) = store.search("snorvel", collection=collection, k=1, mode="keyword")
    assert record.title == "Aspirin" and record.metadata["record_id"] == "d1"


def test_dense_and_hybrid_find_paraphrases(store: KnowledgeStore, collection: str, tmp_path: Path) -> None:
    _corpus(tmp_path / "kb")
    store.ingest([tmp_path / "kb"], collection)
    question = "how many days do I have to send a purchase back for my money?"
    for mode in ("dense", "hybrid"):
        hits = store.search(question, collection=collection, k=3, mode=mode)
        assert hits[0].source.endswith("returns.md"), (mode, [h.source for h in hits])
        assert all(0.0 <= h.score <= 1.0 for h in hits)
    dense = store.search(question, collection=collection, k=5, mode="dense")
    assert [h.score for h in dense] == sorted((h.score for h in dense), reverse=True)
    unrelated = store.search("quantum chromodynamics lattice gauge", collection=collection, k=1, mode="dense")
    assert unrelated[0].score < dense[0].score


def test_reingest_is_a_no_op(store: KnowledgeStore, collection: str, tmp_path: Path) -> None:
    _corpus(tmp_path / "kb")
    first = store.ingest([tmp_path / "kb"], collection)
    chunks = _chunk_count(store, collection)
    second = store.ingest([tmp_path / "kb"], collection)
    assert second.added == [] and second.replaced == [] and second.failed == []
    assert len(second.unchanged) == len(first.added)
    assert second.chunks == 0 and second.embedded == 0
    assert _chunk_count(store, collection) == chunks


def test_changed_file_replaces_its_chunks(store: KnowledgeStore, collection: str, tmp_path: Path) -> None:
    path = tmp_path / "returns.md"
    path.write_text(MARKDOWN)
    store.ingest([path], collection)
    path.write_text(MARKDOWN.replace("zephyrine refund", "xylocarp refund"))
    report = store.ingest([path], collection)
    assert report.replaced == [str(path.resolve())]
    assert report.embedded < report.chunks  # unchanged sections reuse their stored vectors
    docs = store.list_documents(collection)
    assert len(docs) == 1 and docs[0].source == "returns.md"  # a file named directly: its name
    assert store.search("zephyrine", collection=collection, mode="keyword") == []
    assert store.search("xylocarp", collection=collection, mode="keyword")


def test_source_names_key_uploads_by_their_own_name(store: KnowledgeStore, collection: str, tmp_path: Path) -> None:
    """Uploads land in a fresh temporary folder each time; their stored name keeps a new version a replacement."""
    first, second = tmp_path / "upload-1" / "returns.md", tmp_path / "upload-2" / "returns.md"
    for path, text in ((first, MARKDOWN), (second, MARKDOWN.replace("zephyrine refund", "xylocarp refund"))):
        path.parent.mkdir()
        path.write_text(text)
    store.ingest([first], collection, source_names={str(first): "returns.md"})
    report = store.ingest([second], collection, source_names={str(second): "returns.md"})
    assert report.replaced == [str(second.resolve())]
    docs = store.list_documents(collection)
    assert [d.source for d in docs] == ["returns.md"]
    assert store.search("zephyrine", collection=collection, mode="keyword") == []
    assert store.search("xylocarp", collection=collection, mode="keyword")


def test_corrupt_files_are_reported_and_the_rest_go_in(store: KnowledgeStore, collection: str, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.txt").write_text("The trelliswick meeting is on Friday.")
    (folder / "broken.pdf").write_bytes(os.urandom(4096))
    (folder / "empty.txt").write_bytes(b"")
    (folder / "junk.txt").write_bytes(os.urandom(4096).replace(b"\x00", b"\x01") + b"\x00")
    (folder / "latin.txt").write_bytes("na\xefve caf\xe9".encode("latin-1"))
    report = store.ingest([folder, tmp_path / "missing.md"], collection)
    assert report.added == [str((folder / "good.txt").resolve())]
    failed = dict(report.failed)
    assert set(failed) == {
        str((folder / n).resolve()) for n in ("broken.pdf", "empty.txt", "junk.txt", "latin.txt")
    } | {str(tmp_path / "missing.md")}
    assert all(reason for reason in failed.values())
    assert [d.source for d in store.list_documents(collection)] == ["good.txt"]  # relative to the folder


def test_a_changed_file_that_fails_keeps_its_old_version(
    store: KnowledgeStore, collection: str, tmp_path: Path
) -> None:
    path = tmp_path / "returns.md"
    path.write_text(MARKDOWN)
    store.ingest([path], collection)
    before = store.list_documents(collection)
    path.write_bytes(b"\x00\x01\x02 binary junk" * 100)
    report = store.ingest([path], collection)
    assert [p for p, _ in report.failed] == [str(path.resolve())] and "binary" in report.failed[0][1]
    assert store.list_documents(collection) == before
    assert store.search("zephyrine", collection=collection, mode="keyword")


def test_filters_are_bound_parameters(store: KnowledgeStore, collection: str, tmp_path: Path) -> None:
    _corpus(tmp_path / "kb")
    store.ingest([tmp_path / "kb"], collection)
    for mode in ("dense", "keyword", "hybrid"):
        for filters in (
            {"source": "x' OR 1=1 --"},
            {"collection": "x' OR 1=1 --"},
            {"x' OR 1=1 --": "1"},
            {"type": "md') OR TRUE --"},
        ):
            assert store.search("refund warranty helpdesk", collection=collection, mode=mode, filters=filters) == []
    md = "guide/returns.md"  # sources are relative to the ingested folder
    hits = store.search("refund", collection=collection, k=10, mode="hybrid", filters={"source": md})
    assert hits and {h.source for h in hits} == {md}
    typed = store.search("warranty", collection=collection, k=10, mode="dense", filters={"type": "docx"})
    assert typed and {h.source for h in typed} == {"warranty.docx"}
    nested = store.search("cholesterol", collection=collection, k=10, mode="hybrid", filters={"y": 1})
    assert [h.metadata["record_id"] for h in nested] == ["d2"]
    other = store.search("refund", collection=f"{collection}-other", mode="hybrid")
    assert other == []


def test_langchain_retriever(store: KnowledgeStore, collection: str, tmp_path: Path) -> None:
    _corpus(tmp_path / "kb")
    store.ingest([tmp_path / "kb"], collection)
    retriever = KnowledgeRetriever(store=store, collection=collection, k=2, mode="hybrid")
    documents = retriever.invoke("when does the helpdesk open?")
    assert 1 <= len(documents) <= 2
    assert documents[0].metadata["source"].endswith("notes.txt")
    assert {"score", "page", "heading", "char_start", "chunk_id"} <= set(documents[0].metadata)
    assert len(retriever.invoke("when does the helpdesk open?", k=1)) == 1  # LangChain's per-call k is honoured
    with pytest.raises(TypeError, match="unknown search arguments"):
        retriever.invoke("when does the helpdesk open?", top=3)


def test_list_and_delete(store: KnowledgeStore, collection: str, tmp_path: Path) -> None:
    _corpus(tmp_path / "kb")
    store.ingest([tmp_path / "kb"], collection)
    docs = store.list_documents(collection)
    assert len(docs) == 8
    assert store.delete_document(docs[0].id) is True
    assert store.delete_document(docs[0].id) is False
    assert len(store.list_documents(collection)) == 7
    assert store.delete_collection(collection) is True
    assert store.list_documents(collection) == []
    assert collection not in {c.name for c in store.list_collections()}


def test_cli_ingest_search_docs_and_eval(settings, db, tmp_path: Path, monkeypatch) -> None:
    from bot.cli import cli

    monkeypatch.setenv("RAGTUNE_DATABASE_URL", db.url)
    monkeypatch.setenv("RAGTUNE_HOME", str(settings.home))
    collection = f"cli-{uuid.uuid4().hex[:8]}"
    _corpus(tmp_path / "kb")
    bad = tmp_path / "kb" / "bad.pdf"
    bad.write_bytes(b"%PDF-1.4 garbage")
    runner = CliRunner()
    result = runner.invoke(cli, ["ingest", str(tmp_path / "kb"), "-c", collection, "--quiet"])
    assert result.exit_code == 1, result.output
    assert "bad.pdf" in result.output and "7 added" in result.output
    result = runner.invoke(cli, ["search", "glimmerstat calibration", "-c", collection, "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert hits[0]["source"].endswith("manual.pdf") and hits[0]["page"] == 2
    result = runner.invoke(cli, ["search", "x", "--mode", "fuzzy"])
    assert result.exit_code == 2
    result = runner.invoke(cli, ["docs", "list", "--json"])
    assert collection in {row["name"] for row in json.loads(result.output)}
    result = runner.invoke(cli, ["docs", "delete", "-c", collection, "--yes"])
    assert result.exit_code == 0, result.output

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    corpus = [
        ("c1", "Vitamin D", "Vitamin D deficiency is linked to bone fractures in the elderly."),
        ("c2", "Smoking", "Smoking causes lung cancer and heart disease."),
        ("c3", "Exercise", "Regular exercise lowers blood pressure."),
    ]
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in corpus)
    )
    queries = [("q1", "does low vitamin D cause broken bones?"), ("q2", "what does tobacco do to the lungs?")]
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries))
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tc1\t1\nq2\tc2\t1\n")
    out = tmp_path / "eval.json"
    result = runner.invoke(cli, ["eval", "retrieval", str(beir), "--json", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    scores = {r["mode"]: r for r in payload["results"]}
    assert set(scores) == {"dense", "keyword", "hybrid"}
    assert scores["dense"]["ndcg_at_10"] == pytest.approx(1.0)
    assert all(0.0 <= r["recall_at_100"] <= 1.0 for r in payload["results"])
