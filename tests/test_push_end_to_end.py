"""Push end to end, through the real processes on both databases: a long poll and a stream
held by one web process are answered by the webhook another web process took."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from sqlalchemy.engine import make_url

from tests.processes import (
    RunningSystem,
    running_system,
    start_another_web,
    throwaway_postgres_database,
)
from webhook_service.sandbox.data import DEMO_IDS

pytestmark = pytest.mark.e2e

# Long enough that the long poll or stream is held before Cobalt's webhook arrives.
PROCESSING_SECONDS = 2.0
NOTE = {
    "appointment_id": DEMO_IDS["appointment_id"],
    "note": {"subjective": "s", "objective": "o", "assessment": "a", "plan": "p"},
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'push.sqlite3'}"
        return
    server = request.getfixturevalue("postgres_server_url")
    with throwaway_postgres_database(server) as url:
        yield url


@pytest.fixture
def system(database: str, tmp_path: Path) -> Iterator[RunningSystem]:
    with running_system(database, tmp_path, processing_seconds=PROCESSING_SECONDS) as running:
        yield running


def submit(api: requests.Session, system: RunningSystem) -> requests.Response:
    response = api.post(f"{system.web_url}/v1/notes", json=NOTE, timeout=10)
    assert response.status_code == 202, response.text
    return response


def events(response: requests.Response) -> Iterator[dict[str, Any]]:
    """The events of an open event stream, as they come; comments skipped."""
    fields: dict[str, str] = {}
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if "event" in fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def test_a_long_poll_is_answered_by_the_webhook_another_web_process_took(
    system: RunningSystem,
) -> None:
    other = start_another_web(system)
    with system.api() as api:
        submitted = submit(api, system)
        job_url = f"{other}{submitted.headers['Location']}"
        # The 202's ETag: the submission's progress does not change it, only the outcome.
        answer = api.get(
            job_url,
            headers={"If-None-Match": submitted.headers["ETag"], "Prefer": "wait=25"},
            timeout=40,
        )
    # Unwoken, it would have been a 304 after 25 s: two requests from submit to outcome.
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "completed"
    assert answer.headers["Preference-Applied"] == "wait=25"
    assert system.server_errors() == []


def test_a_stream_follows_a_job_from_processing_to_its_outcome_and_closes(
    system: RunningSystem,
) -> None:
    other = start_another_web(system)
    with system.api() as api:
        job_id = submit(api, system).json()["id"]
        with api.get(f"{other}/v1/jobs/{job_id}/stream", stream=True, timeout=40) as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            seen = [json.loads(one["data"]) for one in events(stream)]
            # The loop ends only when the server closes the stream.
    assert [job["status"] for job in seen] == ["processing", "completed"]
    assert seen[-1]["outcome"]["event"] == "note.created"


@pytest.mark.postgres_only
def test_a_cut_listening_connection_never_leaves_a_changed_job_answered_304(
    database: str, system: RunningSystem
) -> None:
    """pg_terminate_backend on every web process's listening connection while a long poll is
    held: the job's outcome still answers it (the waiters re-check when the listener drops
    and when it is back), rather than a 304 at the end of the wait."""
    other = start_another_web(system)
    with system.api() as api:
        submitted = submit(api, system)
        held = {"If-None-Match": submitted.headers["ETag"], "Prefer": "wait=25"}
        url = f"{other}{submitted.headers['Location']}"
        with requests.Session() as admin_http:
            admin_http.headers.update(api.headers)
            # Once a waiter is there, its process listens: cut it (and the first web's).
            _cut_listeners_soon(database)
            answer = admin_http.get(url, headers=held, timeout=40)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "completed"


def _cut_listeners_soon(database: str) -> None:
    import threading

    def cut() -> None:
        libpq = (
            make_url(database).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        with psycopg.connect(libpq, autocommit=True) as admin:
            for _ in range(100):
                killed = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'webhook-service:web-listen'"
                    " AND datname = current_database()"
                ).fetchall()
                if killed:
                    return
                time.sleep(0.02)

    threading.Thread(target=cut, daemon=True).start()


def test_sigterm_ends_held_streams_and_long_polls_and_the_web_exits_cleanly(
    database: str, system: RunningSystem
) -> None:
    """A deploy stops a web process holding a stream and a long poll: the long poll is
    answered (304: nothing changed), the stream ends (its EventSource would resume elsewhere),
    and gunicorn exits 0 without waiting out its graceful timeout on them."""
    import signal
    from concurrent.futures import ThreadPoolExecutor

    other = start_another_web(system)
    web2 = system.processes["web2"].popen
    with system.api() as api:
        submitted = submit(api, system)
        job_id = submitted.json()["id"]
        held = {"If-None-Match": submitted.headers["ETag"], "Prefer": "wait=25"}
        with api.get(f"{other}/v1/jobs/{job_id}/stream", stream=True, timeout=40) as stream:
            first = next(events(stream))
            with ThreadPoolExecutor(1) as pool:
                polled = pool.submit(api.get, f"{other}/v1/jobs/{job_id}", headers=held, timeout=40)
                time.sleep(0.5)  # let the long poll be held
                web2.send_signal(signal.SIGTERM)
                rest = list(events(stream))  # returns when the server ends the stream
                answer = polled.result(timeout=40)
    assert json.loads(first["data"])["id"] == job_id
    assert all(json.loads(one["data"])["id"] == job_id for one in rest)
    assert answer.status_code in (200, 304)
    assert web2.wait(timeout=30) == 0


@pytest.mark.postgres_only
def test_a_settled_job_changed_while_the_listeners_were_cut_is_never_answered_from_memory(
    database: str, system: RunningSystem
) -> None:
    """The web processes remember the settled job (its 304 and its 200: http/poll_cache.py).
    Their listening connections are cut and the job is purged straight in the database before
    they listen again: no NOTIFY of it ever reaches them. Once they listen again, every poll
    answers the purged job from the database, never the remembered answer."""
    libpq = make_url(database).set(drivername="postgresql").render_as_string(hide_password=False)
    listeners = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
        " 'webhook-service:web-listen' AND datname = current_database()"
    )
    with system.api() as api, psycopg.connect(libpq, autocommit=True) as admin:
        submitted = submit(api, system)
        url = f"{system.web_url}{submitted.headers['Location']}"
        for _ in range(200):
            settled = api.get(url, timeout=10)
            if settled.json()["status"] == "completed":
                break
            time.sleep(0.05)
        assert settled.json()["status"] == "completed"
        old = settled.headers["ETag"]
        # Each web process started listening with the process; each remembers the job.
        for _ in range(20):
            assert api.get(url, headers={"If-None-Match": old}, timeout=10).status_code == 304
            assert api.get(url, timeout=10).json()["outcome"] is not None
        running = admin.execute(listeners).fetchone()
        assert running is not None
        assert running[0] == 2
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name ="
            " 'webhook-service:web-listen' AND datname = current_database()"
        )
        admin.execute(
            "UPDATE jobs SET purged_at = now(), outcome_enc = NULL WHERE id = %s",
            (submitted.json()["id"],),
        )
        for _ in range(200):
            back = admin.execute(listeners).fetchone()
            if back is not None and back[0] == 2:
                break
            time.sleep(0.05)
        for _ in range(20):
            answer = api.get(url, headers={"If-None-Match": old}, timeout=10)
            assert answer.status_code == 200
            assert answer.json()["purged_at"] is not None
            assert api.get(url, timeout=10).json()["outcome"] is None
