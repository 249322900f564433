"""Agents, their login sessions, and who owns a handed-off ticket.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

``agents``: the people who work the inbox (email, argon2id password hash, role ``agent`` or
``admin``, disabled time). ``agent_sessions``: one row per login; the browser holds a random token,
the table only its SHA-256, with the CSRF token, the last request time (idle expiry) and the absolute
expiry. ``tickets.assignee_id``: the agent who owns the ticket (set by an atomic claim);
``tickets.priority``: ``low``, ``normal``, ``high`` or ``urgent``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("display_name", sa.String(200), nullable=True),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "agent_sessions",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("agent_id", sa.Integer(), sa.ForeignKey("agents.id"), nullable=False, index=True),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("assignee_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("priority", sa.String(16), nullable=False, server_default="normal"))
        batch.create_foreign_key("fk_tickets_assignee_id_agents", "agents", ["assignee_id"], ["id"])
        batch.create_index("ix_tickets_state_priority", ["state", "priority"])


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_index("ix_tickets_state_priority")
        batch.drop_constraint("fk_tickets_assignee_id_agents", type_="foreignkey")
        batch.drop_column("priority")
        batch.drop_column("assignee_id")
    op.drop_table("agent_sessions")
    op.drop_table("agents")
