"""The knowledge base: Markdown articles -> chunks -> embeddings in the database -> cosine search.

Articles are ``*.md`` files (``config/kb`` by default) whose first line is ``# Title``; every ``##``
section becomes one retrievable chunk (long sections are split on paragraphs). Chunk text is stored as
plain sentences with the Markdown markup removed, so an answer can quote it verbatim.

A knowledge-base *version* (``kb-`` + 12 hex) is a hash of the article contents, the chunker and the
embedding model; ingesting the same content twice gives the same version and writes nothing new.
Rows of one version are written in one transaction together with the ``meta.kb_version`` pointer, and
older versions' rows are deleted in that same transaction, so readers see the old or the new knowledge
base, never a mix.

Search runs in SQL with pgvector on Postgres, and as a numpy dot product over an in-memory matrix on
SQLite (the embedded default, whose ``sqlite3`` cannot load vector extensions).

Must not: pick answers or apply thresholds (that is :mod:`bot.answers`), run the embedding model on
the event loop, or create tables (the schema comes from Alembic migrations).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import bindparam, delete, func, select, text
from sqlalchemy.exc import IntegrityError

from bot.embeddings import DIM, MODEL_NAME, MODEL_SHA256
from state.models import EmbeddingType, KbChunk, KbDocument, Meta, utcnow

if TYPE_CHECKING:
    from bot.embeddings import Embedder
    from state.db import Database

META_KEY = "kb_version"
"""Key in the ``meta`` table that names the active knowledge-base version."""

MAX_CHUNK_CHARS = 800
"""Longer sections are split on paragraph boundaries into chunks of at most about this size."""

CHUNKER_ID = "chunker-1"
"""Part of the version hash: bump it whenever chunking or text cleaning changes, so that a changed
chunker re-ingests unchanged articles instead of keeping rows cut the old way."""

DEFAULT_MODEL_ID = f"{MODEL_NAME}@{MODEL_SHA256[:8]}"
"""The ``model_id`` of the default :class:`bot.embeddings.Embedder`."""


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk. ``score`` is the cosine similarity to the query, in [-1, 1]."""

    doc_id: str
    title: str
    heading: str
    text: str
    score: float


@dataclass(frozen=True)
class Chunk:
    """One retrievable piece of an article: a ``##`` section, or a part of a long one."""

    doc_id: str
    title: str
    heading: str
    ordinal: int
    text: str


# --- articles and chunking -------------------------------------------------------------------------


