"""Jobs, their timeline, webhook deliveries and clinics.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "clinics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("access_token", sa.String(500), nullable=False),
        sa.Column("access_token_reference_id", sa.String(200), nullable=True),
        sa.Column("needs_relink", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_clinics"),
        sa.UniqueConstraint(
            "access_token_reference_id", name="uq_clinics_access_token_reference_id"
        ),
        sa.UniqueConstraint("name", name="uq_clinics_name"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("clinic_id", sa.Integer(), nullable=False),
        sa.Column("request_body", JSON, nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("appointment_id", sa.String(200), nullable=True),
        sa.Column("submission_state", sa.String(16), nullable=False),
        sa.Column("submit_attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTC_TIME, nullable=True),
        sa.Column("claimed_until", UTC_TIME, nullable=True),
        sa.Column("inflight_key", sa.String(250), nullable=True),
        sa.Column("cobalt_job_id", sa.String(200), nullable=True),
        sa.Column("cobalt_telephone_encounter_id", sa.String(200), nullable=True),
        sa.Column("outcome", JSON, nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.Column("finished_at", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(["clinic_id"], ["clinics.id"], name="fk_jobs_clinic_id_clinics"),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint("clinic_id", "idempotency_key", name="uq_jobs_clinic_idempotency_key"),
        sa.UniqueConstraint("inflight_key", name="uq_jobs_inflight_key"),
    )
    op.create_index("ix_jobs_cobalt_job_id", "jobs", ["cobalt_job_id"])
    op.create_index(
        "ix_jobs_cobalt_telephone_encounter_id", "jobs", ["cobalt_telephone_encounter_id"]
    )
    op.create_index("ix_jobs_due", "jobs", ["submission_state", "next_attempt_at"])
    op.create_index("ix_jobs_note_appointment", "jobs", ["clinic_id", "appointment_id"])
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at"])

    op.create_table(
        "job_events",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("at", UTC_TIME, nullable=False),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("detail", JSON, nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_events_job_id_jobs"),
        sa.PrimaryKeyConstraint("id", name="pk_job_events"),
    )
    op.create_index("ix_job_events_job_id", "job_events", ["job_id"])

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("dedup_key", sa.String(300), nullable=False),
        sa.Column("webhook_id", sa.String(200), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("event_timestamp", UTC_TIME, nullable=True),
        sa.Column("event_id", sa.String(200), nullable=True),
        sa.Column("event_type", sa.String(200), nullable=True),
        sa.Column("cobalt_job_id", sa.String(200), nullable=True),
        sa.Column("telephone_encounter_id", sa.String(200), nullable=True),
        sa.Column("appointment_id", sa.String(200), nullable=True),
        sa.Column("access_token_reference_id", sa.String(200), nullable=True),
        sa.Column("headers", JSON, nullable=False),
        sa.Column("raw_body", sa.LargeBinary(), nullable=True),
        sa.Column("signature_match", sa.String(40), nullable=False),
        sa.Column("received_at", UTC_TIME, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("state_detail", sa.Text(), nullable=True),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_webhook_deliveries_job_id_jobs"),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.UniqueConstraint("dedup_key", name="uq_webhook_deliveries_dedup_key"),
    )
    op.create_index("ix_webhook_deliveries_cobalt_job_id", "webhook_deliveries", ["cobalt_job_id"])
    op.create_index("ix_webhook_deliveries_job_id", "webhook_deliveries", ["job_id"])
    op.create_index("ix_webhook_deliveries_state", "webhook_deliveries", ["state", "received_at"])
    op.create_index(
        "ix_webhook_deliveries_telephone_encounter_id",
        "webhook_deliveries",
        ["telephone_encounter_id"],
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("job_events")
    op.drop_table("jobs")
    op.drop_table("clinics")
