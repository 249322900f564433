"""SLA timers.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

``sla_timers``: one row per service-level target a handed-off ticket is measured against
(``first_response``, ``next_response``, ``resolution``; see state/sla_timers.py): when its clock
started, its business-time budget, the current due time (NULL while the clock is paused), and its
``status`` (``running``, ``met``, ``breached``, ``cancelled``). A breach is one conditional UPDATE
from ``running``, so it happens once however many processes look. ``tickets.sla_due_at``: the
earliest due time of the ticket's running timers (the queue's order); ``tickets.sla_breached_at``:
the first breach; ``tickets.first_response_at``: the first agent reply after the handoff.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sla_timers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("ticket_id", sa.Integer(), sa.ForeignKey("tickets.id"), nullable=False, index=True),
        sa.Column("target", sa.String(32), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("budget_s", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_sla_timers_status_due", "sla_timers", ["status", "due_at"])
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("sla_due_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("sla_breached_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("first_response_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_tickets_sla_due_at", ["sla_due_at"])


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_index("ix_tickets_sla_due_at")
        batch.drop_column("first_response_at")
        batch.drop_column("sla_breached_at")
        batch.drop_column("sla_due_at")
    op.drop_index("ix_sla_timers_status_due", table_name="sla_timers")
    op.drop_table("sla_timers")
