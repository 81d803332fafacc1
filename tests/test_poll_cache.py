"""Polls answered from a web process's memory (PostgreSQL): a 304, and a settled job's 200,
without the database while the listener vouches nothing changed; a change (notified, or
missed with a cut connection) is answered from the database again."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, event, update

from tests.test_lifecycle_http import NOTE, submit
from tests.test_push import _terminate_listeners
from webhook_service.db import transaction
from webhook_service.http.poll_cache import Entry, PollCache
from webhook_service.models import Job
from webhook_service.wakeups import FRESH_SECONDS, Wakeups

TRIES, PAUSE = 100, 0.05  # a bounded number of polls, a twentieth of a second apart


@pytest.fixture
def pg_app(app: Flask, is_postgres: bool) -> Flask:
    """The app on PostgreSQL (tests using it are `postgres_only`: SQLite has no listener, so
    every poll reads the database, as before)."""
    assert is_postgres
    hub: Wakeups = app.extensions["webhook_service"]["wakeups"]
    hub.start()
    for _ in range(TRIES):
        if hub.fresh_epoch() is not None:
            break
        time.sleep(PAUSE)
    assert hub.fresh_epoch() is not None
    return app


@contextmanager
def counted(app: Flask) -> Iterator[list[str]]:
    """The statements the app's engine runs in the block."""
    statements: list[str] = []
    engine: Engine = app.extensions["webhook_service"]["engine"]

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def poll(client: FlaskClient, job_id: str, etag: str | None = None) -> Any:
    headers = {"If-None-Match": etag} if etag else {}
    return client.get(f"/v1/jobs/{job_id}", headers=headers)


def until_from_memory(app: Flask, client: FlaskClient, job_id: str, etag: str | None) -> Any:
    """Poll until one is answered without a statement (the first fills the cache)."""
    for _ in range(TRIES):
        with counted(app) as statements:
            response = poll(client, job_id, etag)
        if not statements:
            return response
        time.sleep(PAUSE)
    pytest.fail("no poll was answered from memory")


def until_changed(client: FlaskClient, job_id: str, old: str) -> Any:
    for _ in range(TRIES):
        response = poll(client, job_id, old)
        if response.status_code == 200:
            return response
        assert response.status_code == 304
        time.sleep(PAUSE)
    pytest.fail("the change was never answered: a stale 304 was kept")


def settle(sessions: Any, job_id: str, clock: Any, status: str = "completed") -> None:
    with transaction(sessions) as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        job.status = status
        job.outcome = {"note_id": "n_1", "text": "PHI"}
        job.finished_at = clock()


@pytest.mark.postgres_only
def test_a_poll_304_is_answered_without_the_database(pg_app: Flask, client: FlaskClient):
    job = submit(client, "/v1/notes", NOTE)
    etag = poll(client, job["id"]).headers["ETag"]
    response = until_from_memory(pg_app, client, job["id"], etag)
    assert response.status_code == 304
    assert response.headers["ETag"] == etag
    assert response.headers["Cache-Control"] == "no-store"
    assert "Retry-After" in response.headers  # still processing


@pytest.mark.postgres_only
def test_another_front_ends_poll_is_not_answered_from_memory(
    pg_app: Flask, client: FlaskClient, sessions: Any
):
    from tests.conftest import new_token

    job = submit(client, "/v1/notes", NOTE)
    etag = poll(client, job["id"]).headers["ETag"]
    until_from_memory(pg_app, client, job["id"], etag)
    other = pg_app.test_client(token=new_token(sessions, "frontend-b", "frontend"))
    assert poll(other, job["id"], etag).status_code == 404


@pytest.mark.postgres_only
def test_a_notified_change_is_answered_200_with_the_new_etag(
    pg_app: Flask, client: FlaskClient, sessions: Any, clock: Any
):
    hub: Wakeups = pg_app.extensions["webhook_service"]["wakeups"]
    job = submit(client, "/v1/notes", NOTE)
    old = poll(client, job["id"]).headers["ETag"]
    until_from_memory(pg_app, client, job["id"], old)
    epoch = hub.fresh_epoch()
    settle(sessions, job["id"], clock, status="failed")  # another connection commits
    response = until_changed(client, job["id"], old)
    assert response.headers["ETag"] != old
    assert response.json["status"] == "failed"
    # The NOTIFY evicted it: the listener never dropped.
    assert hub.fresh_epoch() == epoch


