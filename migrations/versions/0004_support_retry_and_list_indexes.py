"""Support API: link a retried job to the job it resubmits, and index the support list.

A nullable column and new indexes: safe while the previous release still runs. The indexes
are built inside the migration's transaction (as 0003's are), which holds writes to `jobs`
for the few seconds a build takes on a million rows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("retry_of", sa.Uuid(), nullable=True))
        batch.create_unique_constraint("uq_jobs_retry_of", ["retry_of"])
        batch.create_foreign_key("fk_jobs_retry_of_jobs", "jobs", ["retry_of"], ["id"])
        batch.create_index("ix_jobs_created_id", ["created_at", "id"])
        batch.create_index("ix_jobs_appointment_hash", ["appointment_hash"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_appointment_hash")
        batch.drop_index("ix_jobs_created_id")
        batch.drop_constraint("fk_jobs_retry_of_jobs", type_="foreignkey")
        batch.drop_constraint("uq_jobs_retry_of", type_="unique")
        batch.drop_column("retry_of")
