"""The ONNX Runtime embedder backend: exported offline from the installed wheel, same vectors as torch, fallback."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from knowledge.embedding import Embedder, locate_embedder
from knowledge.onnx_export import MODEL_FILES, ensure_onnx_export, export_key

pytestmark = pytest.mark.slow

SENTENCES = [
    "Vitamin D supplementation reduces the risk of fractures in elderly women.",
    "0-dimensional biomaterials show inductive properties.",
    "what's the refund window for orders shipped abroad?",
    "Make me laugh, I want to hear a joke.",
    "hi",
    "The p53 tumour suppressor gene is mutated in about half of all human cancers, and its loss of function "
    "promotes genomic instability, resistance to apoptosis and tumour progression in many tissue types. " * 6,
]


@pytest.fixture(scope="module", autouse=True)
def _offline(monkeypatch_module):
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch_module.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory) -> Path:
    """A fresh cache: the first Embedder exports into it (the first-use path CI takes)."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx_int8(onnx_cache: Path) -> Embedder:
    return Embedder(backend="onnx", quantize="int8", cache_dir=onnx_cache)


@pytest.fixture(scope="module")
def torch_fp32() -> Embedder:
    return Embedder(backend="torch", quantize="none")


def test_export_runs_offline_from_the_wheel_and_is_complete(onnx_int8: Embedder, onnx_cache: Path):
    assert onnx_int8.backend == "onnx"
    assert onnx_int8.description == "all-MiniLM-L6-v2 (onnx int8)"
    folder = onnx_cache / export_key(Path(locate_embedder("all-MiniLM-L6-v2")))
    for name in [*MODEL_FILES.values(), "tokenizer.json", "export.json"]:
        assert (folder / name).is_file(), name
    manifest = json.loads((folder / "export.json").read_text())
    assert manifest["dim"] == 384 and manifest["max_length"] == 256 and manifest["pooling"] == "mean"
    assert not list(onnx_cache.glob(".export-*")), "the temporary export folder was left behind"


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_onnx_vectors_match_torch_fp32(quantize, onnx_cache: Path, onnx_int8: Embedder, torch_fp32: Embedder):
    onnx = onnx_int8 if quantize == "int8" else Embedder(backend="onnx", quantize="none", cache_dir=onnx_cache)
    reference = torch_fp32.embed_documents(SENTENCES)
    batch = onnx.embed_documents(SENTENCES)
    assert batch.shape == (len(SENTENCES), 384) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-4)
    cosine = np.sum(batch * reference, axis=1)
    if quantize == "none":
        assert cosine.min() >= 0.999, cosine
    else:
        # int8 (every MatMul, per-channel weights): these short sentences measured 0.982-0.995, chunk-length texts
        # 0.994 mean. What matters downstream held: SciFact nDCG@10 and router accuracy (bench_embedder/router).
        assert cosine.mean() >= 0.985 and cosine.min() >= 0.975, cosine
    # One text at a time (the single-thread query session) gives the batch's vectors: padding does not leak in.
    # (int8 quantises activations per batch, so there the batch's other rows shift a vector slightly.)
    singles = np.stack([onnx.embed_query(text) for text in SENTENCES])
    if quantize == "none":
        np.testing.assert_allclose(singles, batch, atol=2e-3)
    else:
        # ONNX Runtime picks its int8 kernels by CPU: the minimum measured 0.98+ on AVX2 and 0.978 on an AVX-512 VNNI
        # EPYC (the same vectors in every other check), so the bound allows the wider of the two.
        assert np.sum(singles * batch, axis=1).min() >= 0.97
    assert onnx.embed_documents([]).shape == (0, 384)


def test_second_load_reuses_the_export(onnx_int8: Embedder, onnx_cache: Path, caplog):
    folder = onnx_int8.onnx.folder
    stamp = (folder / MODEL_FILES["int8"]).stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="knowledge"):
        again = Embedder(backend="onnx", quantize="int8", cache_dir=onnx_cache)
    assert again.onnx.folder == folder
    assert (folder / MODEL_FILES["int8"]).stat().st_mtime_ns == stamp
    assert not [r for r in caplog.records if "exporting" in r.getMessage()]


def test_router_query_encoder_uses_the_onnx_path(onnx_int8: Embedder, torch_fp32: Embedder):
    from router.encoder import QueryEncoder

    encoder = QueryEncoder(onnx_int8)
    assert encoder._st is None  # no torch forward pass: the ONNX single-thread session answers
    vector = encoder.encode("can you summarise our refund policy?")
    reference = QueryEncoder(torch_fp32).encode("can you summarise our refund policy?")
    assert vector.shape == (384,) and float(vector @ reference) >= 0.99
    assert encoder.name == torch_fp32.name  # a classifier trained on either backend stays valid


def test_failed_export_falls_back_to_torch_with_a_warning(tmp_path: Path, caplog):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="knowledge"):
        embedder = Embedder(backend="onnx", quantize="int8", cache_dir=blocked)
    assert embedder.backend == "torch" and embedder.description == "all-MiniLM-L6-v2 (int8)"
    assert any("using torch" in r.getMessage() for r in caplog.records)
    assert embedder.embed_query("hello there").shape == (384,)


def test_model_id_that_is_not_a_local_folder_stays_on_torch(caplog):
    from knowledge.embedding import _try_onnx

    with caplog.at_level(logging.WARNING, logger="knowledge"):
        assert _try_onnx("someone/some-model", "someone/some-model", "cpu", "int8", None, 1) is None
    assert any("local sentence-transformers folder" in r.getMessage() for r in caplog.records)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be"):
        Embedder(backend="tensorrt")  # type: ignore[arg-type]


def test_configured_embedder_defaults_to_onnx_in_the_state_dir(onnx_int8: Embedder, settings):
    from bot.embedder import configured_embedder

    assert settings.embedding_backend == "onnx"
    target = settings.model_cache_dir / "onnx" / onnx_int8.onnx.folder.name
    if not target.exists():  # reuse this module's export instead of exporting a second time
        shutil.copytree(onnx_int8.onnx.folder, target)
    embedder = configured_embedder(settings)
    assert embedder.backend == "onnx" and embedder.onnx.folder == target
    assert embedder.onnx.variant == ("int8" if settings.embedding_quantize == "int8" else "fp32")


def test_export_refuses_a_folder_without_a_model(tmp_path: Path):
    from knowledge.onnx_export import OnnxExportError

    with pytest.raises(OnnxExportError, match="modules.json"):
        ensure_onnx_export(tmp_path, tmp_path / "cache")


def test_bulk_embedding_steps_down_to_one_thread_while_a_chat_generates(onnx_int8: Embedder):
    """knowledge/cpu_share.py: an ingest during a generation runs on one thread, with the same vectors."""
    from knowledge.cpu_share import generating, generation_running

    encoder = onnx_int8.onnx
    texts = [f"Passage {i} about harbour logs, cargo and the weather at arrival." for i in range(8)]
    if encoder.threads == 1:
        pytest.skip("one core: there is no second thread to give up")
    assert encoder._bulk_session() is encoder.session
    alone = onnx_int8.embed_documents(texts)
    with generating():
        assert generation_running()
        yielded = encoder._bulk_session()
        assert yielded is not encoder.session
        assert yielded.get_session_options().intra_op_num_threads == 1
        during = onnx_int8.embed_documents(texts)
    assert not generation_running()
    assert np.allclose(alone, during, atol=1e-5)
