"""Ticket fence: the epoch of the worker that may write a ticket's turns.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

A worker that takes a ticket's lock bumps ``tickets.fence`` and keeps the new value; every turn it
commits is conditional on the fence still holding that value. A worker whose lock expired (a stall,
a partition) while another took over finds the fence moved and writes nothing. The value comes from
the database, not the lock service, so it stays monotonic even if the lock service loses its state.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("fence", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_column("fence")
