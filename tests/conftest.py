"""Shared test fixtures and the test-run policy.

Backend: every test that needs a database gets a fresh, empty one. SQLite by default (a temp file);
Postgres when ``HELPLINE_TEST_DATABASE_URL`` names a server (``./dev test`` runs the suite once per
backend and starts a throw-away Postgres for the second run), in which case each test gets its own
``CREATE DATABASE`` on that server, dropped afterwards.

Policy: with ``HELPLINE_REQUIRE_ALL=1`` (CI) a skipped test fails, so nothing is silently not run.

This harness reads the environment directly; application code never does (see config.settings).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.engine import URL, make_url

pytest_plugins = ["pytester"]  # tests/test_conftest_flags.py tests the policy hooks below

T = TypeVar("T")

TEST_DATABASE_URL_ENV = "HELPLINE_TEST_DATABASE_URL"
REQUIRE_ALL_ENV = "HELPLINE_REQUIRE_ALL"


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, in a thread with its own loop.

    Keeps fixture set-up off (and independent of) the event loop pytest-asyncio gives each test.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


# --- backend selection ---------------------------------------------------------------------------


def server_database_url() -> URL | None:
    """The Postgres server to create test databases on, or ``None`` for SQLite."""
    raw = os.environ.get(TEST_DATABASE_URL_ENV, "").strip()
    if not raw:
        return None
    url = make_url(raw)
    if url.get_backend_name() != "postgresql":
        raise pytest.UsageError(f"{TEST_DATABASE_URL_ENV} must be a postgresql+asyncpg:// URL, got {raw!r}")
    return url.set(drivername="postgresql+asyncpg")


def backend_name() -> str:
    return "postgresql" if server_database_url() is not None else "sqlite"


def pytest_report_header(config: pytest.Config) -> list[str]:
    server = server_database_url()
    if server is None:
        lines = ["helpline database backend: sqlite (a fresh temp file per test)"]
    else:
        where = f"{server.username or 'postgres'}@{server.host}:{server.port or 5432}"
        lines = [
            f"helpline database backend: postgresql at {where} (a fresh database per test; "
            "only the tests that use a database run)"
        ]
    if _require_all():
        lines.append(f"{REQUIRE_ALL_ENV}=1: skipped tests fail")
    return lines


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On Postgres, run only the tests that use a database (``database_url``): the rest do not
    depend on the backend and already ran in the SQLite pass of ``./dev test``."""
    if server_database_url() is None:
        return
    keep = [item for item in items if "database_url" in getattr(item, "fixturenames", ())]
    dropped = [item for item in items if "database_url" not in getattr(item, "fixturenames", ())]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


# --- database fixtures ---------------------------------------------------------------------------


async def _admin(server: URL, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(
        host=server.host or "127.0.0.1",
        port=server.port or 5432,
        user=server.username or "postgres",
        password=server.password,
        database="postgres",
    )
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


# Tests that start the application get a database as its first start leaves it (schema at head,
# shipped knowledge base ingested), copied from one made per session: ingesting costs seconds of
# embedding, and a run starts the server a few hundred times. A test that needs the first start
# itself (migrating and ingesting an empty database) is marked ``fresh_database``.
APP_FIXTURES = frozenset({"server_factory", "server_url", "app_settings", "helpline_client"})


async def _seed(url: str) -> None:
    from bot.embeddings import Embedder
    from bot.knowledge import KnowledgeBase
    from config.settings import Settings
    from state.db import open_database
    from state.migrate import upgrade

    await upgrade(url)
    db = open_database(url)
    try:
        await KnowledgeBase(db, await asyncio.to_thread(Embedder.load)).ingest(Settings().kb_dir)
    finally:
        await db.dispose()


@pytest.fixture(scope="session")
def seeded_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The seeded database every application test starts from: a SQLite file's path, or the name
    of a Postgres template database."""
    server = server_database_url()
    if server is None:
        path = tmp_path_factory.mktemp("seed") / "helpline.db"
        run_coroutine(_seed(f"sqlite+aiosqlite:///{path}"))
        yield str(path)
        return
    name = f"seed_{uuid.uuid4().hex[:16]}"
    run_coroutine(_admin(server, f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'"))
    try:
        run_coroutine(_seed(server.set(database=name).render_as_string(hide_password=False)))
        yield name
    finally:
        run_coroutine(_admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def database_url(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """SQLAlchemy async URL of a fresh database on the selected backend: empty (no tables), or for
    a test that starts the application, a copy of :func:`seeded_template`."""
    seeded = APP_FIXTURES.intersection(request.fixturenames) and not request.node.get_closest_marker(
        "fresh_database"
    )
    template = request.getfixturevalue("seeded_template") if seeded else None
    server = server_database_url()
    if server is None:
        path = tmp_path / "helpline.db"
        if template is not None:
            shutil.copyfile(template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    name = f"test_{uuid.uuid4().hex[:16]}"
    run_coroutine(_admin(server, f"CREATE DATABASE {name} TEMPLATE {template or 'template0'} ENCODING 'UTF8'"))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        # FORCE: a test that leaked a connection must not keep its database alive.
        run_coroutine(_admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def migrated_database_url(database_url: str) -> str:
    """Like ``database_url``, with every migration applied (schema at head)."""
    from state.migrate import upgrade

    run_coroutine(upgrade(database_url))
    return database_url


# --- test-run policy: HELPLINE_REQUIRE_ALL -------------------------------------------------------


def _require_all() -> bool:
    return os.environ.get(REQUIRE_ALL_ENV, "").strip() not in ("", "0", "false", "no")


def _skip_reason(longrepr: Any) -> str:
    # A skip's longrepr is (path, lineno, "Skipped: reason").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = _skip_reason(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped, but {REQUIRE_ALL_ENV}=1 forbids skips: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    # xfail outcomes also arrive as skips; they are expected results, not tests that did not run.
    if _require_all() and report.skipped and not hasattr(report, "wasxfail"):
        _fail_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    report = yield
    # A module-level skip (pytest.skip(allow_module_level=True), importorskip) skips a whole file.
    if _require_all() and report.skipped:
        _fail_skip(report)
    return report


# --- application fixtures (server, clients) ---

from app_fixtures import (  # noqa: E402,F401  (fixtures are found by name)
    app_settings,
    helpline_client,
    http,
    intent_model_dir,
    redis_url,
    server_factory,
    server_url,
)