@pytest.mark.postgres_only
def test_a_change_missed_with_a_cut_listener_is_not_answered_304_from_memory(
    pg_app: Flask, client: FlaskClient, sessions: Any, clock: Any, engine: Engine
):
    """The listening connection is cut, then the job changes: its NOTIFY never reaches this
    process. The entry was vouched for by the old connection only, so the poll asks the
    database."""
    hub: Wakeups = pg_app.extensions["webhook_service"]["wakeups"]
    job = submit(client, "/v1/notes", NOTE)
    old = poll(client, job["id"]).headers["ETag"]
    until_from_memory(pg_app, client, job["id"], old)
    epoch = hub.fresh_epoch()
    _terminate_listeners(engine)
    settle(sessions, job["id"], clock, status="failed")
    # Polled only once a new connection listens and pings (it never heard of the change).
    for _ in range(TRIES):
        if hub.fresh_epoch() not in (None, epoch):
            break
        time.sleep(PAUSE)
    assert hub.fresh_epoch() not in (None, epoch)
    response = poll(client, job["id"], old)
    assert response.status_code == 200
    assert response.json["status"] == "failed"
    assert hub.fresh_epoch() != epoch
    # And from then on, never the old ETag's 304.
    for _ in range(5):
        assert poll(client, job["id"], old).status_code == 200


@pytest.mark.postgres_only
def test_an_entry_is_not_trusted_once_the_listener_has_been_silent_a_second(engine: Engine):
    """A connection can die without a word: past FRESH_SECONDS since its last ping answered,
    nothing it vouched for is served (fake clock; the listener pings only at the start)."""
    now = [1000.0]
    hub = Wakeups(engine, heartbeat=60, clock=lambda: now[0])
    cache = PollCache(hub)
    job_id = uuid.uuid4()
    try:
        hub.start()
        for _ in range(TRIES):
            if hub.fresh_epoch() is not None:
                break
            time.sleep(PAUSE)
        ticket = cache.ticket()
        assert ticket is not None
        cache.put(job_id, ticket, Entry("etag", 1, ticket.epoch, None, "processing"))
        assert cache.get(job_id) is not None
        now[0] += FRESH_SECONDS - 0.01
        assert cache.get(job_id) is not None
        now[0] += 0.01
        assert cache.get(job_id) is None
        assert cache.ticket() is None  # nor is a new read remembered
    finally:
        hub.stop()


@pytest.mark.postgres_only
def test_a_read_that_began_before_a_change_is_not_remembered(engine: Engine):
    hub = Wakeups(engine)
    cache = PollCache(hub)
    job_id = uuid.uuid4()
    try:
        hub.start()
        for _ in range(TRIES):
            if hub.fresh_epoch() is not None:
                break
            time.sleep(PAUSE)
        ticket = cache.ticket()
        assert ticket is not None
        cache.evict(job_id)  # its NOTIFY arrives while the read is under way
        cache.put(job_id, ticket, Entry("old", 1, ticket.epoch, None, "processing"))
        assert cache.get(job_id) is None
    finally:
        hub.stop()


@pytest.mark.postgres_only
def test_a_settled_jobs_200_from_memory_is_the_one_the_database_renders(
    pg_app: Flask, client: FlaskClient, sessions: Any, clock: Any
):
    job = submit(client, "/v1/notes", NOTE)
    settle(sessions, job["id"], clock)
    from_database = poll(client, job["id"])
    assert from_database.status_code == 200
    from_memory = until_from_memory(pg_app, client, job["id"], None)
    assert from_memory.status_code == 200
    assert from_memory.get_data() == from_database.get_data()
    # Every header but the request's own id.
    headers = [dict(r.headers) for r in (from_memory, from_database)]
    assert headers[0].pop("X-Request-ID") != headers[1].pop("X-Request-ID")
    assert headers[0] == headers[1]
    assert from_memory.json["outcome"] == {"note_id": "n_1", "text": "PHI"}


@pytest.mark.postgres_only
def test_a_purge_evicts_a_settled_jobs_kept_answer(
    pg_app: Flask, client: FlaskClient, sessions: Any, clock: Any
):
    job = submit(client, "/v1/notes", NOTE)
    settle(sessions, job["id"], clock)
    kept = until_from_memory(pg_app, client, job["id"], None)
    with transaction(sessions) as session:
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(job["id"]))
            .values(purged_at=clock(), outcome=None)
        )
    response = until_changed(client, job["id"], kept.headers["ETag"])
    assert response.json["outcome"] is None
    assert response.json["purged_at"] is not None


@pytest.mark.sqlite_only
def test_on_sqlite_every_poll_reads_the_database(app: Flask, client: FlaskClient):
    assert app.extensions["webhook_service"]["poll_cache"] is None
    job = submit(client, "/v1/notes", NOTE)
    etag = poll(client, job["id"]).headers["ETag"]
    for _ in range(3):
        with counted(app) as statements:
            assert poll(client, job["id"], etag).status_code == 304
        assert statements
