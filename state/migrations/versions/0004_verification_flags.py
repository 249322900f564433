"""Verified order owner per ticket, and run-time flags (the kill switch) in the database.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

``tickets.verified_owner``: the order-store user id the customer proved they are in this
conversation (order number plus the email address or postcode on the order). Order details go only
to a ticket whose verified owner owns the order; nothing carries to another ticket or session.

``runtime_flags``: small run-time switches shared by every process, read from the system of record
(``agent_mode``, the kill switch, and ``session_secret``, the key that signs web-chat session ids
when none is configured). Redis may be restarted without persistence; these must not be lost.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("verified_owner", sa.String(128), nullable=True))
    op.create_table(
        "runtime_flags",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("runtime_flags")
    with op.batch_alter_table("tickets") as batch:
        batch.drop_column("verified_owner")
