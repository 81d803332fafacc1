"""Store front ends' Idempotency-Keys as keyed hashes (HMAC under PHI_SEARCH_KEY).

A key is free text a front end chose and may quote a patient. Rows are rewritten in
batches along the primary key; a key already hashed (`hmac:…`) is left alone, so running
it again is harmless. The new release looks a key up by its hash and, for a row the
previous release writes during the deploy, by the plain key too; the previous release
finds only plain keys, so a replay it receives in those seconds for a job the new release
stored would not match (the same window as any deploy that changes a stored form).
Downgrade leaves the hashes: a hash cannot be turned back into its key.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from webhook_service.phi import IDEMPOTENCY_KEY_HASH_PREFIX, idempotency_key_hash
from webhook_service.settings import Settings

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 5_000
jobs = sa.table("jobs", sa.column("id"), sa.column("idempotency_key"))


def upgrade() -> None:
    bind = op.get_bind()
    keys = None
    query = (
        sa.select(jobs.c.id, jobs.c.idempotency_key)
        .where(jobs.c.idempotency_key.is_not(None))
        .order_by(jobs.c.id)
        .limit(BATCH)
    )
    rows = bind.execute(query).all()
    while rows:
        plain = [(i, k) for i, k in rows if not k.startswith(IDEMPOTENCY_KEY_HASH_PREFIX)]
        if plain:
            keys = keys or Settings().phi_keys()
            bind.execute(
                jobs.update()
                .where(jobs.c.id == sa.bindparam("job_id"))
                .values(idempotency_key=sa.bindparam("hashed")),
                [{"job_id": i, "hashed": idempotency_key_hash(k, keys)} for i, k in plain],
            )
        rows = bind.execute(query.where(jobs.c.id > rows[-1][0])).all()


def downgrade() -> None:
    pass  # hashes stay: see above
