"""The language of a handed-off ticket, for the inbox's language filter.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

``tickets.language``: ISO 639-1 code of the language the customer writes in, as the handoff brief
found it (the unsupported-language trigger's detection, else the bot's own language); NULL until the
ticket is first handed off.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("language", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_column("language")