def load_articles(path: Path) -> list[tuple[str, str, str]]:
    """Read every ``*.md`` file directly in ``path``, sorted by doc id (the file stem).

    Returns:
        ``(doc_id, title, markdown)`` per article; ``doc_id`` is the file stem.
    Raises:
        ValueError: a file whose first non-blank line is not ``# Title`` or whose title is empty, or
            no articles at all; the message names the file or folder.
        FileNotFoundError: ``path`` is not a folder.
    Blocking file I/O: call it from a worker thread in the server.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"knowledge-base folder not found: {path}")
    articles: list[tuple[str, str, str]] = []
    for file in sorted(path.glob("*.md"), key=lambda f: f.stem):
        markdown = file.read_text(encoding="utf-8")
        first = next((line.strip() for line in markdown.splitlines() if line.strip()), "")
        if not first.startswith("# "):
            raise ValueError(
                f"{file}: an article must start with a '# Title' line (found {first[:60]!r})"
            )
        title = _plain(first[2:])
        if not title:
            raise ValueError(f"{file}: the '# ' title line is empty")
        articles.append((file.stem, title, markdown))
    if not articles:
        raise ValueError(f"{path}: no *.md articles found")
    return articles


_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_EMPHASIS = re.compile(r"(\*\*|__|\*|_|`)(?=\S)(.+?)(?<=\S)\1")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_HTML_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_SPACES = re.compile(r"\s+")


def _plain(markdown: str) -> str:
    """Inline Markdown to plain text: links keep their text, emphasis and code marks go."""
    out = _LINK.sub(r"\1", markdown)
    out = _HTML_TAG.sub("", out)
    previous = None
    while previous != out:  # nested emphasis such as **_x_**
        previous = out
        out = _EMPHASIS.sub(r"\2", out)
    return _SPACES.sub(" ", out).strip()


def _sentence(line: str) -> str:
    """A list item or table-less line as a sentence that ends with punctuation."""
    line = _plain(line)
    if line and line[-1] not in ".!?:":
        line += "."
    return line


def _paragraphs(lines: Iterable[str]) -> list[str]:
    """Plain-text paragraphs of a section body: blank lines separate; each list item is a sentence."""
    paragraphs: list[str] = []
    current: list[str] = []
    items: list[str] = []

    def flush() -> None:
        if current:
            paragraphs.append(_plain(" ".join(current)))
            current.clear()
        if items:
            paragraphs.append(" ".join(items))
            items.clear()

    for raw in lines:
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped.startswith("```") or set(stripped) <= set("-*_="):
            flush()
        elif _LIST_ITEM.match(line):
            if current:
                flush()
            items.append(_sentence(_LIST_ITEM.sub("", line, count=1)))
        elif stripped.startswith("#"):  # a ### sub-heading: keep its words as a sentence
            flush()
            paragraphs.append(_sentence(stripped.lstrip("#").strip()))
        elif stripped.startswith(">"):
            current.append(stripped.lstrip(">").strip())
        elif items and raw[:1].isspace():  # continuation of a list item
            items[-1] = _sentence(items[-1].rstrip(".") + " " + stripped)
        else:
            if items:
                flush()
            current.append(stripped)
    flush()
    return [p for p in paragraphs if p]


def _pack(paragraphs: list[str], limit: int) -> list[str]:
    """Greedily join paragraphs into pieces of at most ``limit`` characters.

    A single paragraph longer than the limit is split between sentences instead.
    """
    units: list[str] = []
    for paragraph in paragraphs:
        sentences = split_sentences(paragraph) if len(paragraph) > limit else [paragraph]
        if len(sentences) > 1:
            units.extend(_pack(sentences, limit))
        else:
            units.append(paragraph)  # one over-long sentence stays whole
    pieces: list[str] = []
    for unit in units:
        if pieces and len(pieces[-1]) + 1 + len(unit) <= limit:
            pieces[-1] = f"{pieces[-1]} {unit}"
        else:
            pieces.append(unit)
    return pieces


def chunk_article(doc_id: str, title: str, markdown: str) -> list[Chunk]:
    """Cut an article into chunks: one per ``##`` section, long sections split on paragraphs.

    Text before the first ``##`` section (an introduction) becomes a chunk headed by the title. Chunk
    text is plain sentences joined by single spaces, so any sentence of it can be quoted verbatim.
    """
    sections: list[tuple[str, list[str]]] = [(title, [])]
    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith("## "):
            sections.append((_plain(stripped[3:]), []))
        elif stripped.startswith("# ") and not sections[0][1] and len(sections) == 1:
            continue  # the title line
        else:
            sections[-1][1].append(line)
    chunks: list[Chunk] = []
    for heading, body in sections:
        for piece in _pack(_paragraphs(body), MAX_CHUNK_CHARS):
            chunks.append(Chunk(doc_id, title, heading, len(chunks), piece))
    return chunks


_ABBREVIATIONS = ("a.m.", "p.m.", "e.g.", "i.e.", "etc.", "approx.", "no.", "vs.")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9$])")


def split_sentences(text_: str) -> list[str]:
    """Split plain text into sentences; every sentence is an exact substring of ``text_``.

    Handles the abbreviations the articles use (``a.m.``, ``p.m.``, ``e.g.``...): a full stop after
    one of them does not end a sentence.
    """
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text_):
        candidate = text_[start : match.start()].rstrip()
        if candidate.lower().endswith(_ABBREVIATIONS):
            continue
        end = match.end() - len(match.group(0)) + len(match.group(0).rstrip())
        sentence = text_[start:end].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    tail = text_[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def kb_version(articles: Sequence[tuple[str, str, str]], model_id: str = DEFAULT_MODEL_ID) -> str:
    """``"kb-"`` + 12 hex of sha256 over the sorted ``(doc_id, markdown)`` pairs, the chunker and
    the embedding model id. Titles are part of the markdown, so they need no separate entry."""
    digest = hashlib.sha256()
    digest.update(f"{CHUNKER_ID}\0{model_id}\0".encode())
    for doc_id, _title, markdown in sorted(articles, key=lambda a: a[0]):
        body = markdown.encode("utf-8")
        digest.update(f"{doc_id}\0{len(body)}\0".encode())
        digest.update(body)
    return "kb-" + digest.hexdigest()[:12]


def embedding_text(chunk: Chunk) -> str:
    """What gets embedded for a chunk: the title and heading give short sections their topic."""
    return f"{chunk.title}: {chunk.heading}. {chunk.text}"


# --- the store -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    version: str
    articles: list[tuple[str, str, str]]
    chunks: list[Chunk]
    embeddings: np.ndarray


class KnowledgeBase:
    """The active knowledge-base version in the database, plus search over it.

    Call :meth:`load` at start-up (and it is called by :meth:`ingest`). ``version`` is ``None``
    while nothing has been ingested. ``search_calls`` counts searches, so tests can prove a path ran
    no retrieval.
    """

    def __init__(self, db: Database, embedder: Embedder) -> None:
        self._db = db
        self._embedder = embedder
        self.version: str | None = None
        self.documents = 0
        self.chunks = 0
        self.search_calls = 0
        self._matrix = np.zeros((0, DIM), dtype=np.float32)
        self._rows: list[tuple[str, str, str, str]] = []  # (doc_id, title, heading, text)
        self._ingest_lock = asyncio.Lock()

    # --- reading -----------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the active version from ``meta``; on SQLite also load its chunks and embeddings."""
        async with self._db.sessions() as session:
            version = await session.scalar(select(Meta.value).where(Meta.key == META_KEY))
            documents = chunks = 0
            rows: list[tuple[str, str, str, str]] = []
            matrix = np.zeros((0, DIM), dtype=np.float32)
            if version is not None:
                documents = int(
                    await session.scalar(
                        select(func.count()).select_from(KbDocument).where(
                            KbDocument.kb_version == version
                        )
                    )
                    or 0
                )
                if self._db.backend == "postgresql":
                    chunks = int(
                        await session.scalar(
                            select(func.count()).select_from(KbChunk).where(
                                KbChunk.kb_version == version
                            )
                        )
                        or 0
                    )
                else:
                    result = await session.execute(
                        select(
                            KbChunk.doc_id,
                            KbDocument.title,
                            KbChunk.heading,
                            KbChunk.text,
                            KbChunk.embedding,
                        )
                        .join(
                            KbDocument,
                            (KbDocument.kb_version == KbChunk.kb_version)
                            & (KbDocument.doc_id == KbChunk.doc_id),
                        )
                        .where(KbChunk.kb_version == version)
                        .order_by(KbChunk.doc_id, KbChunk.ordinal)
                    )
                    vectors = []
                    for doc_id, title, heading, chunk_text, embedding in result:
                        rows.append((doc_id, title, heading, chunk_text))
                        vectors.append(embedding)
                    if vectors:
                        matrix = np.vstack(vectors).astype(np.float32, copy=False)
                    chunks = len(rows)
        self.version, self.documents, self.chunks = version, documents, chunks
        self._rows, self._matrix = rows, matrix

    async def search(self, query_embedding: np.ndarray, k: int) -> list[Passage]:
        """The ``k`` chunks of the active version most similar to the query, best first.

        ``query_embedding`` is one L2-normalised vector of the embedder (shape ``(384,)`` or
        ``(1, 384)``). Returns an empty list when nothing is ingested.
        """
        self.search_calls += 1
        query = np.asarray(query_embedding, dtype=np.float32).reshape(-1)
        if query.shape != (DIM,):
            raise ValueError(f"query embedding must have {DIM} values, got {query.shape}")
        if k < 1 or self.version is None:
            return []
        if self._db.backend == "postgresql":
            return await self._search_sql(query, k, self.version)
        if not self._rows:
            return []
        scores = self._matrix @ query
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Passage(*self._rows[i], score=float(scores[i])) for i in top]

    async def _search_sql(self, query: np.ndarray, k: int, version: str) -> list[Passage]:
        # `<=>` is pgvector's cosine distance; ORDER BY it LIMIT k is what the HNSW index
        # (vector_cosine_ops) serves. The join fetches titles for the k rows only.
        statement = text(
            """
            SELECT c.doc_id, d.title, c.heading, c.text, c.distance
            FROM (
                SELECT doc_id, heading, text, ordinal, embedding <=> :q AS distance
                FROM kb_chunks
                WHERE kb_version = :version
                ORDER BY embedding <=> :q
                LIMIT :k
            ) AS c
            JOIN kb_documents AS d ON d.kb_version = :version AND d.doc_id = c.doc_id
            ORDER BY c.distance, c.doc_id, c.ordinal
            """
        ).bindparams(bindparam("q", type_=EmbeddingType()))
        async with self._db.sessions() as session:
            result = await session.execute(statement, {"q": query, "version": version, "k": k})
            return [
                Passage(doc_id, title, heading, body, score=1.0 - float(distance))
                for doc_id, title, heading, body, distance in result
            ]

    # --- writing -----------------------------------------------------------------------------------

    def _prepare(self, articles: list[tuple[str, str, str]], version: str) -> _Prepared:
        # Blocking: the embedding model. Runs in a worker thread.
        chunks = [c for doc_id, title, md in articles for c in chunk_article(doc_id, title, md)]
        embeddings = self._embedder.embed([embedding_text(c) for c in chunks])
        return _Prepared(version, articles, chunks, embeddings)

    async def ingest(self, path: Path) -> str:
        """(Re)build the knowledge base from the articles in ``path`` and make it the active one.

        Idempotent: when the articles (and model) are unchanged, nothing is written. Otherwise the new
        version's rows and the ``meta`` pointer are written and older versions deleted, all in one
        transaction. Returns the active version.
        """
        async with self._ingest_lock:
            # Reading files and embedding are blocking; keep them off the event loop.
            articles = await asyncio.to_thread(load_articles, path)
            version = kb_version(articles, self._embedder.model_id)
            if await self._is_active(version):
                await self.load()
                return version
            prepared = await asyncio.to_thread(self._prepare, articles, version)
            try:
                await self._write(prepared)
            except IntegrityError:
                # Another process wrote the same version at the same moment: use theirs.
                if not await self._is_active(prepared.version):
                    raise
            await self.load()
            return prepared.version

    async def _is_active(self, version: str) -> bool:
        async with self._db.sessions() as session:
            active = await session.scalar(select(Meta.value).where(Meta.key == META_KEY))
            if active != version:
                return False
            documents = await session.scalar(
                select(func.count()).select_from(KbDocument).where(KbDocument.kb_version == version)
            )
            return bool(documents)

    async def _write(self, prepared: _Prepared) -> None:
        version = prepared.version
        async with self._db.sessions.begin() as session:
            # Leftovers of this version (a crash between writes cannot leave them, but a manual
            # edit can) and all other versions go; the new rows and pointer arrive together.
            await session.execute(delete(KbChunk))
            await session.execute(delete(KbDocument))
            for doc_id, title, markdown in prepared.articles:
                session.add(
                    KbDocument(
                        kb_version=version,
                        doc_id=doc_id,
                        title=title,
                        source=f"{doc_id}.md",
                        content_sha256=hashlib.sha256(markdown.encode("utf-8")).hexdigest(),
                    )
                )
            for chunk, vector in zip(prepared.chunks, prepared.embeddings, strict=True):
                session.add(
                    KbChunk(
                        kb_version=version,
                        doc_id=chunk.doc_id,
                        ordinal=chunk.ordinal,
                        heading=chunk.heading[:300],
                        text=chunk.text,
                        embedding=vector,
                    )
                )
            meta = await session.get(Meta, META_KEY)
            if meta is None:
                session.add(Meta(key=META_KEY, value=version, updated_at=utcnow()))
            else:
                meta.value = version
                meta.updated_at = utcnow()
