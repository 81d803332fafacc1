"""Abuse limits: the per-client submission rate and the backlog cap, on both databases."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, update

from tests.conftest import BearerClient, FakeClock, make_settings, new_token
from webhook_service.db import SessionFactory, transaction
from webhook_service.http import create_app
from webhook_service.models import Job
from webhook_service.services.limits import Window, bump

PROBLEM = "application/problem+json"
NOTES = "/v1/notes"
NOTE = {"appointment_id": "728948", "note": "S: cough\nO: clear\nA: viral URI\nP: rest"}


@pytest.fixture
def make_app(
    database_url: str, sessions: SessionFactory, clock: FakeClock
) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        app = create_app(make_settings(database_url, **overrides))
        app.extensions["webhook_service"]["clock"] = clock
        app.config["TESTING"] = True
        app.test_client_class = BearerClient
        app.config["TEST_TOKEN"] = new_token(sessions, f"frontend-{len(apps)}", "frontend")
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["webhook_service"]["engine"].dispose()


def _limited(app: Flask, response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body: dict[str, Any] = response.get_json()
    assert body["status"] == status
    return body


def test_submissions_over_the_rate_get_429_until_the_minute_ends(
    make_app: Callable[..., Flask], clock: FakeClock, count_rows: Callable[[str], int]
) -> None:
    client = make_app(RATE_LIMIT_SUBMISSIONS_PER_MINUTE=3, BACKLOG_MAX_JOBS=0).test_client()
    clock.advance(seconds=15)
    for _ in range(3):
        assert client.post(NOTES, json=NOTE).status_code == 202

    refused = client.post(NOTES, json=NOTE)
    body = _limited(client.application, refused, 429)
    assert body["type"].endswith("/rate-limited")
    assert "3 jobs a minute" in body["detail"]
    assert refused.headers["Retry-After"] == "45"
    assert count_rows("jobs") == 3  # a refused submission writes nothing

    clock.advance(seconds=40)
    assert client.post(NOTES, json=NOTE).headers["Retry-After"] == "5"
    clock.advance(seconds=5)  # the next minute
    assert client.post(NOTES, json=NOTE).status_code == 202
    assert count_rows("jobs") == 4


def test_the_rate_is_counted_per_client(
    make_app: Callable[..., Flask], sessions: SessionFactory
) -> None:
    app = make_app(RATE_LIMIT_SUBMISSIONS_PER_MINUTE=1)
    first, second = app.test_client(), app.test_client(token=new_token(sessions, "b", "frontend"))
    assert first.post(NOTES, json=NOTE).status_code == 202
    assert first.post(NOTES, json=NOTE).status_code == 429
    assert second.post(NOTES, json=NOTE).status_code == 202


def test_submissions_with_an_idempotency_key_are_counted_too(
    make_app: Callable[..., Flask],
) -> None:
    client = make_app(RATE_LIMIT_SUBMISSIONS_PER_MINUTE=1).test_client()
    assert client.post(NOTES, json=NOTE, headers={"Idempotency-Key": "a"}).status_code == 202
    refused = client.post(NOTES, json=NOTE, headers={"Idempotency-Key": "b"})
    _limited(client.application, refused, 429)


def test_the_counter_is_shared_by_every_app_on_the_database(
    make_app: Callable[..., Flask],
) -> None:
    # Two apps stand for two web processes: nothing of the count lives in either.
    one = make_app(RATE_LIMIT_SUBMISSIONS_PER_MINUTE=2)
    other = make_app(RATE_LIMIT_SUBMISSIONS_PER_MINUTE=2)
    token = one.config["TEST_TOKEN"]
    assert one.test_client().post(NOTES, json=NOTE).status_code == 202
    assert other.test_client(token=token).post(NOTES, json=NOTE).status_code == 202
    assert other.test_client(token=token).post(NOTES, json=NOTE).status_code == 429
    assert one.test_client().post(NOTES, json=NOTE).status_code == 429


def test_zero_turns_the_rate_limit_off(make_app: Callable[..., Flask]) -> None:
    client = make_app(RATE_LIMIT_SUBMISSIONS_PER_MINUTE=0).test_client()
    assert all(client.post(NOTES, json=NOTE).status_code == 202 for _ in range(5))


def test_a_counter_restarts_in_a_new_window(sessions: SessionFactory, clock: FakeClock) -> None:
    window = Window.at(clock(), 60)
    with transaction(sessions) as session:
        assert [bump(session.connection(), "k", window) for _ in range(3)] == [1, 2, 3]
    later = Window.at(clock.advance(seconds=60), 60)
    with transaction(sessions) as session:
        assert bump(session.connection(), "k", later) == 1
        assert bump(session.connection(), "other", later) == 1


def test_a_full_backlog_answers_503_until_the_worker_drains_it(
    make_app: Callable[..., Flask], clock: FakeClock, sessions: SessionFactory
) -> None:
    client = make_app(BACKLOG_MAX_JOBS=2).test_client()
    assert client.post(NOTES, json=NOTE).status_code == 202
    clock.advance(seconds=1)
    assert client.post(NOTES, json=NOTE).status_code == 202
    clock.advance(seconds=1)

    refused = client.post(NOTES, json=NOTE)
    body = _limited(client.application, refused, 503)
    assert body["type"].endswith("/backlog-full")
    assert refused.headers["Retry-After"] == "10"

    with transaction(sessions) as session:  # the worker sent one
        session.execute(
            update(Job)
            .values(submission_state="accepted")
            .where(Job.id.in_(select(Job.id).limit(1).scalar_subquery()))
        )
    clock.advance(seconds=1)
    assert client.post(NOTES, json=NOTE).status_code == 202


def test_the_backlog_is_counted_at_most_once_a_second_per_process(
    make_app: Callable[..., Flask], clock: FakeClock
) -> None:
    client = make_app(BACKLOG_MAX_JOBS=1).test_client()
    assert client.post(NOTES, json=NOTE).status_code == 202
    # Counted (0 waiting) a moment ago: the cap lets this one past ...
    assert client.post(NOTES, json=NOTE).status_code == 202
    clock.advance(seconds=1)
    # ... and the next second's count sees both.
    assert client.post(NOTES, json=NOTE).status_code == 503


@pytest.mark.parametrize("path", [NOTES, "/webhooks/cobalt"])
@pytest.mark.parametrize("chunked", [True, False])
def test_a_body_over_max_body_bytes_is_413_chunked_or_not(
    make_app: Callable[..., Flask], path: str, chunked: bool
) -> None:
    client = make_app(MAX_BODY_BYTES=100).test_client()
    body = b'{"note": "' + b"x" * 200 + b'"}'
    if chunked:
        # As gunicorn hands over a chunked body: no Content-Length, the stream terminated.
        answer = client.post(
            path,
            input_stream=io.BytesIO(body),
            headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
            environ_overrides={"wsgi.input_terminated": True},
        )
    else:
        answer = client.post(path, data=body, content_type="application/json")
    problem = _limited(client.application, answer, 413)
    assert problem["detail"] == "The body is larger than 100 bytes."


def test_a_chunked_body_of_exactly_max_body_bytes_is_read_whole(
    make_app: Callable[..., Flask],
) -> None:
    body = json.dumps(NOTE).encode()
    client = make_app(MAX_BODY_BYTES=len(body)).test_client()
    answer = client.post(
        NOTES,
        input_stream=io.BytesIO(body),
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert answer.status_code == 202, answer.get_data(as_text=True)
