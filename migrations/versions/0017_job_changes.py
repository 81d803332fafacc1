"""One record of job changes (`job_changes`), written by a trigger on `jobs`.

Every push (long poll wake-ups, server-sent events, callbacks) reads from this table, so
none can disagree with another. The triggers fire in the writing transaction on an INSERT
into `jobs` and on any UPDATE that changes what a front end acts on (the ETag's columns:
status, finished_at, error_code, attention_code, retried_as, purged_at), and copy the job
resource's columns as they now are (outcome and error message still encrypted). On
PostgreSQL the trigger also sends `NOTIFY job_changes, '<job id> <client id> <seq>'`,
delivered when (and only if) the transaction commits. The columns and the condition are
spelled out here, as a migration must be; `webhook_service/services/changes.py` holds the
same lists for the code, and a test checks the two agree.

Safe while the previous release runs: a new table and triggers; old code writes jobs as
before and the triggers record its changes too. Downgrade drops the triggers and the table.

Revision ID: 0017
Revises: 0014
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# jobs column → job_changes column (the same name but for the id).
SNAPSHOT = {
    "id": "job_id",
    "client_id": "client_id",
    "kind": "kind",
    "status": "status",
    "created_at": "created_at",
    "updated_at": "updated_at",
    "finished_at": "finished_at",
    "cobalt_job_id": "cobalt_job_id",
    "cobalt_telephone_encounter_id": "cobalt_telephone_encounter_id",
    "error_code": "error_code",
    "submission_state": "submission_state",
    "submit_attempts": "submit_attempts",
    "next_attempt_at": "next_attempt_at",
    "purged_at": "purged_at",
    "error_field": "error_field",
    "attention_code": "attention_code",
    "attention_since": "attention_since",
    "retried_as": "retried_as",
    "outcome_enc": "outcome_enc",
    "error_message_enc": "error_message_enc",
}
# An UPDATE of jobs is a change when one of these differs (the ETag's columns).
CHANGE_COLUMNS = (
    "status",
    "finished_at",
    "error_code",
    "attention_code",
    "retried_as",
    "purged_at",
)

# The statements below are built from the constant lists above, never from input.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "job_changes",
        sa.Column("seq", BigId, autoincrement=True, nullable=False),
        # PostgreSQL: the writing transaction's id, so a reader of every client's changes can
        # leave out those of transactions still open (see services/changes.py). SQLite: 0.
        sa.Column("txid", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cobalt_job_id", sa.String(length=200), nullable=True),
        sa.Column("cobalt_telephone_encounter_id", sa.String(length=200), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("submission_state", sa.String(length=16), nullable=False),
        sa.Column("submit_attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error_field", sa.String(length=64), nullable=True),
        sa.Column("attention_code", sa.String(length=32), nullable=True),
        sa.Column("attention_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retried_as", sa.Uuid(), nullable=True),
        sa.Column("outcome_enc", sa.LargeBinary(), nullable=True),
        sa.Column("error_message_enc", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_job_changes")),
        # No reuse of a deleted row's seq on SQLite either: streams resume by it.
        sqlite_autoincrement=True,
    )
    op.create_index("ix_job_changes_job_seq", "job_changes", ["job_id", "seq"])
    op.create_index("ix_job_changes_client_txid_seq", "job_changes", ["client_id", "txid", "seq"])
    # Every client's changes after a position (a reader of them all: callbacks).
    op.create_index("ix_job_changes_txid_seq", "job_changes", ["txid", "seq"])
    targets = ", ".join(SNAPSHOT.values())
    if op.get_bind().dialect.name == "postgresql":
        values = ", ".join(f"NEW.{column}" for column in SNAPSHOT)
        changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in CHANGE_COLUMNS)
        op.execute(
            f"""
            CREATE FUNCTION record_job_change() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE
                new_seq bigint;
            BEGIN
                INSERT INTO job_changes (txid, {targets})
                VALUES (pg_current_xact_id()::text::bigint, {values})
                RETURNING seq INTO new_seq;
                PERFORM pg_notify(
                    'job_changes',
                    NEW.id::text || ' ' || coalesce(NEW.client_id::text, '-') || ' ' || new_seq
                );
                RETURN NULL;
            END
            $$
            """  # noqa: S608 (built from the constant lists above)
        )
        op.execute(
            "CREATE TRIGGER jobs_record_insert AFTER INSERT ON jobs "
            "FOR EACH ROW EXECUTE FUNCTION record_job_change()"
        )
        op.execute(
            f"CREATE TRIGGER jobs_record_change AFTER UPDATE ON jobs FOR EACH ROW "
            f"WHEN ({changed}) EXECUTE FUNCTION record_job_change()"
        )
    else:
        values = ", ".join(f"NEW.{column}" for column in SNAPSHOT)
        changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in CHANGE_COLUMNS)
        insert = f"INSERT INTO job_changes (txid, {targets}) VALUES (0, {values});"  # noqa: S608
        op.execute(f"CREATE TRIGGER jobs_record_insert AFTER INSERT ON jobs BEGIN {insert} END")
        op.execute(
            f"CREATE TRIGGER jobs_record_change AFTER UPDATE ON jobs "
            f"WHEN {changed} BEGIN {insert} END"
        )


def downgrade() -> None:
    on_jobs = " ON jobs" if _pg() else ""
    op.execute(f"DROP TRIGGER IF EXISTS jobs_record_change{on_jobs}")
    op.execute(f"DROP TRIGGER IF EXISTS jobs_record_insert{on_jobs}")
    if _pg():
        op.execute("DROP FUNCTION IF EXISTS record_job_change()")
    op.drop_index("ix_job_changes_txid_seq", table_name="job_changes")
    op.drop_index("ix_job_changes_client_txid_seq", table_name="job_changes")
    op.drop_index("ix_job_changes_job_seq", table_name="job_changes")
    op.drop_table("job_changes")


def _pg() -> bool:
    return op.get_bind().dialect.name == "postgresql"
