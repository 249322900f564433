"""API tokens for the inbox's JSON API.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

``agent_api_tokens``: one row per token made with ``helpline agents token EMAIL``. The caller holds a
random secret; the table keeps only its SHA-256 (a copy of the database authenticates nobody), the
agent it acts as, a label, when it was last used and when it was revoked.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agent_api_tokens",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("agent_id", sa.Integer(), sa.ForeignKey("agents.id"), nullable=False, index=True),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("agent_api_tokens")
