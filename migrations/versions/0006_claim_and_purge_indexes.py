"""Performance (issue 7): partial indexes for the worker's claim and the PHI purge.

`ix_jobs_due_next` returns due submissions already in claim order, so a claim reads one
index entry however large the backlog (it sorted every due row before). `ix_jobs_purge_due`
lets the purge sweep find settled, unpurged jobs without scanning `jobs`. New indexes only:
safe while the previous release still runs; built in the migration's transaction, as 0004's.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Copied, not imported: a migration must not change when models.py does.
DUE_PREDICATE = "status = 'processing' AND submission_state IN ('pending', 'waiting', 'retrying')"
PURGE_PREDICATE = "purged_at IS NULL AND status IN ('completed', 'partial', 'failed')"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_due_next",
        "jobs",
        ["next_attempt_at"],
        postgresql_where=sa.text(DUE_PREDICATE),
        sqlite_where=sa.text(DUE_PREDICATE),
    )
    op.create_index(
        "ix_jobs_purge_due",
        "jobs",
        ["finished_at"],
        postgresql_where=sa.text(PURGE_PREDICATE),
        sqlite_where=sa.text(PURGE_PREDICATE),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_purge_due", table_name="jobs")
    op.drop_index("ix_jobs_due_next", table_name="jobs")
