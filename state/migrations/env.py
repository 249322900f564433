"""Alembic environment: runs the migrations in ``versions/`` on SQLite or Postgres.

Configured programmatically by :mod:`state.migrate` (no ``alembic.ini``): ``script_location`` is this
folder and ``sqlalchemy.url`` the async database URL. Migrations run through the async engine
(``connection.run_sync``) in an event loop of their own, which is why :mod:`state.migrate` calls
Alembic from a worker thread: nothing here may run on the server's loop.

A caller holding an open synchronous connection (e.g. inside ``AsyncConnection.run_sync``) can pass
it as ``config.attributes["connection"]``; it is then used as is, in the caller's transaction.
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from state.db import open_database
from state.migrate import include_object
from state.models import Base, EmbeddingType, UTCDateTime

config = context.config
target_metadata = Base.metadata

# Any constant shared by every Helpline process: serialises concurrent upgrades on Postgres (several
# workers starting at once with HELPLINE_MIGRATE=auto), so only the first one applies migrations.
_PG_ADVISORY_LOCK_ID = 0x48454C50  # "HELP"


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Render our column types so that generated migrations import and run without edits."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        # Python-side conversion only; the DDL is a plain timestamp with time zone.
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, EmbeddingType):
        # Dialect-dependent DDL (vector(384) / BLOB) must stay the type's decision.
        autogen_context.imports.add("from state.models import EmbeddingType")
        return "EmbeddingType()"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        include_object=include_object,
        render_item=render_item,
        compare_type=True,
        # SQLite cannot ALTER most things: generated operations go through table rebuilds.
        render_as_batch=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """``--sql`` mode: print the DDL for the configured URL's dialect instead of running it."""
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Held until this transaction commits; Alembic reads the version table after it.
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_ADVISORY_LOCK_ID})
        context.run_migrations()


async def run_async_migrations(url: str) -> None:
    database = open_database(url, pool_size=1)
    try:
        async with database.engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # Table rebuilds (batch mode) drop and re-create referenced tables.
                await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await database.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
        return
    # Import the version files now, before the loop starts, so no file I/O happens on it.
    context.script.revision_map.heads  # noqa: B018
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("sqlalchemy.url is not set: run migrations through state.migrate")
    asyncio.run(run_async_migrations(url))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
