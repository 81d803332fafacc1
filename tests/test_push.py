"""Push in one process: the long poll and server-sent events, woken by the record of changes."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, update
from sqlalchemy.engine import make_url

from tests.conftest import event
from tests.test_lifecycle_http import NOTE, accept_note, submit
from webhook_service.db import transaction
from webhook_service.http.push import requested_wait
from webhook_service.models import Job
from webhook_service.wakeups import Wakeups


def wait_header(seconds: int) -> dict[str, str]:
    return {"Prefer": f"wait={seconds}"}


def read_events(response: Any, count: int) -> list[dict[str, str]]:
    """The first `count` events (`id`, `event`, `data`) of an event stream; comments skipped."""
    events: list[dict[str, str]] = []
    buffer = ""
    chunks = iter(response.response)
    while len(events) < count:
        buffer += next(chunks).decode("utf-8")
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(
                line.split(": ", 1) for line in block.split("\n") if line and line[0] != ":"
            )
            if "event" in fields:
                events.append(fields)
    return events


def read_to_end(response: Any) -> list[dict[str, str]]:
    text_ = b"".join(response.response).decode("utf-8")
    out = []
    for block in text_.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and line[0] != ":")
        if "event" in fields:
            out.append(fields)
    return out


# --- Prefer: wait -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "applied"),
    [
        ("wait=10", 10),
        ("wait=1", 1),
        ("wait=100", 25),
        ("respond-async, wait=7", 7),
        ('wait="3"', 3),
        ("wait=0", None),
        ("wait=abc", None),
        ("handling=lenient", None),
        ("", None),
    ],
)
def test_prefer_wait_is_read_and_clamped_to_25_seconds(header, applied):
    assert requested_wait(header) == applied


def test_a_long_poll_on_an_unchanged_job_is_304_after_the_wait_with_preference_applied(
    client: FlaskClient,
):
    location = submit(client, "/v1/notes", NOTE)["id"]
    first = client.get(f"/v1/jobs/{location}")
    held = client.get(
        f"/v1/jobs/{location}", headers={"If-None-Match": first.headers["ETag"], **wait_header(1)}
    )
    assert held.status_code == 304
    assert held.headers["Preference-Applied"] == "wait=1"
    assert held.headers["ETag"] == first.headers["ETag"]


def test_a_long_poll_with_an_old_etag_answers_at_once_with_the_job(client, sessions, clock):
    job_id = submit(client, "/v1/notes", NOTE)["id"]
    old = client.get(f"/v1/jobs/{job_id}").headers["ETag"]
    with transaction(sessions) as session:
        session.execute(update(Job).values(status="failed", finished_at=clock()))
    answer = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": old, **wait_header(25)})
    assert answer.status_code == 200
    assert answer.json["status"] == "failed"
    assert answer.headers["Preference-Applied"] == "wait=25"


def test_without_prefer_or_without_an_etag_a_poll_is_answered_as_before(client):
    job_id = submit(client, "/v1/notes", NOTE)["id"]
    plain = client.get(f"/v1/jobs/{job_id}")
    assert plain.status_code == 200
    assert "Preference-Applied" not in plain.headers
    no_etag = client.get(f"/v1/jobs/{job_id}", headers=wait_header(25))
    assert no_etag.status_code == 200, "nothing to wait for: the caller has no version"
    assert "Preference-Applied" not in no_etag.headers


def test_a_long_poll_for_an_unknown_job_is_404(client):
    missing = client.get(
        f"/v1/jobs/{uuid.uuid4()}", headers={"If-None-Match": 'W/"x"', **wait_header(5)}
    )
    assert missing.status_code == 404
    assert missing.content_type == "application/problem+json"


def test_a_long_poll_is_answered_by_the_webhook_that_settles_the_job(
    app: Flask, client, worker, cobalt, post_webhook
):
    accept_note(cobalt)
    job_id = submit(client, "/v1/notes", NOTE)["id"]
    worker.run_once()
    etag = client.get(f"/v1/jobs/{job_id}").headers["ETag"]
    started = threading.Event()

    def long_poll() -> Any:
        own = app.test_client()
        started.set()
        return own.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag, **wait_header(25)})

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(long_poll)
        started.wait(5)
        _until_waiting(app, 1)
        assert post_webhook(event("note.created", appointment_id="728948")).status_code == 200
        answer = waiting.result(timeout=60)
    # Not woken, it would have been a 304 after 25 s.
    assert answer.status_code == 200
    assert answer.json["status"] == "completed"
    assert answer.headers["ETag"] != etag


def _until_waiting(app: Flask, count: int) -> None:
    hub: Wakeups = app.extensions["webhook_service"]["wakeups"]
    for _ in range(2000):
        if hub.waiting() >= count:
            return
        threading.Event().wait(0.005)
    raise AssertionError("no waiter registered")


# --- Server-sent events -----------------------------------------------------------------------


def test_a_job_stream_sends_the_job_then_its_outcome_and_ends(
    app: Flask, client, worker, cobalt, post_webhook
):
    accept_note(cobalt)
    job_id = submit(client, "/v1/notes", NOTE)["id"]
    worker.run_once()
    stream = client.get(f"/v1/jobs/{job_id}/stream", buffered=False)
    assert stream.status_code == 200
    assert stream.mimetype == "text/event-stream"
    [first] = read_events(stream, 1)
    assert json.loads(first["data"])["status"] == "processing"
    assert first["id"] == client.get(f"/v1/jobs/{job_id}").headers["ETag"][3:-1]
    post_webhook(event("note.created", appointment_id="728948"))
    rest = read_to_end(stream)  # ends by itself after the terminal status
    assert [json.loads(e["data"])["status"] for e in rest] == ["completed"]
    assert rest[0]["event"] == "job"


def test_a_job_stream_resumed_with_last_event_id_sends_only_what_came_after(
    client, sessions, clock
):
    job_id = submit(client, "/v1/notes", NOTE)["id"]
    stream = client.get(f"/v1/jobs/{job_id}/stream", buffered=False)
    [first] = read_events(stream, 1)
    stream.close()
    with transaction(sessions) as session:
        session.execute(update(Job).values(attention_code="no_outcome", attention_since=clock()))
    with transaction(sessions) as session:
        session.execute(
            update(Job).values(status="completed", finished_at=clock(), attention_code=None)
        )
    resumed = client.get(
        f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": first["id"]}, buffered=False
    )
    seen = [json.loads(e["data"]) for e in read_to_end(resumed)]
    assert [(j["status"], (j["attention"] or {}).get("code")) for j in seen] == [
        ("processing", "no_outcome"),
        ("completed", None),
    ]


def test_a_stream_of_a_settled_job_sends_it_once_and_ends(client, sessions, clock):
    job_id = submit(client, "/v1/notes", NOTE)["id"]
    with transaction(sessions) as session:
        session.execute(update(Job).values(status="failed", finished_at=clock()))
    events = read_to_end(client.get(f"/v1/jobs/{job_id}/stream", buffered=False))
    assert [json.loads(e["data"])["status"] for e in events] == ["failed"]


def test_streams_of_unknown_or_other_clients_jobs_are_404(client, app, sessions):
    assert client.get(f"/v1/jobs/{uuid.uuid4()}/stream").status_code == 404
    assert client.get("/v1/jobs/not-a-uuid/stream").status_code == 404


def test_the_client_stream_sends_each_change_of_its_jobs_with_a_resumable_id(
    app: Flask, client, sessions, clock
):
    app.config["STREAM_COMMENT_SECONDS"] = 0.2
    stream = client.get("/v1/stream", buffered=False)
    assert stream.status_code == 200
    first = submit(client, "/v1/notes", NOTE)["id"]
    second = submit(client, "/v1/notes", {**NOTE, "appointment_id": "9"})["id"]
    with transaction(sessions) as session:
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(first))
            .values(status="failed", finished_at=clock())
        )
    events = read_events(stream, 3)
    stream.close()
    got = [(json.loads(e["data"])["id"], json.loads(e["data"])["status"]) for e in events]
    assert got == [(first, "processing"), (second, "processing"), (first, "failed")]
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids)

    resumed = client.get("/v1/stream", headers={"Last-Event-ID": events[0]["id"]}, buffered=False)
    again = read_events(resumed, 2)
    resumed.close()
    assert [e["id"] for e in again] == [e["id"] for e in events[1:]]


# --- Wake-ups across the listening connection's loss -------------------------------------------


@pytest.mark.postgres_only
def test_a_change_committed_while_the_listener_is_cut_still_wakes_the_waiter(
    engine: Engine, client, sessions, clock
):
    """The listening connection is killed (pg_terminate_backend): its waiters are woken to
    re-check, and woken again once it listens again, so nothing is missed."""
    job_id = submit(client, "/v1/notes", NOTE)["id"]
    hub = Wakeups(engine, heartbeat=0.2)
    try:
        with hub.watch(job_id=uuid.UUID(job_id)) as watch:
            assert hub.listening
            _terminate_listeners(engine)
            with transaction(sessions) as session:
                session.execute(update(Job).values(status="failed", finished_at=clock()))
            assert watch.wait(10), "woken to re-check"
            for _ in range(200):
                if hub.reconnects and hub.listening:
                    break
                watch.wait(0.05)
            assert hub.reconnects >= 1
            assert hub.listening, "listening again"
            # And a change after the reconnect arrives as a notification.
            watch.wait(0)
            with transaction(sessions) as session:
                session.execute(update(Job).values(status="completed", finished_at=clock()))
            assert watch.wait(10)
    finally:
        hub.stop()


def _terminate_listeners(engine: Engine) -> None:
    url = make_url(engine.url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'webhook-service:web-listen' AND datname = current_database()"
        ).fetchall()
    assert killed


@pytest.mark.sqlite_only
def test_sqlite_waiters_are_woken_by_the_process_wide_poll_of_the_table(
    engine: Engine, client, sessions, clock
):
    job_id = submit(client, "/v1/notes", NOTE)["id"]
    hub = Wakeups(engine, fallback_interval=0.05)
    try:
        with hub.watch(job_id=uuid.UUID(job_id)) as watch:
            watch.wait(1)  # the first poll wakes everyone once, to re-check
            with transaction(sessions) as session:
                session.execute(update(Job).values(status="failed", finished_at=clock()))
            assert watch.wait(10)
    finally:
        hub.stop()
