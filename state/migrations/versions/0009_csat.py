"""Customer satisfaction (CSAT) ratings.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

``csat_ratings``: at most one per ticket (unique ``ticket_id``): the customer's 1-5 rating and
optional comment, with who resolved the ticket (``bot`` or ``agent`` and the agent's id), the
channel and intent, for the reports. ``tickets.csat_requested_at``: when the customer was asked
(asked at most once per ticket).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "csat_ratings",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("ticket_id", sa.Integer(), sa.ForeignKey("tickets.id"), nullable=False, unique=True),
        sa.Column("customer_id", sa.Integer(), sa.ForeignKey("customers.id"), nullable=False, index=True),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("resolved_by", sa.String(16), nullable=False),
        sa.Column("agent_id", sa.Integer(), sa.ForeignKey("agents.id"), nullable=True),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("intent", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("rating BETWEEN 1 AND 5", name="ck_csat_rating_range"),
    )
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("csat_requested_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_column("csat_requested_at")
    op.drop_table("csat_ratings")
