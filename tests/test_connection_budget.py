"""The database connection budget: against a PostgreSQL role capped with CONNECTION LIMIT,
as small hosted plans are, running out of connections is a quick 503 and never lasting."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
import pytest
from flask import Flask
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from tests.conftest import BearerClient, make_settings, new_token
from tests.processes import capped_postgres_database
from webhook_service import create_app
from webhook_service.db import make_engine, make_session_factory
from webhook_service.migrations import upgrade

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
