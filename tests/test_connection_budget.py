"""The database connection budget: against a PostgreSQL role capped with CONNECTION LIMIT,
as small hosted plans are, running out of connections is a quick 503 and never lasting."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import responses
from flask import Flask
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from tests.conftest import (
    COBALT,
    BearerClient,
    event,
    make_settings,
    new_token,
    pending_encounter,
    sign,
)
from tests.processes import WEBHOOK_SECRET as PROCESS_SECRET
from tests.processes import capped_postgres_database, running_system
from tests.test_lifecycle_http import ENCOUNTER
from webhook_service.cobalt import CobaltClient
from webhook_service.db import SessionFactory, make_engine, make_session_factory
from webhook_service.http import create_app
from webhook_service.migrations import upgrade
from webhook_service.models import Job
from webhook_service.sandbox.data import DEMO_IDS
from webhook_service.worker import Worker

LIMIT = 3
# A job no one has: 404 when the database answers, 503 when it cannot be reached.
NO_JOB = "/v1/jobs/00000000-0000-0000-0000-000000000000"


@pytest.fixture
def capped_url(postgres_server_url: str) -> Iterator[str]:
    with capped_postgres_database(postgres_server_url, LIMIT) as url:
        upgrade(url)
        yield url


@pytest.fixture
def capped_app(capped_url: str) -> Iterator[Flask]:
    app = create_app(make_settings(capped_url, DATABASE_POOL_SIZE=2))
    app.config["TESTING"] = True
    app.test_client_class = BearerClient
    setup = make_engine(capped_url, pool_size=1)
    app.config["TEST_TOKEN"] = new_token(make_session_factory(setup), "frontend-a", "frontend")
    setup.dispose()
    yield app
    _engine(app).dispose()


def _engine(app: Flask) -> Engine:
    engine: Engine = app.extensions["webhook_service"]["engine"]
    return engine


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _hog(url: str, count: int) -> list[psycopg.Connection[tuple[object, ...]]]:
    return [psycopg.connect(_libpq(url)) for _ in range(count)]


def _is_unavailable(response: object) -> None:
    assert response.status_code == 503  # type: ignore[attr-defined]
    assert response.headers["Retry-After"]  # type: ignore[attr-defined]
    assert response.mimetype == "application/problem+json"  # type: ignore[attr-defined]
    assert response.get_json()["status"] == 503  # type: ignore[attr-defined]


def test_refused_connection_is_503_then_recovers_without_restart(
    capped_app: Flask, capped_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = capped_app.test_client()
    assert client.get("/readyz").status_code == 200
    _engine(capped_app).dispose()  # the server is full before the process needs a connection
    hogs = _hog(capped_url, LIMIT)
    try:
        with caplog.at_level(logging.ERROR):
            _is_unavailable(client.get("/readyz"))
            _is_unavailable(client.get(NO_JOB))
        messages = [record.getMessage() for record in caplog.records]
        assert "database refused the connection: too many clients" in messages
        assert not any("FATAL" in message or "wh_capped" in message for message in messages)
    finally:
        for hog in hogs:
            hog.close()
    assert client.get("/readyz").status_code == 200
    assert client.get(NO_JOB).status_code == 404


def test_pool_exhausted_is_503_not_500(capped_app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    client = capped_app.test_client()
    held = [_engine(capped_app).connect() for _ in range(2)]  # the process's whole pool
    try:
        with caplog.at_level(logging.ERROR):
            _is_unavailable(client.get(NO_JOB))
        assert "no database connection free in this process's pool" in [
            record.getMessage() for record in caplog.records
        ]
    finally:
        for connection in held:
            connection.close()
    assert client.get(NO_JOB).status_code == 404
    assert client.get("/readyz").status_code == 200


def test_pooled_connections_dropped_while_full_are_replaced(
    capped_app: Flask, capped_url: str
) -> None:
    """The server drops the process's connections and fills up with others: requests get
    503 meanwhile, and once the others leave the same process serves again."""
    client = capped_app.test_client()
    assert client.get("/readyz").status_code == 200
    assert client.get(NO_JOB).status_code == 404
    admin = _libpq(capped_url).rsplit("/", 1)[0] + "/postgres"
    role = make_url(capped_url).username
    with psycopg.connect(admin.replace(f"{role}:{role}@", "postgres@"), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
    hogs = _hog(capped_url, LIMIT)
    try:
        for _ in range(3):
            assert client.get("/readyz").status_code == 503
            assert client.get(NO_JOB).status_code == 503
    finally:
        for hog in hogs:
            hog.close()
    assert client.get("/readyz").status_code == 200
    assert client.get(NO_JOB).status_code == 404


def test_connections_say_which_process_kind_holds_them(capped_app: Flask, capped_url: str) -> None:
    client = capped_app.test_client()
    assert client.get("/readyz").status_code == 200
    with psycopg.connect(_libpq(capped_url)) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
            )
        ]
    assert "webhook-service:web" in names


# --- The worker ---------------------------------------------------------------------------


def _accepted(sessions: SessionFactory, job_id: uuid.UUID) -> bool:
    with sessions() as session:
        job = session.get(Job, job_id)
        return job is not None and job.submission_state == "accepted"


def _cobalt_accepts(cobalt: responses.RequestsMock, callback: Any = None) -> None:
    reply = {"success": True, "job_id": 4242, "telephone_encounter_id": "te_77"}

    def answer(_request: Any) -> tuple[int, dict[str, str], str]:
        if callback is not None:
            callback()
        return 200, {}, json.dumps(reply)

    cobalt.add_callback(responses.POST, f"{COBALT}/telephone-encounters", answer)


def _worker(url: str, sessions: SessionFactory, **settings: Any) -> Worker:
    return Worker(
        make_settings(url, **settings),
        sessions,
        CobaltClient(COBALT, "ci_test", "cs_test", connect_timeout=1, read_timeout=1),
        jitter=lambda: 0.0,
        housekeeping=False,
    )


def test_worker_records_cobalts_answer_when_its_pool_frees_up(capped_url: str) -> None:
    """Cobalt accepts while every connection of the worker's pool is taken (its other
    threads are busy): the answer waits for a connection instead of being lost."""
    engine = make_engine(capped_url, pool_size=1, wait_seconds=0.1, process_kind="worker")
    sessions = make_session_factory(engine)
    job_id = pending_encounter(sessions, make_settings(capped_url), ENCOUNTER)
    held: list[Any] = []

    def take_the_pool() -> None:
        held.append(engine.connect())
        threading.Timer(0.5, held[0].close).start()

    with responses.RequestsMock() as cobalt:
        _cobalt_accepts(cobalt, take_the_pool)
        assert _worker(capped_url, sessions).run_once()
    assert held
    assert _accepted(sessions, job_id)
    engine.dispose()


def test_worker_backs_off_while_the_server_is_full_and_resumes(
    capped_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(capped_url, pool_size=1, process_kind="worker")
    sessions = make_session_factory(engine)
    job_id = pending_encounter(sessions, make_settings(capped_url), ENCOUNTER)
    engine.dispose()
    hogs = _hog(capped_url, LIMIT)
    stop = threading.Event()
    worker = _worker(capped_url, sessions, WORKER_POLL_SECONDS=0.01)
    with responses.RequestsMock() as cobalt:
        _cobalt_accepts(cobalt)
        thread = threading.Thread(target=worker.run_forever, args=(stop,))
        with caplog.at_level(logging.WARNING, logger="webhook_service.worker"):
            thread.start()
            try:
                refused = "database refused the connection: too many clients"
                _wait_until(lambda: refused in [r.getMessage() for r in caplog.records])
                assert not _accepted_while_full(caplog)
            finally:
                for hog in hogs:
                    hog.close()
            _wait_until(lambda: _accepted(sessions, job_id))
        stop.set()
        thread.join()
    assert not [r for r in caplog.records if r.getMessage() == "worker step failed"]
    engine.dispose()


def _accepted_while_full(caplog: pytest.LogCaptureFixture) -> bool:
    return any(r.getMessage() == "submission accepted" for r in caplog.records)


def _wait_until(condition: Any, timeout: float = 30.0) -> None:
    """Wait for something the system does on its own (a generous bound, not a measure)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- The default formation, through the real processes -----------------------------------------

