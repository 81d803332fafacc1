"""Callbacks to front ends (issue 20): endpoints (each with its place in the record of job
changes, migration 0017), deliveries, attempts.

New tables, nothing reads them while the previous release runs: safe to apply first.
Secrets, bodies and answer excerpts are Fernet tokens (bytes), like every encrypted column.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _at(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "callback_endpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("secret_enc", sa.LargeBinary(), nullable=False),
        sa.Column("previous_secret_enc", sa.LargeBinary(), nullable=True),
        _at("previous_until"),
        _at("failing_since"),
        _at("disabled_at"),
        sa.Column("fanned_out_txid", sa.BigInteger(), nullable=False),
        sa.Column("fanned_out_seq", sa.BigInteger(), nullable=False),
        _at("created_at", nullable=False),
        _at("updated_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["api_clients.id"],
            name=op.f("fk_callback_endpoints_client_id_api_clients"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_callback_endpoints")),
        sa.UniqueConstraint("client_id", name=op.f("uq_callback_endpoints_client_id")),
    )
    op.create_table(
        "callback_deliveries",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("endpoint_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        sa.Column("webhook_id", sa.String(length=64), nullable=False),
        sa.Column("body_enc", sa.LargeBinary(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _at("next_attempt_at"),
        _at("claimed_until"),
        sa.Column("resend_by", sa.String(length=200), nullable=True),
        _at("created_at", nullable=False),
        _at("finished_at"),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["callback_endpoints.id"],
            name=op.f("fk_callback_deliveries_endpoint_id_callback_endpoints"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_callback_deliveries_job_id_jobs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_callback_deliveries")),
        sa.UniqueConstraint("endpoint_id", "change_seq", name="uq_callback_deliveries_change"),
        sa.UniqueConstraint("webhook_id", name=op.f("uq_callback_deliveries_webhook_id")),
    )
    op.create_index(
        "ix_callback_deliveries_due", "callback_deliveries", ["state", "next_attempt_at"]
    )
    op.create_index(
        "ix_callback_deliveries_job",
        "callback_deliveries",
        ["endpoint_id", "job_id", "change_seq"],
    )
    op.create_index(op.f("ix_callback_deliveries_job_id"), "callback_deliveries", ["job_id"])
    op.create_table(
        "callback_attempts",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("delivery_id", BIG_ID, nullable=False),
        _at("at", nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.Column("error", sa.String(length=300), nullable=True),
        sa.Column("response_excerpt_enc", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["callback_deliveries.id"],
            name=op.f("fk_callback_attempts_delivery_id_callback_deliveries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_callback_attempts")),
    )
    op.create_index(op.f("ix_callback_attempts_delivery_id"), "callback_attempts", ["delivery_id"])


def downgrade() -> None:
    op.drop_table("callback_attempts")
    op.drop_table("callback_deliveries")
    op.drop_table("callback_endpoints")
