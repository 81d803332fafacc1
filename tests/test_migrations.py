"""Migrations: empty → head → base → head on both databases, and no drift from the models."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from webhook_service.db import make_engine
from webhook_service.migrations import alembic_config, downgrade, upgrade
from webhook_service.models import Base

TABLES = {
    "clinics",
    "jobs",
    "job_events",
    "job_changes",
    "webhook_deliveries",
    "api_clients",
    "audit_events",
    "rate_counters",
    "metric_counters",
    "worker_heartbeats",
    "reference_lists",
    "reference_items",
    "callback_endpoints",
    "callback_deliveries",
    "callback_attempts",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite3'}"
        return
    server = make_url(request.getfixturevalue("postgres_server_url"))
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"webhook_service_migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield server.set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False
    )
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_round_trip(empty_database):
    upgrade(empty_database)
    assert tables(empty_database) == TABLES
    downgrade(empty_database, "base")
    assert tables(empty_database) == set()
    upgrade(empty_database)
    assert tables(empty_database) == TABLES


def test_models_and_migrations_do_not_drift(empty_database):
    upgrade(empty_database)
    engine = make_engine(empty_database)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_alembic_check_passes_at_head(empty_database):
    upgrade(empty_database)
    command.check(alembic_config(empty_database))


def test_existing_rows_are_encrypted_on_upgrade_and_restored_on_downgrade(
    empty_database, monkeypatch
):
    """Rows written before PHI encryption (0002) survive the upgrade, readable only with the
    key, and come back as they were on downgrade."""
    import json

    from sqlalchemy import text

    from tests.conftest import PHI_KEY, PHI_SEARCH_KEY
    from webhook_service import phi
    from webhook_service.db import make_session_factory
    from webhook_service.models import Clinic, Job, WebhookDelivery

    monkeypatch.setenv("PHI_ENCRYPTION_KEYS", PHI_KEY)
    monkeypatch.setenv("PHI_SEARCH_KEY", PHI_SEARCH_KEY)
    upgrade(empty_database, "0002")
    body = {"appointment_id": "A-1", "note": "Knee pain, improving."}
    engine = make_engine(empty_database)
    job_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO clinics (id, name, access_token, needs_relink, created_at, updated_at)"
                " VALUES (1, 'default', 'at_secret', false, :now, :now)"
            ),
            {"now": "2026-11-23 12:00:00"},
        )
        conn.execute(
            text(
                "INSERT INTO jobs (id, kind, status, clinic_id, request_body, request_hash,"
                " appointment_id, submission_state, submit_attempts, outcome, error_message,"
                " flagged, created_at, updated_at) VALUES (:id, 'note', 'failed', 1, :body,"
                " 'h', 'A-1', 'accepted', 1, :outcome, 'Chart locked', false, :now, :now)"
            ),
            {
                "id": job_id.hex if empty_database.startswith("sqlite") else str(job_id),
                "body": json.dumps(body),
                "outcome": json.dumps({"event": "note.failed", "message": "Chart locked"}),
                "now": "2026-11-23 12:00:00",
            },
        )
        conn.execute(
            text(
                "INSERT INTO webhook_deliveries (dedup_key, headers, raw_body, signature_match,"
                " received_at, state, appointment_id) VALUES ('k', '{}', :raw, 'raw:secret[0]',"
                " :now, 'applied', 'A-1')"
            ),
            {"raw": b'{"type":"note.failed"}', "now": "2026-11-23 12:00:00"},
        )
    try:
        upgrade(empty_database)
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT request_body_enc FROM jobs")).scalar_one()
            assert b"Knee pain" not in bytes(stored)
        with make_session_factory(engine)() as session:
            job = session.get(Job, job_id)
            assert job.request_body == body
            assert job.error_message == "Chart locked"
            assert job.appointment_hash == phi.search_hash("A-1")
            assert session.get(Clinic, 1).access_token == "at_secret"
            delivery = session.query(WebhookDelivery).one()
            assert delivery.raw_body == b'{"type":"note.failed"}'
        downgrade(empty_database, "0002")
        with engine.connect() as conn:
            row = conn.execute(text("SELECT appointment_id, error_message FROM jobs")).one()
            token = conn.execute(text("SELECT access_token FROM clinics")).scalar_one()
        assert tuple(row) == ("A-1", "Chart locked")
        assert token == "at_secret"
    finally:
        engine.dispose()


def test_the_kind_index_migration_replaces_a_half_built_leftover(empty_database):
    # A CONCURRENTLY build cut off half-way leaves an (invalid) index of the same name; the
    # release must succeed when run again, with the index it was meant to build.
    upgrade(empty_database, "0007")
    engine = make_engine(empty_database)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE INDEX ix_jobs_kind_created_id ON jobs (kind)")
        upgrade(empty_database)
        indexes = {index["name"]: index for index in inspect(engine).get_indexes("jobs")}
    finally:
        engine.dispose()
    assert indexes["ix_jobs_kind_created_id"]["column_names"] == ["kind", "created_at", "id"]


def test_jobs_failed_as_no_outcome_tell_the_truth_after_0010(empty_database):
    """Those whose request may be at Cobalt go back to processing with attention (a note
    takes its appointment slot back only when it is free); those whose request never reached
    Cobalt stay failed, with the code that says so."""
    from datetime import UTC, datetime

    from sqlalchemy import select, text

    from webhook_service.db import make_session_factory
    from webhook_service.models import Job, JobEvent

    upgrade(empty_database, "0009")
    sqlite = empty_database.startswith("sqlite")
    engine = make_engine(empty_database)

    def at(minute: int) -> object:
        moment = datetime(2026, 11, 23, 12, minute, tzinfo=UTC)
        return moment.replace(tzinfo=None).isoformat(" ") if sqlite else moment

    def job(name: str, minute: int, **columns: object) -> uuid.UUID:
        key = uuid.uuid5(uuid.NAMESPACE_URL, name)
        values = {
            "id": key.hex if sqlite else str(key),
            "kind": "note",
            "status": "failed",
            "clinic_id": 1,
            "request_hash": "h",
            "submission_state": "accepted",
            "submit_attempts": 1,
            "flagged": False,
            "created_at": at(minute),
            "updated_at": at(minute + 30),
            "finished_at": at(minute + 30),
            "error_code": "no_outcome",
            "error_message_enc": b"ciphertext",
            "outcome_enc": b"ciphertext",
            "appointment_hash": f"appt-{name}",
            "inflight_key": None,
            **columns,
        }
        names = ", ".join(values)
        marks = ", ".join(f":{name}" for name in values)
        conn.execute(text(f"INSERT INTO jobs ({names}) VALUES ({marks})"), values)  # noqa: S608
        return key

    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO clinics (id, name, access_token_enc, needs_relink, created_at,"
                " updated_at) VALUES (1, 'default', :token, false, :now, :now)"
            ),
            {"token": b"ciphertext", "now": at(0)},
        )
        free = job("free", 0)
        busy = job("busy", 1, appointment_hash="appt-shared")
        job(
            "holder",
            2,
            appointment_hash="appt-shared",
            status="processing",
            error_code=None,
            finished_at=None,
            inflight_key="1:appt-shared",
        )
        first = job("first", 3, appointment_hash="appt-twice")
        second = job("second", 4, appointment_hash="appt-twice", submission_state="unknown")
        sending = job(
            "sending",
            5,
            kind="telephone_encounter",
            appointment_hash=None,
            submission_state="sending",
        )
        unsent = job(
            "unsent",
            6,
            kind="telephone_encounter",
            appointment_hash=None,
            submission_state="rejected",
            submit_attempts=3,
        )
        waited = job("waited", 7, submission_state="rejected", submit_attempts=0)
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, at, type, detail)"
                " VALUES (:job, :at, 'submission_waiting', '{}')"
            ),
            {"job": waited.hex if sqlite else str(waited), "at": at(7)},
        )
        other = job("other", 8, error_code="cobalt_failed")
    try:
        upgrade(empty_database)
        with make_session_factory(engine)() as session:
            columns = (
                Job.id,
                Job.status,
                Job.error_code,
                Job.attention_code,
                Job.attention_since,
                Job.finished_at,
                Job.submission_state,
                Job.inflight_key,
            )
            rows = {row.id: row for row in session.execute(select(*columns))}
            cleared = {
                row[0]
                for row in session.execute(
                    text(
                        "SELECT id FROM jobs WHERE outcome_enc IS NULL"
                        " AND error_message_enc IS NULL"
                    )
                )
            }
            lines = {
                (row.job_id, row.detail["became"])
                for row in session.scalars(
                    select(JobEvent).where(JobEvent.type == "deadline_rule_applied")
                )
            }
    finally:
        engine.dispose()

    for key in (free, busy, first, second, sending):
        row = rows[key]
        assert (row.status, row.attention_code, row.error_code, row.finished_at) == (
            "processing",
            "no_outcome",
            None,
            None,
        ), key
        assert row.attention_since is not None
        assert (key, "processing, attention no_outcome") in lines
    assert rows[free].attention_since == datetime(2026, 11, 23, 12, 30, tzinfo=UTC)
    assert rows[free].inflight_key == "1:appt-free"
    assert rows[busy].inflight_key is None, "another note holds the slot"
    assert rows[first].inflight_key == "1:appt-twice", "the earliest of two takes it"
    assert rows[second].inflight_key is None
    assert rows[sending].submission_state == "unknown"
    assert (rows[unsent].status, rows[unsent].error_code) == ("failed", "cobalt_unavailable")
    assert (rows[waited].status, rows[waited].error_code) == ("failed", "appointment_busy")
    assert (rows[other].status, rows[other].error_code) == ("failed", "cobalt_failed")
    assert (unsent, "failed, cobalt_unavailable") in lines
    assert (waited, "failed, appointment_busy") in lines
    stored = {value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)) for value in cleared}
    assert {free, busy, first, second, sending, unsent, waited} <= stored
    assert other not in stored
