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

TABLES = {"clinics", "jobs", "job_events", "webhook_deliveries", "api_clients", "audit_events"}


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
