"""Jobs failed as `no_outcome` say what is known under the deadline rule (issue 17).

Before, a job with no news at its deadline became `failed`/`no_outcome` whatever became of
its request. Now terminal is terminal and `failed` means Cobalt said so, or the request never
reached Cobalt. Existing rows:

- whose request may be at Cobalt (submission `accepted`, `unknown` or `sending`): back to
  `processing` with `attention_code = 'no_outcome'` since their old `finished_at`; the
  outcome and error are cleared (the worker looks them up again, support sees them in the
  inbox). A `sending` one becomes `unknown`: no worker holds it. A note takes its
  appointment slot (`inflight_key`) back only if no other note holds it, and of several
  such notes for one appointment only the earliest; the others stay without a slot (their
  outcome is matched by Cobalt job id, found by a lookup, or recorded by support).
- whose request never reached Cobalt (settling had turned `pending`/`waiting`/`retrying`
  into `rejected`): stay `failed`, as `cobalt_unavailable`, or `appointment_busy` for a note
  that never left the queue behind another note; the old message, which said the note might
  be in the chart, is cleared (it is encrypted: SQL cannot rewrite it).

Each row changed gets a timeline line (`deadline_rule_applied`). Plain SQL on both
databases; data only, nothing to undo on downgrade (the old code reads these rows as they
are).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEGACY = "status = 'failed' AND error_code = 'no_outcome'"
MAY_BE_AT_COBALT = f"{LEGACY} AND submission_state IN ('accepted', 'unknown', 'sending')"
NEVER_SENT = f"{LEGACY} AND submission_state NOT IN ('accepted', 'unknown', 'sending')"
# A note that waited its turn and was never sent: a `submission_waiting` line, no attempt.
WAITED = (
    "kind = 'note' AND submit_attempts = 0 AND EXISTS (SELECT 1 FROM job_events e "
    "WHERE e.job_id = jobs.id AND e.type = 'submission_waiting')"
)
# `jobs.services.note_slot`, in SQL.
SLOT = "CAST(clinic_id AS VARCHAR(20)) || ':' || appointment_hash"


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    now = datetime.now(UTC)
    stamp = sa.bindparam("now", now if postgres else now.replace(tzinfo=None), sa.DateTime(True))

    def timeline(where: str, became: str) -> None:
        detail = f'{{"migration": "0010", "became": "{became}"}}'
        value = f"CAST('{detail}' AS JSONB)" if postgres else f"'{detail}'"
        bind.execute(
            sa.text(
                "INSERT INTO job_events (job_id, at, type, detail) "  # noqa: S608 (constants)
                f"SELECT id, :now, 'deadline_rule_applied', {value} FROM jobs WHERE {where}"
            ).bindparams(stamp)
        )

    timeline(MAY_BE_AT_COBALT, "processing, attention no_outcome")
    timeline(f"{NEVER_SENT} AND {WAITED}", "failed, appointment_busy")
    timeline(f"{NEVER_SENT} AND NOT ({WAITED})", "failed, cobalt_unavailable")
    bind.execute(
        sa.text(
            f"UPDATE jobs SET error_code = CASE WHEN {WAITED} THEN 'appointment_busy' "  # noqa: S608
            "ELSE 'cobalt_unavailable' END, error_message_enc = NULL, outcome_enc = NULL, "
            f"updated_at = :now WHERE {NEVER_SENT}"
        ).bindparams(stamp)
    )
    bind.execute(
        sa.text(
            "UPDATE jobs SET status = 'processing', attention_code = 'no_outcome', "  # noqa: S608
            "attention_since = finished_at, finished_at = NULL, outcome_enc = NULL, "
            "error_code = NULL, error_message_enc = NULL, error_field = NULL, "
            "claimed_until = NULL, updated_at = :now, submission_state = CASE "
            "WHEN submission_state = 'sending' THEN 'unknown' ELSE submission_state END "
            f"WHERE {MAY_BE_AT_COBALT}"
        ).bindparams(stamp)
    )
    # The slot back to the earliest such note of each appointment, if no note holds it.
    op.execute(
        f"UPDATE jobs SET inflight_key = {SLOT} "  # noqa: S608 (constants)
        "WHERE attention_code = 'no_outcome' AND kind = 'note' AND inflight_key IS NULL "
        "AND appointment_hash IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM jobs holder WHERE holder.clinic_id = jobs.clinic_id "
        "AND holder.appointment_hash = jobs.appointment_hash "
        "AND holder.inflight_key IS NOT NULL) "
        "AND NOT EXISTS (SELECT 1 FROM jobs earlier WHERE earlier.clinic_id = jobs.clinic_id "
        "AND earlier.appointment_hash = jobs.appointment_hash "
        "AND earlier.attention_code = 'no_outcome' AND earlier.kind = 'note' "
        "AND earlier.inflight_key IS NULL AND (earlier.created_at < jobs.created_at "
        "OR (earlier.created_at = jobs.created_at AND earlier.id < jobs.id)))"
    )


def downgrade() -> None:
    """Nothing to undo: the rows hold true statuses the previous release also reads."""
