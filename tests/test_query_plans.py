"""Query plans (PostgreSQL): the hot queries use their indexes on a table of realistic shape.

The statements are the ones the service really sends (captured while the API and the worker's
claim run), explained with their own parameters against a database built by the migrations
and seeded with 60,000 jobs, then ANALYZEd: no `enable_seqscan` tricks, the planner chooses.
A sequential scan of `jobs` here is what would make these requests slow at a million rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from tests.conftest import START, BearerClient, make_settings, new_token
from tests.processes import throwaway_postgres_database
from webhook_service import phi, services
from webhook_service.db import make_session_factory
from webhook_service.http import create_app
from webhook_service.migrations import upgrade

JOBS = 60_000
MRN = "MRN-PLAN-1"


@pytest.fixture(scope="module")
def planned_url(postgres_server_url: str) -> Iterator[str]:
    """A database of its own, migrated to head, with JOBS jobs like the bench's, analyzed."""
    with throwaway_postgres_database(postgres_server_url, "plans") as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="module")
def seeded(planned_url: str) -> Iterator[dict[str, Any]]:
    settings = make_settings(planned_url)
    engine_url = make_url(planned_url).set(drivername="postgresql")
    app = create_app(settings)
    sessions = app.extensions["webhook_service"]["sessions"]
    frontend = new_token(sessions, "plans-frontend", "frontend")
    support = new_token(sessions, "plans-support", "support")
    with psycopg.connect(engine_url.render_as_string(hide_password=False)) as conn:
        client_id = conn.execute("SELECT id FROM api_clients WHERE name = 'plans-frontend'")
        client = client_id.fetchone()
        assert client is not None
        clinic = conn.execute(
            "INSERT INTO clinics (name, access_token_enc, needs_relink, created_at, updated_at)"
            " VALUES ('default', %s, false, now(), now()) RETURNING id",
            (phi.keys().encrypt(b"at_plans"),),
        ).fetchone()
        assert clinic is not None
        # Like the bench: 1 in 50 open (half of those due for submission), 1 in 20 failed,
        # 1 in 4 a telephone encounter; created 30 s apart going back; hashes per row.
        conn.execute(
            """
            INSERT INTO jobs (id, kind, status, clinic_id, client_id, request_hash,
                appointment_hash, patient_mrn_hash, submission_state, submit_attempts,
                next_attempt_at, cobalt_job_id, flagged, created_at, updated_at, finished_at)
            SELECT gen_random_uuid(),
                CASE WHEN n %% 4 = 1 THEN 'telephone_encounter' ELSE 'note' END,
                CASE WHEN n %% 50 = 0 THEN 'processing' WHEN n %% 20 = 3 THEN 'failed'
                     ELSE 'completed' END,
                %(clinic)s, %(client)s, md5(n::text) || md5(n::text),
                CASE WHEN n %% 4 <> 1 THEN md5('a' || n) || md5('a' || n) END,
                CASE WHEN n %% 4 = 1 THEN md5('m' || n) || md5('m' || n) END,
                CASE WHEN n %% 100 = 0 THEN 'pending' ELSE 'accepted' END,
                CASE WHEN n %% 100 = 0 THEN 0 ELSE 1 END,
                CASE WHEN n %% 100 = 0 THEN now() - interval '1 minute' END,
                CASE WHEN n %% 100 <> 0 THEN 'cj_' || n END,
                false,
                now() - n * interval '30 seconds', now(),
                CASE WHEN n %% 50 <> 0 THEN now() - n * interval '30 seconds' END
            FROM generate_series(1, %(jobs)s) AS n
            """,
            {"clinic": clinic[0], "client": client[0], "jobs": JOBS},
        )
        conn.commit()
    # A few through the API, so the MRN search finds something (and a poll has a job).
    app.test_client_class = BearerClient
    api = app.test_client(token=frontend)
    encounter = {
        "patient_mrn": MRN,
        "provider_id": "prov-1",
        "location_id": "loc-1",
        "assigned_to_id": "staff-1",
        "reason": "Refill",
    }
    job_ids = []
    for _ in range(3):
        response = api.post("/v1/telephone-encounters", json=encounter)
        assert response.status_code == 202, response.get_data(as_text=True)
        job_ids.append(response.json["id"])
    with psycopg.connect(engine_url.render_as_string(hide_password=False), autocommit=True) as c:
        c.execute("VACUUM (ANALYZE) jobs")
    yield {"app": app, "frontend": frontend, "support": support, "job_ids": job_ids}
    app.extensions["webhook_service"]["engine"].dispose()


