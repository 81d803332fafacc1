"""API clients, the audit log, and PHI at rest: encrypted columns and keyed hashes.

Existing rows are converted in place with the configured PHI keys (PHI_ENCRYPTION_KEYS,
PHI_SEARCH_KEY; development defaults outside production). Downgrading decrypts them back.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from webhook_service.phi import PhiKeys
from webhook_service.settings import Settings

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = sa.DateTime(timezone=True)


def _keys() -> PhiKeys:
    return Settings().phi_keys()


def upgrade() -> None:
    op.create_table(
        "api_clients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("clinic_id", sa.Integer(), nullable=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("token_prefix", sa.String(16), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("revoked_at", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["clinic_id"], ["clinics.id"], name="fk_api_clients_clinic_id_clinics"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_api_clients"),
        sa.UniqueConstraint("name", name="uq_api_clients_name"),
        sa.UniqueConstraint("token_hash", name="uq_api_clients_token_hash"),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("at", UTC_TIME, nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(60), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("detail", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"], ["api_clients.id"], name="fk_audit_events_client_id_api_clients"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_client_id", "audit_events", ["client_id"])
    op.create_index("ix_audit_events_job_id", "audit_events", ["job_id"])

    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("client_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("request_body_enc", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("outcome_enc", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("error_message_enc", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("appointment_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("patient_mrn_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("purged_at", UTC_TIME, nullable=True))
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("raw_body_enc", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("appointment_hash", sa.String(64), nullable=True))

    _encrypt_existing_rows()

    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_note_appointment")
        batch.drop_constraint("uq_jobs_clinic_idempotency_key", type_="unique")
        batch.drop_column("request_body")
        batch.drop_column("outcome")
        batch.drop_column("error_message")
        batch.drop_column("appointment_id")
        batch.create_foreign_key(
            "fk_jobs_client_id_api_clients", "api_clients", ["client_id"], ["id"]
        )
        batch.create_unique_constraint(
            "uq_jobs_client_idempotency_key", ["client_id", "idempotency_key"]
        )
        batch.create_index("ix_jobs_note_appointment", ["clinic_id", "appointment_hash"])
        batch.create_index("ix_jobs_patient_mrn_hash", ["patient_mrn_hash"])
        batch.create_index("ix_jobs_client_created", ["client_id", "created_at"])
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_column("raw_body")
        batch.drop_column("appointment_id")


def _encrypt_existing_rows() -> None:
    bind = op.get_bind()
    jobs = bind.execute(
        sa.text("SELECT id, request_body, outcome, error_message, appointment_id, kind FROM jobs")
    ).all()
    deliveries = bind.execute(
        sa.text("SELECT id, raw_body, appointment_id FROM webhook_deliveries")
    ).all()
    if not jobs and not deliveries:
        return
    keys = _keys()
    for job_id, body, outcome, error_message, appointment_id, _kind in jobs:
        body = json.loads(body) if isinstance(body, str) else body
        outcome = json.loads(outcome) if isinstance(outcome, str) else outcome
        mrn = body.get("patient_mrn") if isinstance(body, dict) else None
        bind.execute(
            sa.text(
                "UPDATE jobs SET request_body_enc = :body, outcome_enc = :outcome, "
                "error_message_enc = :error, appointment_hash = :appointment, "
                "patient_mrn_hash = :mrn WHERE id = :id"
            ),
            {
                "id": job_id,
                "body": _seal(keys, body),
                "outcome": _seal(keys, outcome),
                "error": keys.encrypt(error_message.encode()) if error_message else None,
                "appointment": keys.search_hash(appointment_id) if appointment_id else None,
                "mrn": keys.search_hash(mrn) if isinstance(mrn, str) else None,
            },
        )
    for delivery_id, raw_body, appointment_id in deliveries:
        bind.execute(
            sa.text(
                "UPDATE webhook_deliveries SET raw_body_enc = :raw, "
                "appointment_hash = :appointment WHERE id = :id"
            ),
            {
                "id": delivery_id,
                "raw": keys.encrypt(bytes(raw_body)) if raw_body is not None else None,
                "appointment": keys.search_hash(appointment_id) if appointment_id else None,
            },
        )


def _seal(keys: PhiKeys, value: object) -> bytes | None:
    if value is None:
        return None
    return keys.encrypt(json.dumps(value, separators=(",", ":")).encode())


def downgrade() -> None:
    # Hashes cannot be reversed: appointment ids come back from the decrypted request body.
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("raw_body", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("appointment_id", sa.String(200), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("request_body", JSON, nullable=True))
        batch.add_column(sa.Column("outcome", JSON, nullable=True))
        batch.add_column(sa.Column("error_message", sa.Text(), nullable=True))
        batch.add_column(sa.Column("appointment_id", sa.String(200), nullable=True))
    _decrypt_existing_rows()
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_column("raw_body_enc")
        batch.drop_column("appointment_hash")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_client_created")
        batch.drop_index("ix_jobs_patient_mrn_hash")
        batch.drop_index("ix_jobs_note_appointment")
        batch.drop_constraint("uq_jobs_client_idempotency_key", type_="unique")
        batch.drop_constraint("fk_jobs_client_id_api_clients", type_="foreignkey")
        batch.drop_column("client_id")
        batch.drop_column("request_body_enc")
        batch.drop_column("outcome_enc")
        batch.drop_column("error_message_enc")
        batch.drop_column("appointment_hash")
        batch.drop_column("patient_mrn_hash")
        batch.drop_column("purged_at")
        batch.create_unique_constraint(
            "uq_jobs_clinic_idempotency_key", ["clinic_id", "idempotency_key"]
        )
        batch.create_index("ix_jobs_note_appointment", ["clinic_id", "appointment_id"])
    op.drop_table("audit_events")
    op.drop_table("api_clients")


def _decrypt_existing_rows() -> None:
    bind = op.get_bind()
    jobs = bind.execute(
        sa.text("SELECT id, request_body_enc, outcome_enc, error_message_enc FROM jobs")
    ).all()
    deliveries = bind.execute(sa.text("SELECT id, raw_body_enc FROM webhook_deliveries")).all()
    if not jobs and not deliveries:
        return
    keys = _keys()
    json_type = JSON
    for job_id, body, outcome, error in jobs:
        body_value = json.loads(keys.decrypt(bytes(body))) if body else None
        bind.execute(
            sa.text(
                "UPDATE jobs SET request_body = :body, outcome = :outcome, "
                "error_message = :error, appointment_id = :appointment WHERE id = :id"
            ).bindparams(
                sa.bindparam("body", type_=json_type), sa.bindparam("outcome", type_=json_type)
            ),
            {
                "id": job_id,
                "body": body_value,
                "outcome": json.loads(keys.decrypt(bytes(outcome))) if outcome else None,
                "error": keys.decrypt(bytes(error)).decode() if error else None,
                "appointment": body_value.get("appointment_id")
                if isinstance(body_value, dict)
                else None,
            },
        )
    for delivery_id, raw in deliveries:
        bind.execute(
            sa.text("UPDATE webhook_deliveries SET raw_body = :raw WHERE id = :id"),
            {"id": delivery_id, "raw": keys.decrypt(bytes(raw)) if raw else None},
        )
