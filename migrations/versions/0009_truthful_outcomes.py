"""Truthful outcomes (issue 17): the columns the job resource and webhook checks now need.

- `jobs.error_field`: which request field Cobalt's synchronous error names (`error.field`).
- `jobs.attention_code`, `jobs.attention_since`: a processing job past its deadline whose
  request may be at Cobalt (`attention` in the job resource), with a partial index for
  support's inbox and the worker's late lookups (few rows: the index stays tiny).
- `jobs.retried_as`: the job support resubmitted this one as (`retried_as` in the job
  resource, so the old job's ETag changes when it is set); backfilled from `retry_of`.
- `clinics.linked_at`: when the clinic's current access token was linked, so a replayed
  `login_required` older than the link does not flag the clinic again; backfilled from
  `updated_at`, the last time the token could have changed.
- `webhook_deliveries.event_created_at`: the signed body's `created`, the one trustworthy
  time of an event (the `webhook-timestamp` header is not signed).

Nullable columns and one small index: safe while the previous release still runs.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ATTENTION = "attention_code IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("error_field", sa.String(64), nullable=True))
        batch.add_column(sa.Column("attention_code", sa.String(32), nullable=True))
        batch.add_column(sa.Column("attention_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("retried_as", sa.Uuid(), nullable=True))
        batch.create_foreign_key("fk_jobs_retried_as_jobs", "jobs", ["retried_as"], ["id"])
    op.create_index(
        "ix_jobs_attention",
        "jobs",
        ["attention_since"],
        postgresql_where=sa.text(ATTENTION),
        sqlite_where=sa.text(ATTENTION),
    )
    op.execute(
        "UPDATE jobs SET retried_as = (SELECT r.id FROM jobs r WHERE r.retry_of = jobs.id) "
        "WHERE EXISTS (SELECT 1 FROM jobs r WHERE r.retry_of = jobs.id)"
    )
    with op.batch_alter_table("clinics") as batch:
        batch.add_column(sa.Column("linked_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE clinics SET linked_at = updated_at")
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("event_created_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_column("event_created_at")
    with op.batch_alter_table("clinics") as batch:
        batch.drop_column("linked_at")
    op.drop_index("ix_jobs_attention", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_retried_as_jobs", type_="foreignkey")
        batch.drop_column("retried_as")
        batch.drop_column("attention_since")
        batch.drop_column("attention_code")
        batch.drop_column("error_field")