class Captured:
    """Every statement on `jobs` the engine sends while in use, with its parameters."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statements: list[tuple[str, Any]] = []

    def __enter__(self) -> Captured:
        event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb in ("SELECT", "UPDATE", "WITH") and " jobs" in statement:
            self.statements.append((statement, parameters))

    def plans(self) -> list[dict[str, Any]]:
        explained = []
        with self.engine.connect() as conn:
            for statement, parameters in self.statements:
                result = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters)
                explained.append(result.scalar_one()[0]["Plan"])
            conn.rollback()
        assert explained, "no statement on jobs was captured"
        return explained


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def seq_scans_of_jobs(plans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        node
        for plan in plans
        for node in nodes(plan)
        if node["Node Type"] == "Seq Scan" and node.get("Relation Name") == "jobs"
    ]


def indexes_used(plans: list[dict[str, Any]]) -> set[str]:
    return {node["Index Name"] for plan in plans for node in nodes(plan) if "Index Name" in node}


@pytest.fixture
def app(seeded: dict[str, Any]) -> Flask:
    flask_app: Flask = seeded["app"]
    return flask_app


@pytest.fixture
def engine(app: Flask) -> Engine:
    value: Engine = app.extensions["webhook_service"]["engine"]
    return value


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?status=failed",
        "?status=processing",
        "?kind=telephone_encounter",
        "?status=completed&kind=note",
        "?created_from=2026-01-01&created_to=2026-06-01",
    ],
)
def test_support_list_by_filters_reads_jobs_through_an_index(app, engine, seeded, query):
    staff = app.test_client(token=seeded["support"])
    with Captured(engine) as captured:
        response = staff.get(f"/v1/jobs{query}")
    assert response.status_code == 200, response.get_data(as_text=True)
    plans = captured.plans()
    assert seq_scans_of_jobs(plans) == []
    assert indexes_used(plans) & {
        "ix_jobs_created_id",
        "ix_jobs_status_created_id",
        "ix_jobs_kind_created_id",
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "completed"),
        ("status", "failed"),
        ("status", "processing"),
        ("kind", "telephone_encounter"),
        ("kind", "note"),
    ],
)
def test_a_status_or_kind_filter_reads_its_pages_from_its_own_index(
    app, engine, seeded, field, value
):
    # Not the created index filtered by status or kind: that walks past every job of the
    # others, which is thousands when a batch's new jobs sit on top of the page asked for.
    staff = app.test_client(token=seeded["support"])
    with Captured(engine) as captured:
        first = staff.get(f"/v1/jobs?{field}={value}&limit=20")
        cursor = first.json["next_cursor"]
        second = staff.get(f"/v1/jobs?{field}={value}&limit=20&cursor={cursor}")
    assert second.status_code == 200, second.get_data(as_text=True)
    assert {job[field] for job in first.json["jobs"] + second.json["jobs"]} == {value}
    plans = captured.plans()
    assert seq_scans_of_jobs(plans) == []
    assert len(plans) == 2
    for plan in plans:
        assert f"ix_jobs_{field}_created_id" in indexes_used([plan])
        assert "ix_jobs_created_id" not in indexes_used([plan])


@pytest.mark.parametrize(
    ("body", "index"),
    [
        ({"patient_mrn": MRN}, "ix_jobs_patient_mrn_hash"),
        ({"appointment_id": "appt-1"}, "ix_jobs_appointment_hash"),
        ({"patient_mrn": MRN, "status": "processing"}, "ix_jobs_patient_mrn_hash"),
    ],
)
def test_support_search_by_phi_uses_the_keyed_hash_index(app, engine, seeded, body, index):
    staff = app.test_client(token=seeded["support"])
    with Captured(engine) as captured:
        response = staff.post("/v1/jobs/search", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    if "patient_mrn" in body:
        assert len(response.json["jobs"]) == 3
    plans = captured.plans()
    assert seq_scans_of_jobs(plans) == []
    assert index in indexes_used(plans)


def test_poll_reads_one_row_by_primary_key(app, engine, seeded):
    api = app.test_client(token=seeded["frontend"])
    with Captured(engine) as captured:
        response = api.get(f"/v1/jobs/{seeded['job_ids'][0]}")
    assert response.status_code == 200
    plans = captured.plans()
    assert seq_scans_of_jobs(plans) == []
    assert "pk_jobs" in indexes_used(plans)


def test_worker_claim_takes_the_next_due_job_from_the_partial_index(engine, seeded):
    with Captured(engine) as captured, make_session_factory(engine)() as session:
        try:
            now = datetime.now(UTC)
            claim = services.claim_due_job(session, now=now, lease=timedelta(seconds=60))
            assert claim is not None
        finally:
            session.rollback()
    plans = captured.plans()
    assert seq_scans_of_jobs(plans) == []
    assert "ix_jobs_due_next" in indexes_used(plans)


def test_purge_finds_settled_jobs_from_the_partial_index(engine, seeded):
    with Captured(engine) as captured, make_session_factory(engine)() as session:
        try:
            services.purge_expired_phi(session, now=START, retention=timedelta(days=30))
        finally:
            session.rollback()
    plans = captured.plans()
    assert seq_scans_of_jobs(plans) == []
    assert "ix_jobs_purge_due" in indexes_used(plans)


def test_the_metrics_scrape_reads_jobs_through_indexes(app, engine, seeded):
    """Every gauge reads a bounded part of an index: open jobs, jobs needing a person, the
    last hour's settled jobs, the backlog. No count of all jobs ever settled."""
    scraper = app.test_client(token=seeded["support"])
    with Captured(engine) as captured:
        response = scraper.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    plans = captured.plans()
    assert len(plans) == 5
    assert seq_scans_of_jobs(plans) == []
    assert {
        "ix_jobs_status_created_id",
        "ix_jobs_attention",
        "ix_jobs_purge_due",
        "ix_jobs_due_next",
    } <= indexes_used(plans)
