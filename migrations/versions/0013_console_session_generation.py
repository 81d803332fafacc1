"""A per-client console session generation: signing out ends every session server-side.

A column with a server default: safe while the previous release still runs (it never reads
it, and its sign-ins get 0, which the new release accepts until the next sign-out).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
# 0012 may be on another branch as this is written: whoever merges both makes this revise
# the last of them, so the chain stays one line.
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_clients") as batch:
        batch.add_column(
            sa.Column("session_generation", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("api_clients") as batch:
        batch.drop_column("session_generation")