# What the README's budget promises for the formation it gives a 20-connection plan at its
# largest: WEB_CONCURRENCY 3 x DATABASE_POOL_SIZE 3, one worker process's
# WORKER_DATABASE_POOL_SIZE 4, and each web process's and the worker's one listening connection
# (README, "Push" and "Callbacks"): 17, leaving 3 for the release, a one-off and psql.
WEB_PROCESSES = 3
BUDGET = {
    "webhook-service:web": WEB_PROCESSES * 3,
    "webhook-service:web-listen": WEB_PROCESSES,
    "webhook-service:worker": 4,
    "webhook-service:worker-listen": 1,
}


# Ids the sandbox's EMR lists hold: the pre-flight check lets them through (the burst is
# about connections, not about refusals).
SANDBOX_ENCOUNTER = {
    **ENCOUNTER,
    "provider_id": DEMO_IDS["provider_id"],
    "location_id": DEMO_IDS["location_id"],
    "assigned_to_id": DEMO_IDS["assigned_to_id"],
}


@pytest.mark.e2e
def test_default_formation_stays_within_its_budget_under_a_burst(
    postgres_server_url: str, tmp_path: Path
) -> None:
    """32 clients at once submit, poll and deliver webhooks against a database capped at 20,
    the README's formation for it: no 5xx, and the connections each process kind holds never
    pass the budget."""
    with (
        capped_postgres_database(postgres_server_url, 20) as url,
        running_system(url, tmp_path, env={"WEB_CONCURRENCY": str(WEB_PROCESSES)}) as system,
    ):
        database = make_url(url).database
        peak: Counter[str] = Counter()
        sampling = threading.Event()

        def sample() -> None:
            admin = _libpq(postgres_server_url)
            with psycopg.connect(admin, autocommit=True) as conn:
                while not sampling.is_set():
                    rows = conn.execute(
                        # Client connections only: an autovacuum worker shows up with the
                        # database's name and no application_name, and counts against no limit.
                        "SELECT application_name, count(*) FROM pg_stat_activity"
                        " WHERE datname = %s AND backend_type = 'client backend' GROUP BY 1",
                        (database,),
                    ).fetchall()
                    for name, count in rows:
                        peak[name] = max(peak[name], count)
                    sampling.wait(0.02)

        def one_client(n: int) -> list[int]:
            api = system.api()
            statuses = []
            for i in range(8):
                answer = api.post(
                    f"{system.web_url}/v1/telephone-encounters",
                    json={**SANDBOX_ENCOUNTER, "patient_mrn": f"MRN-{n}-{i}"},
                    timeout=30,
                )
                statuses.append(answer.status_code)
                if answer.status_code == 202:
                    job = answer.json()["id"]
                    statuses.append(
                        api.get(f"{system.web_url}/v1/jobs/{job}", timeout=30).status_code
                    )
                    if i == 0:  # a long poll too: every web process then listens
                        held = api.get(
                            f"{system.web_url}/v1/jobs/{job}",
                            headers={"If-None-Match": answer.headers["ETag"], "Prefer": "wait=1"},
                            timeout=30,
                        )
                        statuses.append(500 if held.status_code >= 500 else 0)
                body, signature = sign(
                    event("telephone_encounter.created", job_id=f"{n}{i}"), PROCESS_SECRET
                )
                statuses.append(
                    requests.post(
                        f"{system.web_url}/webhooks/cobalt",
                        data=body,
                        headers={
                            "cobalt-verification": signature,
                            "content-type": "application/json",
                        },
                        timeout=30,
                    ).status_code
                )
            return statuses

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with ThreadPoolExecutor(32) as pool:
                statuses = [s for result in pool.map(one_client, range(32)) for s in result]
        finally:
            sampling.set()
            sampler.join()
        assert not [s for s in statuses if s >= 500], (Counter(statuses), system.tails())
        assert statuses.count(200) == 2 * 32 * 8, Counter(statuses)  # polls and webhooks
        assert peak["webhook-service:web"] > 0, peak
        assert peak["webhook-service:web-listen"] > 0, peak
        assert peak["webhook-service:worker"] > 0, peak
        assert peak["webhook-service:worker-listen"] > 0, peak
        for name, budget in BUDGET.items():
            assert peak[name] <= budget, (name, peak)
        assert sum(peak.values()) <= sum(BUDGET.values()), peak
        assert requests.get(f"{system.web_url}/readyz", timeout=10).status_code == 200
