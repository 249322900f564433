"""Knowledge base: articles, chunking, versions, ingest (SQLite or Postgres) and retrieval quality.

Runs on a temporary SQLite file by default; set ``HELPLINE_TEST_DATABASE_URL`` to a
``postgresql+asyncpg://`` URL (with pgvector available) to run the same tests on Postgres, each in a
fresh schema that is dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from bot.embeddings import Embedder
from bot.knowledge import (
    META_KEY,
    Chunk,
    KbChange,
    KnowledgeBase,
    UnknownDocumentError,
    active_documents,
    chunk_article,
    embedding_text,
    kb_version,
    load_article,
    load_articles,
    split_sentences,
)
from config.settings import CONFIG_DIR
from state.db import Database, open_database
from state.models import Base, KbChunk, KbDocument, Meta

KB_DIR = CONFIG_DIR / "kb"
KB_TABLES = [Base.metadata.tables[name] for name in ("kb_documents", "kb_chunks", "meta")]
HNSW_INDEX_SQL = (
    "CREATE INDEX IF NOT EXISTS ix_kb_chunks_embedding_hnsw "
    "ON kb_chunks USING hnsw (embedding vector_cosine_ops)"
)

# Customer questions written for this test (not taken from any data set), with the article that
# answers them. Phrased the way customers write, not the way the articles are worded.
QUESTIONS: list[tuple[str, str]] = [
    ("how long do refunds take", "refunds"),
    ("when will I get my money back for the jacket I sent back", "refunds"),
    ("in which cases can I ask for a refund", "refunds"),
    ("where can I see if my refund has been processed", "refunds"),
    ("I returned something two weeks ago and still no money on my card", "refunds"),
    ("how many days do I have to send an item back", "returns"),
    ("do I have to pay for the return label", "returns"),
    ("can I swap these shoes for a bigger size", "returns"),
    ("what delivery methods can I choose from", "delivery-options"),
    ("can I pick up my parcel at a collection point", "delivery-options"),
    ("is next day delivery available", "delivery-options"),
    ("how soon will my package arrive", "delivery-times"),
    ("how many business days does shipping to Germany take", "delivery-times"),
    ("do you deliver to Canada", "shipping"),
    ("how much is shipping", "shipping"),
    ("do I pay customs duties on orders to France", "shipping"),
    ("where is my parcel right now", "order-tracking"),
    ("my tracking number shows nothing", "order-tracking"),
    ("the parcel says delivered but it's not here", "order-tracking"),
    ("what payment options do you take", "payments"),
    ("can I pay with PayPal", "payments"),
    ("my card keeps getting declined at checkout", "payments"),
    ("I was charged twice for one order", "payments"),
    ("where do I find the invoice for my purchase", "invoices"),
    ("how can I download my bills as PDF", "invoices"),
    ("the company name on my invoice is wrong, can you fix it", "invoices"),
    ("how do I open a new account", "accounts"),
    ("I want to update my email address on my profile", "accounts"),
    ("how do I close my account permanently", "accounts"),
    ("how do I switch to my business account", "accounts"),
    ("what's the difference between the personal and plus membership", "accounts"),
    ("I forgot my password and can't log in", "sign-in-help"),
    ("the sign-up form gives me an error when I register", "sign-in-help"),
    ("I never got the verification email", "sign-in-help"),
    ("how do I cancel my order", "cancellations"),
    ("is there a fee if I cancel", "cancellations"),
    ("what is the early termination penalty for the membership", "cancellations"),
    ("I want to change the size of an item in my order", "changing-an-order"),
    ("can I remove a product from an order I already placed", "changing-an-order"),
    ("how do I set up a new delivery address", "shipping-address"),
    ("I typed the wrong street on my order, how do I fix the address", "shipping-address"),
    ("how do I buy something on your site", "placing-an-order"),
    ("can I check out without an account", "placing-an-order"),
    ("can I place an order over the phone", "placing-an-order"),
    ("my blender stopped working after 8 months, is it covered", "warranty"),
    ("how long is the guarantee on your products", "warranty"),
    ("what are your customer service opening hours", "contact"),
    ("what's your support phone number", "contact"),
    ("how do I sign up for your newsletter", "newsletter"),
    ("stop sending me marketing emails", "newsletter"),
    ("how can I leave a review for a product", "reviews-and-feedback"),
    ("where can I send suggestions about your service", "reviews-and-feedback"),
    ("I want to file a formal complaint", "complaints"),
    ("nobody solved my complaint, how do I escalate it", "complaints"),
]

SAMPLE = """# Returns & refunds

