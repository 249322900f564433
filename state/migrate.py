"""Schema migrations: where the database stands, and bringing it up to the code's revision.

The one entry point to Alembic for the rest of Helpline (``helpline serve`` at start-up, ``helpline db
upgrade``, tests). Alembic is configured here, in code: there is no ``alembic.ini``.

Alembic is synchronous and reads its scripts from disk, so every call runs in a worker thread with an
event loop of its own (see ``migrations/env.py``); the caller's loop never blocks on it. This module
decides nothing about *when* to migrate: the caller passes the policy (``HELPLINE_MIGRATE``).
"""

from __future__ import annotations

import asyncio
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock
from sqlalchemy.engine import make_url
from sqlalchemy.schema import SchemaItem

from state.db import open_database

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
UPGRADE_COMMAND = "helpline db upgrade"

MIGRATION_ONLY_INDEXES = frozenset({"ix_kb_chunks_embedding_hnsw"})
"""Indexes created by hand in migrations (pgvector HNSW) that the ORM models do not declare."""


JOB_TABLE_PREFIX = "procrastinate_"
MIGRATE_LOCK_TIMEOUT_S = 120.0
"""How long a process waits for another one migrating the same SQLite file."""


def include_object(
    obj: SchemaItem, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Autogenerate filter: never propose dropping the migration-only indexes or the job queue's
    tables (``procrastinate_*``, installed by migration 0003 from the pinned release's schema)."""
    if type_ == "table" and name and name.startswith(JOB_TABLE_PREFIX):
        return False
    return not (type_ == "index" and name in MIGRATION_ONLY_INDEXES)


class PendingMigrationsError(RuntimeError):
    """The database schema is behind the code and the policy forbids upgrading it."""

    def __init__(self, current: str | None, head: str) -> None:
        self.current = current
        self.head = head
        super().__init__(
            f"database at revision {current or 'empty'}, code expects {head}: run `{UPGRADE_COMMAND}`"
        )


class UnknownRevisionError(RuntimeError):
    """The database is at a revision this code does not know: newer code has migrated it."""

    def __init__(self, current: str, head: str) -> None:
        self.current = current
        self.head = head
        super().__init__(
            f"database at revision {current}, which this code (head {head}) does not know: it was "
            "migrated by a newer Helpline; run that version, or restore a backup taken before it"
        )


def alembic_config(url: str | None = None) -> Config:
    """An Alembic ``Config`` for our script folder and, when given, the database ``url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation: a literal % (URL-encoded password) must be doubled.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The revision the code expects (the single head of ``migrations/versions``).

    Reads the script folder on the first call (then cached): call it once at start-up, not per request.
    """
    head = _script().get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations in {MIGRATIONS_DIR / 'versions'}")
    return head


def _is_missing_sqlite_file(url: str) -> bool:
    parsed = make_url(url)
    return (
        parsed.get_backend_name() == "sqlite"
        and parsed.database not in (None, "", ":memory:")
        and not Path(str(parsed.database)).exists()
    )


async def _read_revision(url: str) -> str | None:
    database = open_database(url, pool_size=1)
    try:
        async with database.engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await database.dispose()


def _current_revision_blocking(url: str) -> str | None:
    if _is_missing_sqlite_file(url):
        return None  # don't create an empty database file just to look at it
    return asyncio.run(_read_revision(url))


async def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at; ``None`` for an empty (never migrated) database."""
    return await asyncio.to_thread(_current_revision_blocking, url)


def _upgrade_blocking(url: str, revision: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        # Processes starting at once on a new file would both create the tables ("already exists").
        with FileLock(f"{parsed.database}.migrate-lock", timeout=MIGRATE_LOCK_TIMEOUT_S):
            command.upgrade(alembic_config(url), revision)
    else:
        command.upgrade(alembic_config(url), revision)


async def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``. A no-op when the database is already there.

    Safe to call from several processes at once: an advisory lock serialises them on Postgres, a
    lock file next to the database (``<file>.migrate-lock``, the ``filelock`` library) on SQLite.
    Raises ``filelock.Timeout`` when another process holds the SQLite lock for over 120 s.
    """
    await asyncio.to_thread(_upgrade_blocking, url, revision)


async def ensure_schema(url: str, policy: str) -> str:
    """Make sure the schema matches the code before serving; returns the revision in use.

    ``policy`` is ``"auto"`` (apply pending migrations) or ``"refuse"`` (raise
    :class:`PendingMigrationsError`, whose message names ``helpline db upgrade``). Raises
    :class:`UnknownRevisionError` under either policy if the database is ahead of the code.
    """
    value = policy.value if isinstance(policy, Enum) else policy
    if value not in ("auto", "refuse"):
        raise ValueError(f"unknown migration policy {policy!r}: use 'auto' or 'refuse'")
    head = await asyncio.to_thread(head_revision)
    current = await current_revision(url)
    if current == head:
        return head
    if current is not None and current not in {rev.revision for rev in _script().walk_revisions()}:
        raise UnknownRevisionError(current, head)
    if value == "refuse":
        raise PendingMigrationsError(current, head)
    await upgrade(url, "head")
    return head
