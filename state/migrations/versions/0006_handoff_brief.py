"""The structured handoff brief of an escalated ticket.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

``tickets.brief``: the handoff brief as JSON (see :mod:`bot.brief`; its ``version`` field names the
schema), rebuilt from the ticket's messages and events at every escalation and while the ticket is
open. ``tickets.handoff_summary`` keeps the brief's plain-text form for notifications.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("brief", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_column("brief")
