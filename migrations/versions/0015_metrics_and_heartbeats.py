"""Metrics every process adds to, and the worker processes' heartbeats (issue 19, operations).

Two new tables that nothing of the previous release reads: safe to apply first.
`metric_counters` holds each counter's total (a sample of a counter or a histogram, with its
labels): every process adds what it counted since its last flush. `worker_heartbeats` holds
one row per worker process, refreshed every few seconds while it runs.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "metric_counters",
        sa.Column("sample", sa.String(100), nullable=False),
        sa.Column("labels", sa.String(300), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("sample", "labels", name=op.f("pk_metric_counters")),
    )
    op.create_table(
        "worker_heartbeats",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker_heartbeats")),
    )


def downgrade() -> None:
    op.drop_table("worker_heartbeats")
    op.drop_table("metric_counters")
