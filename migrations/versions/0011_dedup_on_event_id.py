"""Deduplicate webhook deliveries on the signed event id (issue 17).

Deliveries are now stored under `event-id:<id>` when the signed body has an id; rows stored
before were keyed on the unsigned `webhook-id` header (`webhook-id:…`) or, when a reconcile
lookup found the event, `reconcile:…`. Without this rewrite, an event stored before the
release and re-sent after it with a new `webhook-id` would not be recognised as a repeat.

Per event id, one row takes the key: the one already keyed `event-id:` if there is one,
else the earliest. Other rows of the same event (a webhook and a reconcile copy, or a body
re-sent with a new header) keep their keys: the unique key cannot hold two, and they stay
as support's record. One UPDATE ranked by a window function (PostgreSQL and SQLite alike),
one sort of the table, not a correlated lookup per row: no index on `event_id` is needed.

Safe while the previous release still runs: it already stores `event-id:` keys (for a
delivery without a usable `webhook-id`), and a key is only ever read to find a repeat.
Downgrade leaves the keys as they are, for the same reason.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
# 0010 (the deadline's) is on another branch as this is written: whoever merges both makes
# this revise 0010, so the chain stays one line.
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        UPDATE webhook_deliveries SET dedup_key = 'event-id:' || event_id
        WHERE id IN (
            SELECT id FROM (
                SELECT id, dedup_key, event_id, row_number() OVER (
                    PARTITION BY event_id
                    ORDER BY CASE WHEN dedup_key = 'event-id:' || event_id THEN 0 ELSE 1 END, id
                ) AS n
                FROM webhook_deliveries
                WHERE event_id IS NOT NULL
            ) AS ranked
            WHERE n = 1 AND dedup_key <> 'event-id:' || event_id
        )
        """
    )


def downgrade() -> None:
    pass  # the previous release reads `event-id:` keys as it stores them
