"""The knowledge base: documents -> chunks -> embeddings in the database -> hybrid search.

Sources (:func:`load_documents`): a folder of ``*.md`` articles (``config/kb`` by default; the file
stem is the doc id, the first line ``# Title``), one long Markdown file such as a policy wiki (split
into one document per heading, doc ids from the heading path), or a JSONL export of help-centre chunks
(``doc_id``/``title``/``heading``/``text`` fields). Every ``##`` section of a document becomes one
retrievable chunk (long sections are split on paragraphs). Chunk text is stored as plain sentences with
the Markdown markup removed, so an answer can quote it verbatim.

A knowledge-base *version* (``kb-`` + 12 hex) is a hash of the document contents, the chunker and the
embedding model; ingesting the same content twice gives the same version and writes nothing new.
Writes replace the whole set (:meth:`KnowledgeBase.ingest`), add or update some documents
(:meth:`KnowledgeBase.add_documents`) or remove some (:meth:`KnowledgeBase.remove_documents`); a chunk
whose text is already stored keeps its embedding, so only new or edited sections run the model. Rows of
one version are written in one transaction together with the ``meta.kb_version`` pointer, and older
versions' rows are deleted in that same transaction, so readers see the old or the new knowledge base,
never a mix. A process serving searches picks up a version another process wrote with
:meth:`KnowledgeBase.refresh` (one cheap read when nothing changed).

Dense search runs in SQL with pgvector on Postgres, and as a numpy dot product over an in-memory matrix
on SQLite (the embedded default, whose ``sqlite3`` cannot load vector extensions). Given the question's
text, search is hybrid: a TF-IDF similarity (:mod:`bot.lexical`, built in memory at load) is added to
the cosine, which ranks passages that share the question's rare words higher.

Must not: pick answers or apply thresholds (that is :mod:`bot.answers`), run the embedding model on
the event loop, or create tables (the schema comes from Alembic migrations).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import bindparam, delete, func, select, text
from sqlalchemy.exc import IntegrityError

from bot.embeddings import DIM, MODEL_NAME, MODEL_SHA256
from bot.lexical import LexicalIndex
from config.files import read_objects, read_utf8
from state.models import EmbeddingType, KbChunk, KbDocument, Meta, utcnow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from bot.embeddings import Embedder
    from state.db import Database

META_KEY = "kb_version"
"""Key in the ``meta`` table that names the active knowledge-base version."""

MAX_CHUNK_CHARS = 800
"""Longer sections are split on paragraph boundaries into chunks of at most about this size."""

CHUNKER_ID = "chunker-2"
"""Part of the version hash: bump it whenever chunking or text cleaning changes, so that a changed
chunker re-ingests unchanged articles instead of keeping rows cut the old way."""

DEFAULT_MODEL_ID = f"{MODEL_NAME}@{MODEL_SHA256[:8]}"
"""The ``model_id`` of the default :class:`bot.embeddings.Embedder`."""

LEXICAL_WEIGHT = 0.5
"""Hybrid search: weight of the lexical similarity (:mod:`bot.lexical`, in [0, 1]) added to the
cosine. Chosen on the tune half of the knowledge-base golden sets (``bench/kb_bench.py``): it ranks
better than 0.3 and, unlike 0.7, keeps off-topic questions on the shipped articles well below the
default answer threshold."""

HYBRID_CANDIDATES = 20
"""On Postgres, a hybrid search ranks the dense top-n and the lexical top-n chunks (n = this, or k
if larger) by their fused score."""


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk. ``score`` is the cosine similarity to the query, in [-1, 1], plus
    ``LEXICAL_WEIGHT`` x the lexical similarity when the search was hybrid (see
    :meth:`KnowledgeBase.search`)."""

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


_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_EMPHASIS = re.compile(r"(\*\*|__|\*|_|`)(?=\S)(.+?)(?<=\S)\1")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
# Only real HTML tags go: "<or>" in plain exported text is a word, not markup.
_HTML_TAG = re.compile(
    r"</?(?:a|abbr|b|br|code|del|div|em|h[1-6]|hr|i|img|ins|kbd|li|mark|ol|p|pre|s|small|span|strong"
    r"|sub|sup|table|tbody|td|th|thead|tr|u|ul)\b[^>]*>",
    re.IGNORECASE,
)
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


def content_hash(markdown: str) -> str:
    """sha256 (64 hex) of a document's Markdown: what the database stores as ``content_sha256``."""
    return hashlib.sha256(markdown.encode("utf-8")).hexdigest()


def kb_version(articles: Sequence[tuple[str, str, str]], model_id: str = DEFAULT_MODEL_ID) -> str:
    """``"kb-"`` + 12 hex identifying ``(doc_id, title, markdown)`` articles under the embedding
    model ``model_id``: see :func:`kb_version_of_hashes`, over each article's :func:`content_hash`.
    Titles are part of the markdown, so they need no separate entry."""
    hashes = [(doc_id, content_hash(markdown)) for doc_id, _, markdown in articles]
    return kb_version_of_hashes(hashes, model_id)


