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
        lines = [f"helpline database backend: postgresql at {where} (a fresh database per test)"]
    if _require_all():
        lines.append(f"{REQUIRE_ALL_ENV}=1: skipped tests fail")
    return lines


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


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """SQLAlchemy async URL of a fresh, empty database (no tables) on the selected backend."""
    server = server_database_url()
    if server is None:
        yield f"sqlite+aiosqlite:///{tmp_path / 'helpline.db'}"
        return
    name = f"test_{uuid.uuid4().hex[:16]}"
    run_coroutine(_admin(server, f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'"))
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
