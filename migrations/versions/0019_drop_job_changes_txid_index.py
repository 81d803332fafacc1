"""Drop `ix_job_changes_txid_seq`: no reader of every client's changes at once remains (the
callbacks' fan-out reads each endpoint's client through `ix_job_changes_client_txid_seq`),
and the index cost every change of every job a write.

Safe to apply first: the previous release's only reader of it was unused. Dropping an index
takes a brief exclusive lock and no scan.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_job_changes_txid_seq", table_name="job_changes")


def downgrade() -> None:
    op.create_index("ix_job_changes_txid_seq", "job_changes", ["txid", "seq"])
