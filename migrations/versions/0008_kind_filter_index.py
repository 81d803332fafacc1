"""Performance (issue 7): support's kind filter in its keyset order.

`GET /v1/jobs?kind=…` walked the (created_at, id) index past every job of the other kind:
after a batch of 40,000 new notes, a telephone-encounter page read 40,000 index entries and
their rows (14 ms in PostgreSQL at 1M jobs). (kind, created_at, id) returns the page in
order, as (status, created_at, id) does for the status filter.

Built CONCURRENTLY on PostgreSQL, so submissions keep being written while it builds (a
plain CREATE INDEX blocks inserts into `jobs` for the whole build), with no statement or lock
timeout: the build may take minutes on a large table, and it waits for transactions already
running. A build cut off half-way leaves an INVALID index of the same name; it is dropped
first, so the release can simply be run again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


INDEX = "ix_jobs_kind_created_id"


def upgrade() -> None:
    with _concurrently():
        op.drop_index(INDEX, table_name="jobs", if_exists=True, postgresql_concurrently=True)
        op.create_index(INDEX, "jobs", ["kind", "created_at", "id"], postgresql_concurrently=True)


def downgrade() -> None:
    with _concurrently():
        op.drop_index(INDEX, table_name="jobs", postgresql_concurrently=True)


@contextmanager
def _concurrently() -> Iterator[None]:
    """Outside a transaction (CONCURRENTLY needs it), with no timeouts on PostgreSQL."""
    postgres = op.get_bind().dialect.name == "postgresql"
    with op.get_context().autocommit_block():
        if postgres:
            op.execute("SET statement_timeout = 0")
            op.execute("SET lock_timeout = 0")
        try:
            yield
        finally:
            if postgres:
                op.execute("RESET statement_timeout")
                op.execute("RESET lock_timeout")
