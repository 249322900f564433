"""Outbox and the job queue's tables.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

``outbox``: one row per outbound message to send through its channel, written in the same
transaction as the message (see ``state.models.OutboxEntry``).

On PostgreSQL this also installs the schema of the job queue, procrastinate (pinned in
pyproject.toml): its tables (``procrastinate_*``), types, functions and triggers, exactly as the pinned
release ships them (``procrastinate/sql/schema.sql``). Upgrading procrastinate means adding its
migration files as a new revision here. SQLite deployments (one process) keep jobs in memory and
need no tables.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources

import sqlalchemy as sa
from alembic import context, op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _job_schema() -> str:
    return (resources.files("procrastinate.sql") / "schema.sql").read_text(encoding="utf-8")


def _run_script(sql: str) -> None:
    """Run a multi-statement script: asyncpg prepares single statements, so use its raw execute."""
    if context.is_offline_mode():
        op.execute(sql)
        return
    raw = op.get_bind().connection.dbapi_connection
    raw.run_async(lambda conn: conn.execute(sql))  # type: ignore[union-attr]


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("message_id", sa.Integer(), sa.ForeignKey("messages.id"), nullable=False, unique=True),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("provider_message_id", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_outbox_status", "outbox", ["status", "created_at"])
    if op.get_bind().dialect.name == "postgresql":
        _run_script(_job_schema())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        schema = _job_schema()
        drops = [f"DROP TABLE IF EXISTS {t} CASCADE;" for t in re.findall(r"^CREATE TABLE (\w+)", schema, re.M)]
        drops += [
            f"DROP FUNCTION IF EXISTS {f} CASCADE;"
            for f in dict.fromkeys(re.findall(r"^CREATE FUNCTION (\w+)\(", schema, re.M))
        ]
        drops += [f"DROP TYPE IF EXISTS {t} CASCADE;" for t in re.findall(r"^CREATE TYPE (\w+)", schema, re.M)]
        _run_script("\n".join(drops))
    op.drop_index("ix_outbox_status", table_name="outbox")
    op.drop_table("outbox")