Short introduction with a [link](https://example.com/returns).

## How do I return an item?
Open **Account**, then *Orders*, and choose `Return items`.
We email you a label.

- Pack the items
- Drop the parcel at a UPS location!

## How long does it take?
{long}
"""


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder.load()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """Empty knowledge-base tables on SQLite (default) or in a fresh Postgres schema."""
    url = os.environ.get("HELPLINE_TEST_DATABASE_URL")
    if not url:
        database = open_database(f"sqlite+aiosqlite:///{tmp_path / 'kb.db'}")
        async with database.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all, tables=KB_TABLES)
        yield database
        await database.dispose()
        return

    schema = f"kbtest_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(url)
    async with admin.begin() as conn:
        await conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = create_async_engine(
        url, connect_args={"server_settings": {"search_path": f"{schema},public"}}
    )
    database = Database(url=url, engine=engine, sessions=async_sessionmaker(engine, expire_on_commit=False))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all, tables=KB_TABLES)
            await conn.execute(text(HNSW_INDEX_SQL))
        yield database
    finally:
        await engine.dispose()
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


@pytest.fixture
def kb_copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped articles."""
    target = tmp_path / "kb"
    shutil.copytree(KB_DIR, target)
    return target


async def row_counts(db: Database) -> dict[str, int]:
    async with db.sessions() as session:
        return {
            "documents": await session.scalar(select(func.count()).select_from(KbDocument)),
            "chunks": await session.scalar(select(func.count()).select_from(KbChunk)),
            "versions": await session.scalar(select(func.count(func.distinct(KbChunk.kb_version)))),
        }


# --- articles and chunking -------------------------------------------------------------------------


def test_chunk_article_one_chunk_per_section_plain_text() -> None:
    paragraph = " ".join(f"Sentence number {i} explains one more detail of the refund." for i in range(12))
    long_section = "\n\n".join([paragraph, paragraph])  # two paragraphs of ~700 chars each
    chunks = chunk_article("returns-sample", "Returns & refunds", SAMPLE.format(long=long_section))

    assert [c.heading for c in chunks] == [
        "Returns & refunds",  # the introduction before the first ## section
        "How do I return an item?",
        "How long does it take?",
        "How long does it take?",  # the long section, split on its paragraph boundary
    ]
    assert [c.ordinal for c in chunks] == [0, 1, 2, 3]
    assert all(isinstance(c, Chunk) and c.doc_id == "returns-sample" for c in chunks)
    assert chunks[0].text == "Short introduction with a link."
    assert chunks[1].text == (
        "Open Account, then Orders, and choose Return items. We email you a label. "
        "Pack the items. Drop the parcel at a UPS location!"
    )
    assert chunks[2].text == paragraph and chunks[3].text == paragraph
    assert all(len(c.text) <= 800 for c in chunks)
    for c in chunks:
        assert not any(mark in c.text for mark in ("**", "`", "](", "\n", "## "))


def test_split_sentences_keeps_abbreviations_and_is_verbatim() -> None:
    sample = "Open from 8 a.m. to 8 p.m. Eastern Time. Shipping costs $4.95! Is it free? Yes."
    sentences = split_sentences(sample)
    assert sentences == [
        "Open from 8 a.m. to 8 p.m. Eastern Time.",
        "Shipping costs $4.95!",
        "Is it free?",
        "Yes.",
    ]
    assert all(s in sample for s in sentences)


def test_shipped_articles_cover_every_topic() -> None:
    articles = load_articles(KB_DIR)
    ids = [doc_id for doc_id, _, _ in articles]
    assert ids == sorted(ids)
    assert set(ids) >= {
        "shipping", "delivery-options", "delivery-times", "order-tracking", "returns", "refunds",
        "payments", "invoices", "accounts", "sign-in-help", "cancellations", "changing-an-order",
        "shipping-address", "placing-an-order", "warranty", "contact", "newsletter",
        "reviews-and-feedback", "complaints",
    }
    for doc_id, title, markdown in articles:
        chunks = chunk_article(doc_id, title, markdown)
        assert markdown.splitlines()[0] == f"# {title}"
        assert len(chunks) >= 3, doc_id
        assert all(c.heading != title for c in chunks), f"{doc_id}: text before the first section"
        assert all(40 <= len(c.text) <= 800 for c in chunks), doc_id


def test_article_without_title_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "good.md").write_text("# Good\n\n## A\nText.\n", encoding="utf-8")
    (tmp_path / "untitled.md").write_text("## Only a section\nText.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"untitled\.md.*'# Title'"):
        load_articles(tmp_path)

    (tmp_path / "untitled.md").write_text("#   \n\n## A\nText.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"untitled\.md"):
        load_articles(tmp_path)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no \\*.md articles"):
        load_articles(tmp_path)


def test_version_is_stable_and_follows_content_and_model() -> None:
    articles = load_articles(KB_DIR)
    version = kb_version(articles, "model-a")
    assert version.startswith("kb-") and len(version) == 15
    assert int(version[3:], 16) >= 0
    assert kb_version(list(reversed(articles)), "model-a") == version  # order does not matter
    assert kb_version(load_articles(KB_DIR), "model-a") == version

    doc_id, title, markdown = articles[0]
    edited = [(doc_id, title, markdown + "\nOne more sentence.\n"), *articles[1:]]
    assert kb_version(edited, "model-a") != version
    assert kb_version(articles, "model-b") != version
    assert kb_version(articles[1:], "model-a") != version


# --- ingest and storage ----------------------------------------------------------------------------


async def test_empty_knowledge_base(db: Database, embedder: Embedder) -> None:
    kb = KnowledgeBase(db, embedder)
    await kb.load()
    assert (kb.version, kb.documents, kb.chunks) == (None, 0, 0)
    assert await kb.search(embedder.embed(["refund"])[0], 3) == []
    assert kb.search_calls == 1


async def test_ingest_twice_gives_same_version_and_rows(db: Database, embedder: Embedder) -> None:
    kb = KnowledgeBase(db, embedder)
    articles = load_articles(KB_DIR)
    expected_chunks = sum(len(chunk_article(*a)) for a in articles)

    version = await kb.ingest(KB_DIR)
    assert version == kb_version(articles, embedder.model_id)
    assert (kb.version, kb.documents, kb.chunks) == (version, len(articles), expected_chunks)
    first = await row_counts(db)
    assert first == {"documents": len(articles), "chunks": expected_chunks, "versions": 1}

    calls = embedder.calls
    assert await kb.ingest(KB_DIR) == version
    assert embedder.calls == calls  # unchanged content: nothing re-embedded
    assert await row_counts(db) == first

    # A second process (fresh instance) sees the same knowledge base after load().
    other = KnowledgeBase(db, embedder)
    await other.load()
    assert (other.version, other.documents, other.chunks) == (version, len(articles), expected_chunks)
    [best] = await other.search(embedder.embed(["how long does a refund take"])[0], 1)
    assert best.doc_id == "refunds"


async def test_reingest_after_edit_replaces_old_rows(
    db: Database, embedder: Embedder, kb_copy: Path
) -> None:
    kb = KnowledgeBase(db, embedder)
    old = await kb.ingest(kb_copy)

    path = kb_copy / "warranty.md"
    path.write_text(
        path.read_text(encoding="utf-8")
        + "\n## Does the warranty cover batteries?\nBatteries are covered for 6 months from delivery.\n",
        encoding="utf-8",
    )
    (kb_copy / "gift-cards.md").write_text(
        "# Gift cards\n\n## Do gift cards expire?\nNorthwind gift cards never expire.\n"
        "\n## Can I return a gift card?\nGift cards cannot be returned or exchanged for cash.\n",
        encoding="utf-8",
    )
    new = await kb.ingest(kb_copy)
    assert new != old
    assert kb.version == new

    async with db.sessions() as session:
        versions = set(await session.scalars(select(KbChunk.kb_version).distinct()))
        doc_versions = set(await session.scalars(select(KbDocument.kb_version).distinct()))
        meta = await session.scalar(select(Meta.value).where(Meta.key == META_KEY))
    assert versions == doc_versions == {new}
    assert meta == new
    counts = await row_counts(db)
    assert counts["documents"] == kb.documents == len(load_articles(kb_copy))
    assert counts["chunks"] == kb.chunks

    [best] = await kb.search(embedder.embed(["do your gift cards have an expiry date"])[0], 1)
    assert (best.doc_id, best.heading) == ("gift-cards", "Do gift cards expire?")
    [best] = await kb.search(embedder.embed(["is the battery covered by warranty"])[0], 1)
    assert best.text == "Batteries are covered for 6 months from delivery."


async def test_search_returns_passages_with_cosine_scores(db: Database, embedder: Embedder) -> None:
    kb = KnowledgeBase(db, embedder)
    await kb.ingest(KB_DIR)
    query = embedder.embed(["what are your customer service opening hours"])[0]
    passages = await kb.search(query, 5)
    assert len(passages) == 5
    scores = [p.score for p in passages]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    top = passages[0]
    assert (top.doc_id, top.title, top.heading) == (
        "contact", "Contacting customer service", "When is customer service open?",
    )
    assert "Monday to Friday from 8 a.m. to 8 p.m. Eastern Time" in top.text
    # The score is the cosine similarity to the embedded chunk (same value on SQLite and pgvector).
    chunk = next(
        c for c in chunk_article(*next(a for a in load_articles(KB_DIR) if a[0] == "contact"))
        if c.heading == top.heading
    )
    from bot.knowledge import embedding_text

    expected = float(embedder.embed([embedding_text(chunk)])[0] @ query)
    assert top.score == pytest.approx(expected, abs=1e-3)
    assert await kb.search(query, 10_000) and len(await kb.search(query, 10_000)) == kb.chunks


async def test_paraphrased_questions_find_the_right_article(
    db: Database, embedder: Embedder
) -> None:
    kb = KnowledgeBase(db, embedder)
    await kb.ingest(KB_DIR)
    vectors = embedder.embed([q for q, _ in QUESTIONS])
    hit1 = hit3 = 0
    misses = []
    for (question, expected), vector in zip(QUESTIONS, vectors, strict=True):
        found = [p.doc_id for p in await kb.search(vector, 3)]
        hit1 += found[0] == expected
        hit3 += expected in found
        if found[0] != expected:
            misses.append((question, expected, found))
    n = len(QUESTIONS)
    print(f"\nretrieval over {n} questions: hit@1 {hit1 / n:.3f}, hit@3 {hit3 / n:.3f}; misses {misses}")
    assert n >= 25
    assert hit3 == n, misses
    assert hit1 / n >= 0.9, misses
    assert kb.search_calls == n


async def test_query_embedding_shape_is_checked(db: Database, embedder: Embedder) -> None:
    kb = KnowledgeBase(db, embedder)
    await kb.ingest(KB_DIR)
    as_row = await kb.search(embedder.embed(["refund"]), 2)  # (1, 384) is accepted
    assert len(as_row) == 2
    with pytest.raises(ValueError, match="384"):
        await kb.search(np.zeros(10, dtype=np.float32), 2)


# --- changing some documents, and servers picking up new versions ---------------------------------

GIFT_CARDS = (
    "# Gift cards\n\n## Do gift cards expire?\nNorthwind gift cards never expire.\n"
    "\n## Can I return a gift card?\nGift cards cannot be returned or exchanged for cash.\n"
)
BATTERY_SECTION = "\n## Does the warranty cover batteries?\nBatteries are covered for 6 months from delivery.\n"


class CountingEmbedder:
    """The real embedder, recording every text it is asked to embed; ``model_id`` may be overridden
    to stand for another model."""

    def __init__(self, embedder: Embedder, model_id: str | None = None) -> None:
        self.embedder = embedder
        self.model_id = model_id or embedder.model_id
        self.dim = embedder.dim
        self.texts: list[str] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.texts.extend(texts)
        return self.embedder.embed(texts)


async def test_reingest_embeds_only_new_or_edited_passages(
    db: Database, embedder: Embedder, kb_copy: Path
) -> None:
    counting = CountingEmbedder(embedder)
    kb = KnowledgeBase(db, counting)  # type: ignore[arg-type]
    await kb.ingest(kb_copy)
    articles = load_articles(KB_DIR)
    first = [embedding_text(c) for a in articles for c in chunk_article(*a)]
    assert sorted(counting.texts) == sorted(set(first))

    counting.texts.clear()
    warranty = kb_copy / "warranty.md"
    warranty.write_text(warranty.read_text(encoding="utf-8") + BATTERY_SECTION, encoding="utf-8")
    (kb_copy / "gift-cards.md").write_text(GIFT_CARDS, encoding="utf-8")
    version = await kb.ingest(kb_copy)

    assert version == kb_version(load_articles(kb_copy), counting.model_id)
    assert counting.texts == [
        "Gift cards: Do gift cards expire?. Northwind gift cards never expire.",
        "Gift cards: Can I return a gift card?. Gift cards cannot be returned or exchanged for cash.",
        "Warranty: Does the warranty cover batteries?. Batteries are covered for 6 months from delivery.",
    ]
    assert kb.embedded_last == 3 and (kb.documents, kb.chunks) == (20, len(first) + 3)
    # Reused vectors are the stored ones: a search scores them as freshly embedded chunks.
    query = embedder.embed(["what does the warranty cover"])[0]
    [best] = await kb.search(query, 1)
    assert best.heading == "What does the warranty cover?"
    fresh = embedder.embed([f"Warranty: {best.heading}. {best.text}"])[0]
    assert best.score == pytest.approx(float(fresh @ query), abs=1e-5)


async def test_vectors_of_another_model_are_not_reused(db: Database, embedder: Embedder) -> None:
    await KnowledgeBase(db, embedder).ingest(KB_DIR)
    other = CountingEmbedder(embedder, model_id="another-model@0000")
    kb = KnowledgeBase(db, other)  # type: ignore[arg-type]
    version = await kb.ingest(KB_DIR)
    assert version == kb_version(load_articles(KB_DIR), "another-model@0000")
    assert len(other.texts) == kb.chunks == sum(len(chunk_article(*a)) for a in load_articles(KB_DIR))


async def test_add_and_remove_keep_the_other_documents_as_stored(
    db: Database, embedder: Embedder, kb_copy: Path
) -> None:
    counting = CountingEmbedder(embedder)
    kb = KnowledgeBase(db, counting)  # type: ignore[arg-type]
    base = await kb.ingest(kb_copy)
    ids = sorted(a[0] for a in load_articles(kb_copy))
    counting.texts.clear()

    (kb_copy / "gift-cards.md").write_text(GIFT_CARDS, encoding="utf-8")
    warranty = kb_copy / "warranty.md"
    warranty.write_text(warranty.read_text(encoding="utf-8") + BATTERY_SECTION, encoding="utf-8")
    added = await kb.add_documents([load_article(kb_copy / "gift-cards.md"), load_article(warranty)])

    assert added.change == KbChange(
        added=("gift-cards",), changed=("warranty",), unchanged=tuple(i for i in ids if i != "warranty")
    )
    assert len(counting.texts) == 3  # the two gift-card sections and the new warranty section
    # The version is a function of the documents alone: the same as ingesting that folder.
    assert added.version == kb.version == kb_version(load_articles(kb_copy), counting.model_id)
    version_id, stored = await active_documents(db)
    assert version_id == added.version and [d.doc_id for d in stored] == sorted([*ids, "gift-cards"])
    gift = next(d for d in stored if d.doc_id == "gift-cards")
    assert (gift.title, gift.source, gift.chunks) == ("Gift cards", "gift-cards.md", 2)

    again = await kb.add_documents([load_article(kb_copy / "gift-cards.md")])
    assert again.version == added.version and again.change.empty and len(counting.texts) == 3

    counting.texts.clear()
    removed = await kb.remove_documents(["gift-cards"])
    assert removed.change.removed == ("gift-cards",) and removed.change.added == removed.change.changed == ()
    assert counting.texts == []
    (kb_copy / "gift-cards.md").unlink()
    assert removed.version == kb_version(load_articles(kb_copy), counting.model_id) != base
    assert "gift-cards" not in kb.doc_ids and kb.documents == len(ids)
    assert await row_counts(db) == {"documents": len(ids), "chunks": kb.chunks, "versions": 1}


async def test_removing_unknown_or_all_documents_is_refused(db: Database, embedder: Embedder) -> None:
    kb = KnowledgeBase(db, embedder)
    version = await kb.ingest(KB_DIR)
    with pytest.raises(UnknownDocumentError) as caught:
        await kb.remove_documents(["refunds", "nope", "gone"])
    assert caught.value.doc_ids == ["gone", "nope"]
    assert str(caught.value).startswith("no such document in the knowledge base: 'gone', 'nope'")
    with pytest.raises(ValueError, match="would leave the knowledge base empty"):
        await kb.remove_documents(kb.doc_ids)
    assert kb.version == version and kb.documents == len(load_articles(KB_DIR))


async def test_a_write_planned_on_a_replaced_version_is_planned_again(
    db: Database, embedder: Embedder, tmp_path: Path
) -> None:
    kb = KnowledgeBase(db, embedder)
    await kb.ingest(KB_DIR)
    other = KnowledgeBase(db, embedder)
    (tmp_path / "gift-cards.md").write_text(GIFT_CARDS, encoding="utf-8")
    (tmp_path / "pets.md").write_text("# Pets\n\n## Can I bring my dog?\nDogs are welcome in our stores.\n", encoding="utf-8")
    read_stored = kb._read_stored
    calls = 0

    async def other_writes_meanwhile() -> object:
        nonlocal calls
        calls += 1
        stored = await read_stored()
        if calls == 1:  # another process adds an article after this one read the active version
            await other.add_documents([load_article(tmp_path / "pets.md")])
        return stored

    kb._read_stored = other_writes_meanwhile  # type: ignore[method-assign]
    update = await kb.add_documents([load_article(tmp_path / "gift-cards.md")])
    assert calls == 2
    assert {"gift-cards", "pets"} <= kb.doc_ids  # neither write is lost
    assert update.change.added == ("gift-cards",) and "pets" in update.change.unchanged


async def test_refresh_picks_up_a_version_another_process_wrote(
    db: Database, embedder: Embedder, tmp_path: Path
) -> None:
    writer = KnowledgeBase(db, embedder)
    server = KnowledgeBase(db, embedder)
    await server.load()
    assert await server.refresh() is False and server.version is None  # nothing ingested yet

    old = await writer.ingest(KB_DIR)
    assert await server.refresh() is True and server.version == old

    loads = 0
    load = server.load

    async def counted_load() -> None:
        nonlocal loads
        loads += 1
        await load()

    server.load = counted_load  # type: ignore[method-assign]
    assert await server.refresh() is False and loads == 0  # unchanged: only the pointer was read

    question = "do your gift cards expire"
    vector = embedder.embed([question])[0]
    (tmp_path / "gift-cards.md").write_text(GIFT_CARDS, encoding="utf-8")
    new = (await writer.add_documents([load_article(tmp_path / "gift-cards.md")])).version
    [first] = await server.search(vector, 1, query_text=question)
    if db.backend == "postgresql":
        # The writer deleted the old version's rows, so the search found none and moved itself to
        # the new version rather than answer from nothing until the periodic refresh.
        assert (server.version, first.doc_id, loads) == (new, "gift-cards", 1)
    else:
        assert server.version == old and first.doc_id != "gift-cards"  # until it refreshes
        assert await server.refresh() is True and loads == 1
    assert (server.version, server.documents) == (new, len(load_articles(KB_DIR)) + 1)
    [best] = await server.search(vector, 1, query_text=question)
    assert (best.doc_id, best.text) == ("gift-cards", "Northwind gift cards never expire.")

    await writer.remove_documents(["gift-cards"])
    assert await server.refresh() is True and "gift-cards" not in server.doc_ids
    assert server.version == old  # the same documents give the same version again


async def test_searches_during_a_reload_see_the_old_version_then_the_new(
    db: Database, embedder: Embedder, tmp_path: Path
) -> None:
    writer = KnowledgeBase(db, embedder)
    await writer.ingest(KB_DIR)
    server = KnowledgeBase(db, embedder)
    await server.load()
    (tmp_path / "gift-cards.md").write_text(GIFT_CARDS, encoding="utf-8")
    await writer.add_documents([load_article(tmp_path / "gift-cards.md")])

    question = "can I return a gift card for cash"
    vector = embedder.embed([question])[0]
    reload = asyncio.create_task(server.refresh())
    seen: list[tuple[str | None, str]] = []
    while not reload.done():  # search on every turn of the loop while the reload awaits
        searched = server.version  # a search keeps the snapshot it started on, even if a swap lands
        [best] = await server.search(vector, 1, query_text=question)
        seen.append((searched, best.doc_id))
        await asyncio.sleep(0)
    assert await reload is True
    [best] = await server.search(vector, 1, query_text=question)
    assert best.doc_id == "gift-cards"
    old_version = seen[0][0]
    if db.backend == "postgresql":
        # The old version's rows are gone: a search during the reload finds none and loads the new
        # version itself, so no search answers from nothing.
        assert seen and all(doc in ("gift-cards", "returns") for _, doc in seen), seen
    else:
        assert len(seen) > 1 and all(v == old_version and doc != "gift-cards" for v, doc in seen)
