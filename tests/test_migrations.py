"""Alembic migrations (state/migrations) and their entry point (state.migrate), on the selected backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Float, inspect, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from state.db import Database, open_database
from state.migrate import (
    PendingMigrationsError,
    UnknownRevisionError,
    current_revision,
    ensure_schema,
    head_revision,
    JOB_TABLE_PREFIX,
    include_object,
    upgrade,
)
from state.models import EMBEDDING_DIM, Base, Customer, Event, KbChunk, Ticket

HNSW_INDEX = "ix_kb_chunks_embedding_hnsw"


@pytest.fixture
async def db(migrated_database_url: str) -> AsyncIterator[Database]:
    database = open_database(migrated_database_url)
    yield database
    await database.dispose()


def _schema(connection: Connection) -> dict[str, Any]:
    inspector = inspect(connection)
    return {
        table: {
            "columns": {col["name"]: str(col["type"]) for col in inspector.get_columns(table)},
            "indexes": {ix["name"]: (tuple(ix["column_names"]), bool(ix["unique"])) for ix in inspector.get_indexes(table)},
            "unique": sorted(uc["name"] or "" for uc in inspector.get_unique_constraints(table)),
        }
        for table in inspector.get_table_names()
    }


async def _read_schema(url: str) -> dict[str, Any]:
    database = open_database(url)
    try:
        async with database.engine.connect() as connection:
            return await connection.run_sync(_schema)
    finally:
        await database.dispose()


def schema_backend(url: str) -> str:
    return make_url(url).get_backend_name()


async def test_upgrade_on_empty_database_creates_every_table_and_index(database_url: str) -> None:
    assert await current_revision(database_url) is None
    await upgrade(database_url)
    schema = await _read_schema(database_url)

    ours = {name for name in schema if not name.startswith(JOB_TABLE_PREFIX)}
    assert ours == set(Base.metadata.tables) | {"alembic_version"}
    # The job queue's tables exist where jobs are durable (Postgres); SQLite keeps jobs in memory.
    job_tables = {name for name in schema if name.startswith(JOB_TABLE_PREFIX)}
    if schema_backend(database_url) == "postgresql":
        assert job_tables == {
            "procrastinate_jobs", "procrastinate_events", "procrastinate_periodic_defers",
            "procrastinate_workers",
        }
    else:
        assert job_tables == set()
    for table in Base.metadata.sorted_tables:
        assert set(schema[table.name]["columns"]) == {c.name for c in table.columns}, table.name
        for index in table.indexes:
            columns, unique = schema[table.name]["indexes"][index.name]
            assert columns == tuple(c.name for c in index.columns), index.name
            assert unique == bool(index.unique), index.name
    assert schema["tickets"]["indexes"]["uq_ticket_one_open_per_customer"] == (("customer_id",), True)
    assert set(schema["customer_identities"]["unique"]) == {"uq_identity_channel_address"}
    assert set(schema["messages"]["unique"]) == {"uq_message_provider_id", "uq_message_customer_seq"}
    assert set(schema["kb_documents"]["unique"]) == {"uq_kb_document_version"}


async def test_backend_specific_schema(db: Database) -> None:
    async with db.engine.connect() as connection:
        if db.backend == "postgresql":
            extension = await connection.scalar(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))
            assert extension is not None
            column_type = await connection.scalar(
                text(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = 'kb_chunks'::regclass AND attname = 'embedding'"
                )
            )
            assert column_type == f"vector({EMBEDDING_DIM})"
            indexdef = await connection.scalar(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"), {"name": HNSW_INDEX}
            )
            assert indexdef is not None and "USING hnsw (embedding vector_cosine_ops)" in indexdef
            triggers = set(
                (await connection.execute(text("SELECT tgname FROM pg_trigger WHERE tgrelid = 'events'::regclass AND NOT tgisinternal"))).scalars()
            )
            assert triggers == {"events_no_update", "events_no_delete", "events_no_truncate"}
        else:
            column_type = await connection.scalar(
                text("SELECT type FROM pragma_table_info('kb_chunks') WHERE name = 'embedding'")
            )
            assert column_type == "BLOB"
            triggers = set(
                (await connection.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'"))).scalars()
            )
            assert triggers == {"events_no_update", "events_no_delete"}
            assert await connection.scalar(
                text("SELECT sql FROM sqlite_master WHERE name = 'uq_ticket_one_open_per_customer'")
            ) == "CREATE UNIQUE INDEX uq_ticket_one_open_per_customer ON tickets (customer_id) WHERE state <> 'closed'"


async def test_head_equals_current_after_upgrade(database_url: str) -> None:
    await upgrade(database_url)
    assert await current_revision(database_url) == head_revision()
    assert await ensure_schema(database_url, "refuse") == head_revision()


async def test_refuse_on_empty_database_names_the_upgrade_command(database_url: str) -> None:
    with pytest.raises(PendingMigrationsError) as excinfo:
        await ensure_schema(database_url, "refuse")
    message = str(excinfo.value)
    assert "`helpline db upgrade`" in message
    assert message.startswith(f"database at revision empty, code expects {head_revision()}")
    # Refusing changed nothing.
    assert await current_revision(database_url) is None


async def test_auto_upgrades_an_empty_database(database_url: str) -> None:
    assert await ensure_schema(database_url, "auto") == head_revision()
    assert await current_revision(database_url) == head_revision()
    assert "tickets" in await _read_schema(database_url)


async def test_upgrading_twice_is_a_no_op(database_url: str) -> None:
    await upgrade(database_url)
    before = await _read_schema(database_url)
    await upgrade(database_url)
    assert await _read_schema(database_url) == before
    assert await current_revision(database_url) == head_revision()
    database = open_database(database_url)
    try:
        async with database.engine.connect() as connection:
            assert await connection.scalar(text("SELECT count(*) FROM alembic_version")) == 1
    finally:
        await database.dispose()


async def test_unknown_database_revision_is_reported_under_both_policies(db: Database) -> None:
    async with db.engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = 'from_the_future'"))
    for policy in ("auto", "refuse"):
        with pytest.raises(UnknownRevisionError, match="from_the_future"):
            await ensure_schema(db.url, policy)


async def test_unknown_policy_is_rejected(database_url: str) -> None:
    with pytest.raises(ValueError, match="policy"):
        await ensure_schema(database_url, "sometimes")


async def test_models_and_migrations_agree(db: Database) -> None:
    """Autogenerate finds nothing to do: every model change comes with its migration."""
    import pgvector.sqlalchemy  # noqa: F401  (registers the vector type for reflection)

    def diff(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": include_object}
        )
        return list(compare_metadata(context, Base.metadata))

    async with db.engine.connect() as connection:
        assert await connection.run_sync(diff) == []


async def test_events_reject_update_and_delete(db: Database) -> None:
    async with db.sessions() as session, session.begin():
        session.add(Event(kind="turn", payload={"n": 1}))
    for statement in ("UPDATE events SET kind = 'edited'", "DELETE FROM events"):
        with pytest.raises(DBAPIError, match="events is append-only"):
            async with db.engine.begin() as connection:
                await connection.execute(text(statement))
    async with db.sessions() as session:
        kinds = (await session.execute(select(Event.kind))).scalars().all()
    assert kinds == ["turn"]


async def test_one_open_ticket_per_customer(db: Database) -> None:
    async with db.sessions() as session, session.begin():
        customer = Customer(display_name="Ada")
        session.add(customer)
        await session.flush()
        session.add(Ticket(customer_id=customer.id, channel="web", state="closed"))
        session.add(Ticket(customer_id=customer.id, channel="web", state="closed"))
        session.add(Ticket(customer_id=customer.id, channel="web", state="bot"))
    customer_id = customer.id

    with pytest.raises(IntegrityError):
        async with db.sessions() as session, session.begin():
            session.add(Ticket(customer_id=customer_id, channel="sms", state="human"))

    async with db.sessions() as session:
        states = sorted((await session.execute(select(Ticket.state))).scalars().all())
    assert states == ["bot", "closed", "closed"]


async def test_embedding_round_trip(db: Database) -> None:
    vector = np.linspace(-1, 1, EMBEDDING_DIM, dtype=np.float32)
    async with db.sessions() as session, session.begin():
        session.add(
            KbChunk(kb_version="v1", doc_id="d", ordinal=0, heading="h", text="t", embedding=vector)
        )
    async with db.sessions() as session:
        stored = (await session.execute(select(KbChunk.embedding))).scalar_one()
        assert np.array_equal(stored, vector)
        if db.backend == "postgresql":
            distance = await session.scalar(
                select(KbChunk.embedding.op("<=>", return_type=Float())(vector))
            )
            assert distance == pytest.approx(0.0, abs=1e-6)
