"""Database engine and sessions for SQLite (embedded) and Postgres (production).

Owns connection set-up only: no queries here. Tables live in :mod:`state.models`, schema changes in
:mod:`state.migrations`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # a refused connect, raised as it is
    sqlalchemy_exc.OperationalError,  # PEP 249 wrappers of a dropped or refused connection
    sqlalchemy_exc.InterfaceError,
    sqlalchemy_exc.DisconnectionError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.CannotConnectNowError,  # 57P03: the server is starting or shutting down
)
"""Exceptions that mean the database cannot be reached right now, as opposed to a bad query:
callers refuse work with a clear "try again" instead of failing it. (``ConnectionDoesNotExistError``
is a ``PostgresConnectionError``.)"""


@dataclass
class Database:
    """An async engine plus its session factory.

    ``backend`` is ``"sqlite"`` or ``"postgresql"``; ``url`` is the SQLAlchemy URL it was made from.
    """

    url: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    _sqlite_writer: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction, committed on exit and rolled back on error.

        On SQLite, writers in this process take turns: SQLite allows one writer at a time and a
        deferred transaction that upgrades to a write can fail at once with "database is locked"
        instead of waiting; queuing in-process avoids that. Postgres writers run concurrently.
        """
        if self.backend == "sqlite":
            async with self._sqlite_writer:
                async with self.sessions.begin() as session:
                    yield session
        else:
            async with self.sessions.begin() as session:
                yield session

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    async def server_version(self) -> str:
        """Version string of the database server, e.g. ``"3.40.1"`` or ``"18.6"``."""
        async with self.engine.connect() as conn:
            if self.backend == "sqlite":
                return str((await conn.execute(text("select sqlite_version()"))).scalar_one())
            return str((await conn.execute(text("show server_version"))).scalar_one())

    async def dispose(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the single writer; foreign keys are off by default in SQLite;
    # busy_timeout makes a second process wait for the write lock instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def open_database(url: str, *, pool_size: int = 10) -> Database:
    """Create the engine for ``url`` (``sqlite+aiosqlite:///PATH`` or ``postgresql+asyncpg://...``).

    For SQLite the parent folder of the file is created. Raises ``ValueError`` for any other driver.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.drivername == "sqlite+aiosqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    elif parsed.drivername == "postgresql+asyncpg":
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    else:
        raise ValueError(
            f"unsupported database URL driver {parsed.drivername!r}: use sqlite+aiosqlite:///PATH "
            "or postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB"
        )
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return Database(url=url, engine=engine, sessions=async_sessionmaker(engine, expire_on_commit=False))