def kb_version_of_hashes(documents: Iterable[tuple[str, str]], model_id: str = DEFAULT_MODEL_ID) -> str:
    """``"kb-"`` + 12 hex of sha256 over the sorted ``(doc_id, content_hash)`` pairs, the chunker and
    the embedding model id: a pure function of the documents' contents and the model, so the same
    documents always give the same version. Defined over content hashes (not the text) so that a
    version can be computed for a change to some documents from what the database stores about
    the others (``kb_documents.content_sha256``)."""
    digest = hashlib.sha256()
    digest.update(f"{CHUNKER_ID}\0{model_id}\0".encode())
    for doc_id, sha in sorted(documents):
        digest.update(f"{doc_id}\0{sha}\0".encode())
    return "kb-" + digest.hexdigest()[:12]


def embedding_text(chunk: Chunk) -> str:
    """What gets embedded for a chunk: the title and heading give short sections their topic.

    A chunk of a document's introduction (heading == title, e.g. a wiki section split into its own
    document, whose title is the heading path) names the title once.
    """
    if chunk.heading == chunk.title:
        return f"{chunk.title}. {chunk.text}"
    return f"{chunk.title}: {chunk.heading}. {chunk.text}"


# --- sources: a folder of articles, one long Markdown file, or JSONL chunks ---------------------------


@dataclass(frozen=True)
class Document:
    """One knowledge-base document as loaded from a source, before chunking.

    ``markdown`` starts with ``# {title}`` and is what gets chunked and hashed into the version;
    ``source`` says where it came from (``refunds.md``, ``wiki.md#modify-pending-order``,
    ``chunks.jsonl:12``) and is stored with the document.
    """

    doc_id: str
    title: str
    markdown: str
    source: str


MAX_DOC_ID_CHARS = 200
"""Longest document id the database stores (``kb_documents.doc_id``)."""

DOC_LEVELS = 3
"""In a single Markdown file, headings of levels 1 to ``DOC_LEVELS`` start a new document; deeper
headings stay inside their document (their words are kept as a sentence)."""

JSONL_FIELDS: dict[str, tuple[str, ...]] = {
    "doc_id": ("doc_id", "id"),
    "text": ("text", "content", "body"),
    "title": ("title",),
    "heading": ("heading", "section"),
}
"""Fields read from each JSONL line (first name found wins); any other field is ignored."""


def load_documents(path: Path) -> list[Document]:
    """Load knowledge-base documents from ``path``, sorted by doc id.

    ``path`` may be:

    - a folder: every ``*.md`` file directly in it is one article (doc id = file stem; see
      :func:`load_articles`);
    - one ``.md`` file: a policy wiki, split into one document per heading (see
      :func:`split_markdown_file`);
    - one ``.jsonl`` file: exported help-centre chunks (see :func:`load_jsonl_chunks`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unsupported file type, or a source error (the message names the file, and the
            line and field for JSONL).
    Blocking file I/O: call it from a worker thread in the server.
    """
    path = Path(path)
    if path.is_dir():
        return _load_folder(path)
    if not path.exists():
        raise FileNotFoundError(f"knowledge-base source not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".md", ".markdown"):
        documents = split_markdown_file(path)
    elif suffix == ".jsonl":
        documents = load_jsonl_chunks(path)
    else:
        raise ValueError(
            f"{path}: unsupported knowledge-base source (expected a folder of .md articles, "
            "one .md file or one .jsonl file)"
        )
    return sorted(documents, key=lambda d: d.doc_id)


def load_articles(path: Path) -> list[tuple[str, str, str]]:
    """``(doc_id, title, markdown)`` of every document of ``path`` (any source :func:`load_documents`
    accepts), sorted by doc id.

    For a folder, every ``*.md`` file directly in it is one article whose doc id is the file stem.
    Raises:
        ValueError: a folder file whose first non-blank line is not ``# Title`` or whose title is
            empty, or no articles at all; the message names the file or folder. Other sources: see
            :func:`load_documents`.
        FileNotFoundError: ``path`` does not exist.
    Blocking file I/O: call it from a worker thread in the server.
    """
    return [(d.doc_id, d.title, d.markdown) for d in load_documents(path)]


def _load_folder(path: Path) -> list[Document]:
    documents = [load_article(file) for file in sorted(path.glob("*.md"), key=lambda f: f.stem)]
    if not documents:
        raise ValueError(f"{path}: no *.md articles found")
    return documents


def load_article(file: Path) -> Document:
    """One Markdown article file as a document: doc id = the file stem (``refunds.md`` ->
    ``refunds``), title = its first line, which must be ``# Title``.

    Raises:
        ValueError: not a ``.md`` file, not UTF-8, no ``# Title`` first line or an empty title, or a
            doc id with a comma or longer than :data:`MAX_DOC_ID_CHARS`; the message names the file.
        OSError: the file cannot be read.
    Blocking file I/O.
    """
    file = Path(file)
    if file.suffix.lower() not in (".md", ".markdown"):
        raise ValueError(f"{file}: an article is a Markdown file (.md), got {file.suffix or 'no suffix'!r}")
    if "," in file.stem or len(file.stem) > MAX_DOC_ID_CHARS:
        raise ValueError(
            f"{file}: the file name is the doc id: it must have no commas and at most "
            f"{MAX_DOC_ID_CHARS} characters"
        )
    markdown = read_utf8(file)
    first = next((line.strip() for line in markdown.splitlines() if line.strip()), "")
    if not first.startswith("# "):
        raise ValueError(f"{file}: an article must start with a '# Title' line (found {first[:60]!r})")
    title = _plain(first[2:])
    if not title:
        raise ValueError(f"{file}: the '# ' title line is empty")
    return Document(file.stem, title, markdown, file.name)


_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def slugify(heading: str) -> str:
    """A heading as a doc-id part: lower case, runs of anything but letters and digits -> ``-``.

    ``"Modify pending order"`` -> ``"modify-pending-order"``; a heading with no letters or digits
    gives ``"section"``.
    """
    slug = re.sub(r"[\W_]+", "-", _plain(heading).lower()).strip("-")
    return slug or "section"


def split_markdown_file(path: Path) -> list[Document]:
    """Split one long Markdown file (a policy wiki) into one document per heading.

    Every heading of level 1 to :data:`DOC_LEVELS` starts a document that holds the text up to the
    next such heading; deeper headings stay inside it. A heading with no text of its own gives no
    document. Doc ids are the slugs (:func:`slugify`) of the heading path joined by ``/``, e.g.
    ``modify-pending-order/modify-payment``; when the file has exactly one level-1 heading it is the
    wiki's title: its own text becomes the document ``slug(title)`` and it is left out of the other
    paths. Ids depend only on the headings, so they are stable across runs and edits of the text; a
    repeated path gets ``-2``, ``-3``... in file order. A document's title is its heading path joined
    by `` > `` (the wiki title included), which also goes into every chunk's embedded text.

    Raises:
        ValueError: the file has no headings or no text under any heading (the message names it),
            or a doc id longer than :data:`MAX_DOC_ID_CHARS`.
    """
    path = Path(path)
    lines = read_utf8(path).splitlines()
    headings: list[tuple[int, int, str]] = []  # (line index, level, title)
    fenced = False
    for index, line in enumerate(lines):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match and len(match.group(1)) <= DOC_LEVELS and _plain(match.group(2)):
            headings.append((index, len(match.group(1)), _plain(match.group(2))))
    if not headings:
        raise ValueError(f"{path}: no Markdown headings to split the file into documents")
    single_title = sum(1 for _, level, _ in headings if level == 1) == 1

    documents: list[Document] = []
    seen: dict[str, int] = {}
    stack: list[tuple[int, str]] = []  # (level, title) of the enclosing headings
    stray = next((i for i, line in enumerate(lines[: headings[0][0]]) if line.strip()), None)
    if stray is not None:
        raise ValueError(
            f"{path}: text before the first heading (line {stray + 1}): start the file with a heading"
        )
    for position, (start, level, title) in enumerate(headings):
        end = headings[position + 1][0] if position + 1 < len(headings) else len(lines)
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        body = "\n".join(lines[start + 1 : end]).strip("\n")
        if not body.strip():
            continue
        path_titles = [t for _, t in stack]
        id_parts = [
            slugify(t)
            for lvl, t in stack
            if not (single_title and lvl == 1 and len(stack) > 1)
        ]
        doc_id = "/".join(id_parts)
        seen[doc_id] = seen.get(doc_id, 0) + 1
        if seen[doc_id] > 1:
            doc_id = f"{doc_id}-{seen[doc_id]}"
        if len(doc_id) > MAX_DOC_ID_CHARS:
            raise ValueError(
                f"{path}:{start + 1}: doc id {doc_id[:60]!r}... is longer than "
                f"{MAX_DOC_ID_CHARS} characters (shorten the headings)"
            )
        doc_title = " > ".join(path_titles)
        documents.append(
            Document(doc_id, doc_title, f"# {doc_title}\n\n{body}\n", f"{path.name}#{doc_id}")
        )
    if not documents:
        raise ValueError(f"{path}: no text under any heading")
    return documents


def _jsonl_field(
    record: dict[str, object], field: str, where: str, *, required: bool
) -> str | None:
    names = JSONL_FIELDS[field]
    name = next((n for n in names if n in record), None)
    if name is None:
        if required:
            also = f" (also accepted: {', '.join(repr(n) for n in names[1:])})" if names[1:] else ""
            raise ValueError(f"{where}: field {names[0]!r} is missing{also}")
        return None
    value = record[name]
    if isinstance(value, int) and not isinstance(value, bool) and field == "doc_id":
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        if required:
            raise ValueError(f"{where}: field {name!r} is empty")
        return None
    return value.strip()


TITLE_LINE_CHARS = 120
"""A JSONL chunk without a ``title`` takes its first line as the title when that line is at most this
long and does not end like a sentence."""


def _looks_like_title(line: str) -> bool:
    line = line.strip()
    return 0 < len(line) <= TITLE_LINE_CHARS and line[-1] not in ".!?:" and not _LIST_ITEM.match(line)


def _plain_text_markdown(text_: str) -> str:
    """Plain exported text as Markdown the chunker reads: every line its own paragraph (list items
    stay list items), lines without end punctuation get a full stop so sentences do not run on."""
    out: list[str] = []
    for line in text_.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        out.append(line.rstrip() if _LIST_ITEM.match(line) else _sentence(stripped))
    return "\n\n".join(out)


def load_jsonl_chunks(path: Path) -> list[Document]:
    """Read exported help-centre chunks: one JSON object per line.

    Fields (the first name listed that is present is used; other fields are ignored):

    - ``doc_id`` (or ``id``): required, a string (or integer) without commas or line breaks, at most
      :data:`MAX_DOC_ID_CHARS` characters; kept as is, so answers cite the help centre's own ids;
    - ``text`` (or ``content``, ``body``): required, non-empty plain text; each line is a paragraph,
      ``-``/``*`` lines are list items;
    - ``title``: optional; when absent, the first line of a multi-line ``text`` is the title (and is
      removed from the text) if it looks like one (at most :data:`TITLE_LINE_CHARS` characters, no
      end punctuation, not a list item), else the doc id is;
    - ``heading`` (or ``section``): optional heading of this chunk inside its document.

    Lines with the same doc id are chunks of one document, kept in file order; they must agree on the
    title. Blank lines are skipped.

    Raises:
        ValueError: naming the file, the line number and the field: broken JSON, a line that is not an
            object, a missing, empty or non-string field, a doc id with a comma or line break, a title
            that differs from an earlier line of the same document; or a file with no chunks.
    """
    path = Path(path)
    order: list[str] = []
    parts: dict[str, list[tuple[str | None, str]]] = {}
    titles: dict[str, tuple[str, int]] = {}
    first_line: dict[str, int] = {}
    for number, where, record in read_objects(path):
        doc_id = _jsonl_field(record, "doc_id", where, required=True)
        body = _jsonl_field(record, "text", where, required=True)
        assert doc_id is not None and body is not None
        if "," in doc_id or "\n" in doc_id or len(doc_id) > MAX_DOC_ID_CHARS:
            raise ValueError(
                f"{where}: field 'doc_id' must have no commas or line breaks and at most "
                f"{MAX_DOC_ID_CHARS} characters, got {doc_id[:60]!r}"
            )
        title = _jsonl_field(record, "title", where, required=False)
        heading = _jsonl_field(record, "heading", where, required=False)
        if title is None:
            head, _, rest = body.partition("\n")
            if doc_id not in titles and rest.strip() and _looks_like_title(head):
                title, body = _plain(head), rest
            else:
                title = titles[doc_id][0] if doc_id in titles else doc_id
        title = _plain(title)
        if doc_id in titles and titles[doc_id][0] != title:
            earlier, line = titles[doc_id]
            raise ValueError(
                f"{where}: field 'title' is {title!r} but line {line} gave document "
                f"{doc_id!r} the title {earlier!r}"
            )
        if doc_id not in parts:
            order.append(doc_id)
            parts[doc_id] = []
            titles[doc_id] = (title, number)
            first_line[doc_id] = number
        parts[doc_id].append((heading, _plain_text_markdown(body)))
    if not order:
        raise ValueError(f"{path}: no chunks found (one JSON object per line expected)")
    documents = []
    for doc_id in order:
        title = titles[doc_id][0]
        # A later chunk without a heading gets the title as its heading, so it stays its own
        # section instead of running on from the chunk before it.
        sections = [
            f"## {heading or title}\n\n{body}" if heading or index else body
            for index, (heading, body) in enumerate(parts[doc_id])
        ]
        markdown = f"# {title}\n\n" + "\n\n".join(sections) + "\n"
        documents.append(Document(doc_id, title, markdown, f"{path.name}:{first_line[doc_id]}"))
    return documents


# --- the store -------------------------------------------------------------------------------------


class UnknownDocumentError(ValueError):
    """Document ids that the active knowledge-base version does not have (``doc_ids``, sorted)."""

    def __init__(self, doc_ids: Iterable[str]) -> None:
        self.doc_ids = sorted(doc_ids)
        super().__init__(
            f"no such document in the knowledge base: {', '.join(map(repr, self.doc_ids))} "
            "(`helpline kb list` shows the document ids)"
        )


class KnowledgeBaseBusy(RuntimeError):
    """Other writers kept changing the knowledge base while this change was being prepared."""


@dataclass(frozen=True)
class StoredDocument:
    """A document of the active version as stored: ``content_sha256`` (hex) of its Markdown, the
    number of its ``chunks``."""

    doc_id: str
    title: str
    source: str
    content_sha256: str
    chunks: int


@dataclass(frozen=True)
class KbChange:
    """How a change differs from the active version, by doc id, each tuple sorted: ``changed``
    documents keep their id with other content; ``unchanged`` ones are carried over as they are."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """True when the change writes nothing."""
        return not (self.added or self.changed or self.removed)


@dataclass(frozen=True)
class KbUpdate:
    """What a write did: the ``version`` now active and the ``change`` from the one before."""

    version: str
    change: KbChange


async def active_documents(db: Database) -> tuple[str | None, list[StoredDocument]]:
    """The active version (None before the first ingest) and its documents, sorted by doc id. Reads
    no embeddings and needs no model (``helpline kb list``, change previews)."""
    async with db.sessions() as session:
        version = await session.scalar(select(Meta.value).where(Meta.key == META_KEY))
        return version, await _stored_documents(session, version)


async def _stored_documents(session: AsyncSession, version: str | None) -> list[StoredDocument]:
    if version is None:
        return []
    chunk_counts = (
        select(KbChunk.doc_id, func.count().label("n"))
        .where(KbChunk.kb_version == version)
        .group_by(KbChunk.doc_id)
        .subquery()
    )
    result = await session.execute(
        select(
            KbDocument.doc_id, KbDocument.title, KbDocument.source, KbDocument.content_sha256,
            func.coalesce(chunk_counts.c.n, 0),
        )
        .outerjoin(chunk_counts, chunk_counts.c.doc_id == KbDocument.doc_id)
        .where(KbDocument.kb_version == version)
        .order_by(KbDocument.doc_id)
    )
    return [StoredDocument(*row) for row in result]


def describe_change(
    stored: Iterable[StoredDocument], fresh: Sequence[Document], drop: Iterable[str] = ()
) -> KbChange:
    """The change that writes ``fresh`` documents (new, or replacing the stored ones of the same id)
    and drops the stored documents ``drop``; other stored documents stay as they are."""
    by_id = {d.doc_id: d for d in stored}
    fresh_hash = {d.doc_id: content_hash(d.markdown) for d in fresh}
    removed = set(drop) & (by_id.keys() - fresh_hash.keys())
    same = {
        i for i, d in by_id.items()
        if i not in removed and fresh_hash.get(i, d.content_sha256) == d.content_sha256
    }
    return KbChange(
        added=tuple(sorted(fresh_hash.keys() - by_id.keys())),
        changed=tuple(sorted((by_id.keys() & fresh_hash.keys()) - same)),
        removed=tuple(sorted(removed)),
        unchanged=tuple(sorted(same)),
    )


@dataclass(frozen=True)
class _StoredChunk:
    chunk: Chunk
    embedding: np.ndarray


@dataclass(frozen=True)
class _Stored:
    """The active version as read for a write: documents by id and their chunks with embeddings."""

    version: str | None
    documents: dict[str, StoredDocument]
    chunks: dict[str, list[_StoredChunk]]

    def embeddings_valid(self, model_id: str) -> bool:
        """Whether the stored vectors are this model's and the chunks this chunker's: the version
        hash covers both, so recomputing it from the stored content hashes proves it. (Rows written
        under an older hash definition fail the check and are embedded again once.)"""
        pairs = [(d.doc_id, d.content_sha256) for d in self.documents.values()]
        return self.version is not None and kb_version_of_hashes(pairs, model_id) == self.version


@dataclass(frozen=True)
class _Prepared:
    """The rows of a new version: per document ``(document, its chunks, their embeddings)``."""

    version: str
    documents: list[tuple[StoredDocument, list[Chunk], np.ndarray]]
    embedded: int  # chunk texts the model had to embed (the others reused stored vectors)


def _no_vectors() -> np.ndarray:
    return np.zeros((0, DIM), dtype=np.float32)


@dataclass(frozen=True)
class _Snapshot:
    """Everything a search reads, swapped as one object so that a search running while a reload
    finishes sees the old or the new version, never a mix."""

    version: str | None = None
    documents: int = 0
    rows: tuple[tuple[str, str, str, str], ...] = ()  # (doc_id, title, heading, text)
    row_ids: tuple[int, ...] = ()  # kb_chunks.id of each row
    matrix: np.ndarray = field(default_factory=_no_vectors)  # SQLite: the chunk embeddings
    lexical: LexicalIndex = field(default_factory=lambda: LexicalIndex([]))  # TF-IDF over rows
    position: dict[int, int] = field(default_factory=dict)  # row id -> index in rows


def _distinct(documents: Sequence[Document]) -> list[Document]:
    """``documents`` as a list; ValueError naming a doc id given twice."""
    seen: set[str] = set()
    for document in documents:
        if document.doc_id in seen:
            raise ValueError(f"two documents have the doc id {document.doc_id!r}")
        seen.add(document.doc_id)
    return list(documents)


class _Conflict(Exception):
    """The active version changed between reading it and writing the next one."""


COMMIT_ATTEMPTS = 3
"""A write whose base version another writer replaced meanwhile is planned again this many times."""

LOAD_ATTEMPTS = 3
"""A load that sees the pointer move while it reads the rows reads again, at most this many times."""


def _top_in_memory(state: _Snapshot, query: np.ndarray, k: int, lexical: np.ndarray | None) -> list[Passage]:
    scores: np.ndarray = state.matrix @ query
    if lexical is not None:
        scores = scores + LEXICAL_WEIGHT * lexical
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    passages = []
    for i in top:
        doc_id, title, heading, body = state.rows[i]
        passages.append(Passage(doc_id, title, heading, body, score=float(scores[i])))
    return passages


class KnowledgeBase:
    """The active knowledge-base version in the database, plus search over it.

    Call :meth:`load` at start-up (the writes call it too), and :meth:`refresh` now and then to pick
    up a version another process wrote. ``version`` is ``None`` while nothing has been ingested.
    ``search_calls`` counts searches, so tests can prove a path ran no retrieval.
    """

    def __init__(self, db: Database, embedder: Embedder) -> None:
        self._db = db
        self._embedder = embedder
        self.search_calls = 0
        self.embedded_last = 0  # chunk texts the last write had to embed (the rest were reused)
        self._state = _Snapshot()
        self._ingest_lock = asyncio.Lock()
        self._load_lock = asyncio.Lock()

    @property
    def version(self) -> str | None:
        """The version being served; None when nothing is ingested."""
        return self._state.version

    @property
    def documents(self) -> int:
        """Documents of the version being served."""
        return self._state.documents

    @property
    def chunks(self) -> int:
        """Chunks of the version being served."""
        return len(self._state.rows)

    # --- reading -----------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the active version from ``meta`` and its chunks' text (for lexical search); on
        SQLite also their embeddings (searched in memory). The new state replaces the old one in one
        assignment, so concurrent searches are safe."""
        async with self._load_lock:
            for _ in range(LOAD_ATTEMPTS):
                version, documents, found = await self._read_rows()
                # A writer may replace the version between reading the pointer and its rows (Postgres
                # reads each statement at its own moment): read again when the pointer moved.
                if await self._pointer() == version:
                    break
            row_ids = tuple(row_id for row_id, *_ in found)
            rows = tuple((doc_id, title, heading, body) for _, doc_id, title, heading, body, _ in found)
            vectors = [vector for *_, vector in found if vector is not None]
            matrix = np.vstack(vectors).astype(np.float32, copy=False) if vectors else _no_vectors()
            # Fitting TF-IDF is CPU work (milliseconds per hundred chunks): keep it off the event loop.
            lexical = await asyncio.to_thread(
                LexicalIndex, [embedding_text(Chunk(d, t, h, 0, x)) for d, t, h, x in rows]
            )
            self._state = _Snapshot(
                version=version, documents=documents, rows=rows, row_ids=row_ids, matrix=matrix,
                lexical=lexical, position={row_id: i for i, row_id in enumerate(row_ids)},
            )

    async def refresh(self) -> bool:
        """Reload when another process (``helpline kb ...``, another server) made a different version
        active; returns True when it reloaded. Costs one primary-key read of ``meta`` when nothing
        changed, so a server can call it every few seconds. Searches meanwhile keep using the old
        version until the new one is fully loaded. Raises the database's errors (the caller decides
        whether to retry later)."""
        if await self._pointer() == self.version:
            return False
        await self.load()
        return True

    async def _pointer(self) -> str | None:
        async with self._db.sessions() as session:
            return await session.scalar(select(Meta.value).where(Meta.key == META_KEY))

    async def _read_rows(
        self,
    ) -> tuple[str | None, int, list[tuple[int, str, str, str, str, np.ndarray | None]]]:
        """(version, documents, chunk rows ``(id, doc_id, title, heading, text, embedding)``); the
        embedding is None on Postgres, which searches in SQL."""
        async with self._db.sessions() as session:
            version = await session.scalar(select(Meta.value).where(Meta.key == META_KEY))
            if version is None:
                return None, 0, []
            documents = await session.scalar(
                select(func.count()).select_from(KbDocument).where(KbDocument.kb_version == version)
            )
            in_memory = self._db.backend != "postgresql"
            columns = [KbChunk.id, KbChunk.doc_id, KbDocument.title, KbChunk.heading, KbChunk.text]
            if in_memory:
                columns.append(KbChunk.embedding)
            result = await session.execute(
                select(*columns)
                .join(
                    KbDocument,
                    (KbDocument.kb_version == KbChunk.kb_version) & (KbDocument.doc_id == KbChunk.doc_id),
                )
                .where(KbChunk.kb_version == version)
                .order_by(KbChunk.doc_id, KbChunk.ordinal)
            )
            found = [(*row, None) if not in_memory else tuple(row) for row in result]
            return version, int(documents or 0), found  # type: ignore[return-value]

    @property
    def doc_ids(self) -> frozenset[str]:
        """Ids of the documents of the active version (those with at least one chunk)."""
        return frozenset(row[0] for row in self._state.rows)

    async def search(
        self, query_embedding: np.ndarray, k: int, *, query_text: str | None = None
    ) -> list[Passage]:
        """The ``k`` chunks of the active version most relevant to the query, best first.

        ``query_embedding`` is one L2-normalised vector of the embedder (shape ``(384,)`` or
        ``(1, 384)``). Without ``query_text`` the search is dense only and ``Passage.score`` is the
        cosine similarity. With it the search is hybrid: ``score = cosine + LEXICAL_WEIGHT x
        lexical`` (see :mod:`bot.lexical`; the lexical similarity is in [0, 1]), so a passage that
        also shares the question's rare words ranks higher and clears the answer threshold more
        easily, while a passage's score never drops below its cosine. Returns an empty list when
        nothing is ingested. Raises ValueError for an embedding of the wrong shape.

        On Postgres a search that finds its version's rows gone (another process wrote a new
        version) refreshes and searches the new one.
        """
        self.search_calls += 1
        query = np.asarray(query_embedding, dtype=np.float32).reshape(-1)
        if query.shape != (DIM,):
            raise ValueError(f"query embedding must have {DIM} values, got {query.shape}")
        if k < 1:
            return []
        found = await self._ranked(query, k, query_text, self._state)
        if not found and self._state.rows and self._db.backend == "postgresql" and await self.refresh():
            # Another process replaced this version and deleted its rows: serve the new version now
            # rather than nothing until the next periodic refresh.
            found = await self._ranked(query, k, query_text, self._state)
        return found

    async def _ranked(
        self, query: np.ndarray, k: int, query_text: str | None, state: _Snapshot
    ) -> list[Passage]:
        """:meth:`search` over one snapshot, which stays the same across the awaits of a search in
        SQL even if a reload swaps in another."""
        if state.version is None or not state.rows:
            return []
        # TF-IDF of the question and the in-memory scoring are CPU work: off the event loop.
        lexical = (
            await asyncio.to_thread(state.lexical.scores, query_text)
            if query_text is not None and state.lexical.size == len(state.rows)
            else None
        )
        if self._db.backend == "postgresql":
            return await self._search_sql(query, k, state, lexical)
        return await asyncio.to_thread(_top_in_memory, state, query, k, lexical)

    async def _search_sql(
        self, query: np.ndarray, k: int, state: _Snapshot, lexical: np.ndarray | None
    ) -> list[Passage]:
        # `<=>` is pgvector's cosine distance; ORDER BY it LIMIT n is what the HNSW index
        # (vector_cosine_ops) serves. For a hybrid search the candidates are the dense top n plus the
        # lexical top n (by row id); the exact cosine of every candidate comes back in the same query
        # and the fused score is ranked here.
        n = k if lexical is None else max(k, HYBRID_CANDIDATES)
        lexical_ids: list[int] = []
        if lexical is not None:
            best = np.argsort(-lexical, kind="stable")[:n]
            lexical_ids = [state.row_ids[i] for i in best if lexical[i] > 0]
        statement = text(
            """
            SELECT c.id, c.doc_id, d.title, c.heading, c.text, c.ordinal, c.embedding <=> :q AS distance
            FROM kb_chunks AS c
            JOIN kb_documents AS d ON d.kb_version = c.kb_version AND d.doc_id = c.doc_id
            WHERE c.kb_version = :version AND (
                c.id IN (
                    SELECT id FROM kb_chunks
                    WHERE kb_version = :version
                    ORDER BY embedding <=> :q
                    LIMIT :n
                )
                OR c.id = ANY(:ids)
            )
            """
        ).bindparams(bindparam("q", type_=EmbeddingType()))
        async with self._db.sessions() as session:
            result = await session.execute(
                statement, {"q": query, "version": state.version, "n": n, "ids": lexical_ids}
            )
            found = list(result)
        scored = []
        for row_id, doc_id, title, heading, body, ordinal, distance in found:
            score = 1.0 - float(distance)
            if lexical is not None and row_id in state.position:
                score += LEXICAL_WEIGHT * float(lexical[state.position[row_id]])
            scored.append((-score, doc_id, ordinal, Passage(doc_id, title, heading, body, score=score)))
        scored.sort(key=lambda item: item[:3])
        return [passage for *_, passage in scored[:k]]

    # --- writing -----------------------------------------------------------------------------------

    async def ingest(self, path: Path) -> str:
        """Make the documents of ``path`` the whole knowledge base (documents not in ``path`` are
        removed) and return the active version.

        ``path`` is a folder of ``*.md`` articles, one long ``.md`` file split by headings, or a
        ``.jsonl`` file of exported chunks (see :func:`load_documents`). See
        :meth:`replace_documents` for what gets written. Raises what :func:`load_documents` raises.
        """
        # Reading files is blocking; keep it off the event loop.
        documents = await asyncio.to_thread(load_documents, path)
        return (await self.replace_documents(documents)).version

    async def replace_documents(self, documents: Sequence[Document]) -> KbUpdate:
        """Make exactly ``documents`` the knowledge base. Idempotent: when the documents (and model)
        are those of the active version, nothing is written. Otherwise the new version's rows and
        the ``meta`` pointer are written and older versions deleted, all in one transaction; chunks
        whose text is already stored reuse their embedding instead of running the model. Raises
        ValueError for two documents with one doc id."""
        fresh = _distinct(documents)
        ids = {d.doc_id for d in fresh}
        return await self._commit(lambda stored: (fresh, set(stored.documents) - ids))

    async def add_documents(self, documents: Sequence[Document]) -> KbUpdate:
        """Add ``documents``, or replace the stored ones with the same doc id, keeping every other
        document as stored (not embedded again). A new version results unless nothing changed.
        Raises ValueError for two documents with one doc id."""
        fresh = _distinct(documents)
        return await self._commit(lambda stored: (fresh, set()))

    async def remove_documents(self, doc_ids: Iterable[str]) -> KbUpdate:
        """Remove the documents ``doc_ids``, keeping the others as stored.

        Raises:
            UnknownDocumentError: an id the active version does not have (nothing is written).
            ValueError: the knowledge base would be left without documents.
        """
        drop = set(doc_ids)

        def plan(stored: _Stored) -> tuple[list[Document], set[str]]:
            unknown = drop - stored.documents.keys()
            if unknown:
                raise UnknownDocumentError(unknown)
            if drop >= stored.documents.keys():
                raise ValueError(
                    "removing these documents would leave the knowledge base empty; to start over "
                    "from other articles use `helpline kb ingest PATH`"
                )
            return [], drop

        return await self._commit(plan)

    async def _commit(self, plan: Callable[[_Stored], tuple[list[Document], set[str]]]) -> KbUpdate:
        """Write the version ``plan`` derives from the active one: ``plan(stored)`` returns the
        documents to (re)write and the stored doc ids to drop; every other stored document is carried
        over with its chunks and embeddings. When another writer replaces the active version in
        between, the change is planned again on top of theirs (:data:`COMMIT_ATTEMPTS` times, then
        :class:`KnowledgeBaseBusy`). Raises what ``plan`` raises."""
        async with self._ingest_lock:
            for _ in range(COMMIT_ATTEMPTS):
                stored = await self._read_stored()
                fresh, drop = plan(stored)
                change = describe_change(stored.documents.values(), fresh, drop)
                fresh_ids = {d.doc_id for d in fresh}
                kept = [d for i, d in stored.documents.items() if i not in drop and i not in fresh_ids]
                pairs = [(d.doc_id, content_hash(d.markdown)) for d in fresh]
                version = kb_version_of_hashes(pairs + [(d.doc_id, d.content_sha256) for d in kept],
                                               self._embedder.model_id)
                if version == stored.version and stored.documents:
                    self.embedded_last = 0
                    await self.load()
                    return KbUpdate(version, change)
                prepared = await asyncio.to_thread(self._prepare, version, fresh, kept, stored)
                try:
                    await self._write(prepared, expected=stored.version)
                except (_Conflict, IntegrityError):
                    continue  # another writer got there first (maybe with this very version)
                self.embedded_last = prepared.embedded
                await self.load()
                return KbUpdate(version, change)
            raise KnowledgeBaseBusy(
                f"the knowledge base changed {COMMIT_ATTEMPTS} times while this change was being "
                "prepared; try again"
            )

    async def _read_stored(self) -> _Stored:
        async with self._db.sessions() as session:
            version = await session.scalar(select(Meta.value).where(Meta.key == META_KEY))
            documents = {d.doc_id: d for d in await _stored_documents(session, version)}
            chunks: dict[str, list[_StoredChunk]] = {}
            if version is not None:
                result = await session.execute(
                    select(KbChunk.doc_id, KbChunk.ordinal, KbChunk.heading, KbChunk.text, KbChunk.embedding)
                    .where(KbChunk.kb_version == version)
                    .order_by(KbChunk.doc_id, KbChunk.ordinal)
                )
                for doc_id, ordinal, heading, body, vector in result:
                    title = documents[doc_id].title if doc_id in documents else doc_id
                    chunk = Chunk(doc_id, title, heading, ordinal, body)
                    chunks.setdefault(doc_id, []).append(_StoredChunk(chunk, np.asarray(vector, np.float32)))
        return _Stored(version, documents, chunks)

    def _prepare(
        self, version: str, fresh: list[Document], kept: list[StoredDocument], stored: _Stored
    ) -> _Prepared:
        """Chunk the fresh documents and find every chunk's vector: a stored one for a text already
        embedded by this model, else the model's (blocking: runs in a worker thread)."""
        valid = stored.embeddings_valid(self._embedder.model_id)
        known = {
            embedding_text(c.chunk): c.embedding for cs in stored.chunks.values() for c in cs
        } if valid else {}
        planned: list[tuple[StoredDocument, list[Chunk]]] = []
        for document in fresh:
            chunks = chunk_article(document.doc_id, document.title, document.markdown)
            row = StoredDocument(document.doc_id, document.title, document.source,
                                 content_hash(document.markdown), len(chunks))
            planned.append((row, chunks))
        for row in kept:
            planned.append((row, [c.chunk for c in stored.chunks.get(row.doc_id, [])]))
        texts = [embedding_text(c) for _, chunks in planned for c in chunks]
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:
            known = {**known, **dict(zip(missing, self._embedder.embed(missing), strict=True))}
        documents = [
            (row, chunks, np.array([known[embedding_text(c)] for c in chunks], np.float32).reshape(-1, DIM))
            for row, chunks in planned
        ]
        return _Prepared(version, documents, embedded=len(missing))

    async def _write(self, prepared: _Prepared, *, expected: str | None) -> None:
        """Replace every stored row with ``prepared`` and point ``meta`` at its version, in one
        transaction. Raises :class:`_Conflict` when the active version is no longer ``expected``."""
        version = prepared.version
        async with self._db.sessions.begin() as session:
            # Deleting first takes the write lock (SQLite) or waits for a concurrent writer's row
            # locks (Postgres), so the pointer read next is the one this transaction replaces.
            await session.execute(delete(KbChunk))
            await session.execute(delete(KbDocument))
            active = await session.scalar(select(Meta.value).where(Meta.key == META_KEY))
            if active != expected:
                raise _Conflict
            for document, chunks, vectors in prepared.documents:
                session.add(
                    KbDocument(
                        kb_version=version,
                        doc_id=document.doc_id,
                        title=document.title[:300],
                        source=document.source[:500],
                        content_sha256=document.content_sha256,
                    )
                )
                for chunk, vector in zip(chunks, vectors, strict=True):
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
