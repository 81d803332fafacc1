"""Shared fixtures: real databases (SQLite file and PostgreSQL), built by migrating.

PostgreSQL comes from TEST_DATABASE_URL, else from a throwaway cluster started with the local
`pg_ctl` (pytest-postgresql). With neither, PostgreSQL tests are skipped loudly, and under CI
(`CI` set) the run fails instead: a green CI must have exercised PostgreSQL.
"""

from __future__ import annotations

import glob
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import responses
from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, delete, text

from tests.processes import throwaway_postgres_database
from webhook_service import phi
from webhook_service.cobalt import CobaltClient
from webhook_service.db import SessionFactory, make_engine, make_session_factory, transaction
from webhook_service.http import create_app
from webhook_service.migrations import upgrade
from webhook_service.models import Base
from webhook_service.schemas import TelephoneEncounterRequest
from webhook_service.services import default_clinic, submit_job
from webhook_service.settings import Settings
from webhook_service.signatures import compact_json, compute_signature
from webhook_service.worker import Worker

PHI_KEY = Fernet.generate_key().decode()
PHI_SEARCH_KEY = "test-search-key"
phi.configure(phi.PhiKeys((PHI_KEY,), PHI_SEARCH_KEY))

WEBHOOK_SECRET = "whsec_test_current"
OLD_WEBHOOK_SECRET = "whsec_test_previous"
COBALT = "https://cobalt.test/v1"
ACCESS_TOKEN = "at_test_clinic"
START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


# --- PostgreSQL server -----------------------------------------------------------------------


def _pg_ctl() -> str | None:
    found = shutil.which("pg_ctl") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)), None
    )
    return found


@pytest.fixture(scope="session")
def postgres_server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL to a PostgreSQL server's maintenance database."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    pg_ctl = _pg_ctl()
    if pg_ctl and os.geteuid() != 0:
        from pytest_postgresql.executors import PostgreSQLExecutor

        tmp = request.getfixturevalue("tmp_path_factory").mktemp("pg")
        executor = PostgreSQLExecutor(
            executable=pg_ctl,
            host="127.0.0.1",
            port=_free_port(),
            user="postgres",
            options="",
            datadir=str(tmp / "data"),
            unixsocketdir=str(tmp),
            logfile=str(tmp / "postgresql.log"),
            startparams="-w",
            dbname="postgres",
        )
        with executor:
            executor.wait_for_postgres()
            yield f"postgresql://postgres@127.0.0.1:{executor.port}/postgres"
        return
    message = (
        "PostgreSQL tests cannot run: set TEST_DATABASE_URL or install PostgreSQL "
        "(pg_ctl) and run as a non-root user"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh database on the server, migrated to head, dropped at the end."""
    with throwaway_postgres_database(postgres_server_url, "test") as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'test.sqlite3'}"
    upgrade(url)
    return url


# --- The database under test: every data-layer test runs on both -------------------------

# A test marked `postgres_only` or `sqlite_only` that is parametrised by the database (through
# `database_url` or an end-to-end module's `database`) runs for that database alone: the
# other variant is deselected at collection, not skipped at run time, so a skip in the
# report always means something could not run here.
_ONLY = {"postgres_only": "postgresql", "sqlite_only": "sqlite"}


@pytest.hookimpl(trylast=True)  # after pytest groups the tests by their fixtures' parameters
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _deselect_other_database(config, items)
    # The tests that take seconds (real processes, the fuzzer) first: spread over the workers
    # of a parallel run (`make test`: pytest-xdist) from the start, so the quick ones fill in
    # around them and all the workers finish together. Stable: the same order in every worker.
    items.sort(
        key=lambda item: (
            0 if item.get_closest_marker("e2e") or item.get_closest_marker("slow") else 1
        )
    )


def _deselect_other_database(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        params = getattr(item, "callspec", None)
        which = (
            None
            if params is None
            else params.params.get("database_url", params.params.get("database"))
        )
        wanted = {_ONLY[m.name] for m in item.iter_markers() if m.name in _ONLY}
        (dropped if which is not None and wanted and which not in wanted else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> Iterator[SessionFactory]:
    """A session factory on the migrated database; every row is deleted after the test."""
    yield make_session_factory(engine)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))


@pytest.fixture
def is_postgres(database_url: str) -> bool:
    return database_url.startswith("postgresql")


# --- Clock ------------------------------------------------------------------------------------


@dataclass
class FakeClock:
    """The only clock tests use: time moves when the test says so."""

    now: datetime = START
    calls: list[datetime] = field(default_factory=list)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# --- App, client, worker ----------------------------------------------------------------------


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "WEBHOOK_SERVICE_ENV": "test",
        "DATABASE_URL": database_url,
        "COBALT_API_URL": COBALT,
        "COBALT_CLIENT_ID": "ci_test",
        "COBALT_CLIENT_SECRET": "cs_test",
        "COBALT_ACCESS_TOKEN": ACCESS_TOKEN,
        "COBALT_WEBHOOK_SECRETS": f"{WEBHOOK_SECRET},{OLD_WEBHOOK_SECRET}",
        "LOG_LEVEL": "DEBUG",
        "SUBMIT_MAX_ATTEMPTS": 4,
        "PHI_ENCRYPTION_KEYS": PHI_KEY,
        "PHI_SEARCH_KEY": PHI_SEARCH_KEY,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def cli_env(database_url: str) -> dict[str, str]:
    """The environment a `webhook-service` command needs to reach the test database."""
    return {
        "DATABASE_URL": database_url,
        "PHI_ENCRYPTION_KEYS": PHI_KEY,
        "PHI_SEARCH_KEY": PHI_SEARCH_KEY,
        "WEBHOOK_SERVICE_ENV": "test",
    }


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


class BearerClient(FlaskClient):
    """A test client that sends the app's test front-end token unless told otherwise."""

    def __init__(self, *args: Any, token: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        token = token if token is not None else self.application.config.get("TEST_TOKEN")
        if token:
            self.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"


def new_token(sessions: SessionFactory, name: str, role: str) -> str:
    """Create an API client directly through the service and return its token."""
    from webhook_service.db import transaction
    from webhook_service.services import create_client

    with transaction(sessions) as session:
        _, token = create_client(session, name=name, role=role, clinic_id=None, now=START)
    return token


@pytest.fixture
def app(settings: Settings, sessions: SessionFactory, clock: FakeClock) -> Iterator[Flask]:
    app = create_app(settings)
    app.extensions["webhook_service"]["clock"] = clock
    app.config["TESTING"] = True
    app.test_client_class = BearerClient
    app.config["TEST_TOKEN"] = new_token(sessions, "frontend-a", "frontend")
    yield app
    app.extensions["webhook_service"]["wakeups"].stop()
    app.extensions["webhook_service"]["engine"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A front-end client (role `frontend`), authenticated."""
    return app.test_client()


@pytest.fixture
def support(app: Flask, sessions: SessionFactory) -> FlaskClient:
    """A support staff client (role `support`), authenticated."""
    return app.test_client(token=new_token(sessions, "support-1", "support"))


@pytest.fixture
def cobalt() -> Iterator[responses.RequestsMock]:
    """Stubbed Cobalt for unit tests: every call must be registered by the test."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(
            responses.GET,
            f"{COBALT}/settings",
            json={"success": True, "access_token_reference_id": "atr_clinic_1"},
        )
        yield mock


@pytest.fixture
def worker(settings: Settings, sessions: SessionFactory, clock: FakeClock) -> Worker:
    client = CobaltClient(COBALT, "ci_test", "cs_test", connect_timeout=1, read_timeout=1)
    return Worker(settings, sessions, client, clock=clock, jitter=lambda: 0.0)


# --- Webhooks ---------------------------------------------------------------------------------


def sign(payload: Any, secret: str = WEBHOOK_SECRET) -> tuple[bytes, str]:
    body = compact_json(payload)
    return body, compute_signature(secret, body)


@pytest.fixture
def post_webhook(client: FlaskClient) -> Callable[..., Any]:
    """POST a Cobalt-signed delivery the way Cobalt does."""
    counter = iter(range(1, 1_000_000))

    def post(
        payload: Any,
        *,
        secret: str = WEBHOOK_SECRET,
        webhook_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        body, signature = sign(payload, secret)
        sent = {
            "content-type": "application/json",
            "cobalt-verification": signature,
            "webhook-id": webhook_id or f"msg_{next(counter)}_{uuid.uuid4().hex[:6]}",
            "webhook-timestamp": "2026-11-23T12:00:05Z",
            "webhook-attempt": "1",
        }
        sent.update(headers or {})
        return client.post("/webhooks/cobalt", data=body, headers=sent)

    return post


def event(
    type_: str,
    *,
    job_id: str | None = None,
    reference: str | None = "atr_clinic_1",
    **data: Any,
) -> dict[str, Any]:
    """A Cobalt operation event envelope."""
    payload: dict[str, Any] = {
        "id": f"evt_{uuid.uuid4().hex[:12]}",
        "object": "event",
        "created": "2026-11-23T12:00:04Z",
        "type": type_,
        "data": data,
    }
    if job_id is not None:
        payload["job_id"] = job_id
    if reference is not None:
        payload["access_token_reference_id"] = reference
    return payload


@pytest.fixture
def count_rows(engine: Engine) -> Callable[[str], int]:
    def count(table: str) -> int:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608

    return count


# --- Browser tests --------------------------------------------------------------------------

# Debian's Chromium, driven by Playwright (Playwright's own browser download is never used).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> Path:
    """Chromium's path; skipped without it on a laptop, a failure under CI."""
    if not CHROMIUM.exists():
        message = (
            f"{CHROMIUM} is missing: install Debian's Chromium "
            "(`apt-get install -y chromium`) to run the browser test"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


def pending_encounter(
    sessions: SessionFactory, settings: Settings, body: dict[str, Any]
) -> uuid.UUID:
    """Store a telephone encounter for the default clinic, waiting for the worker; the clinic's
    reference id is already known, so the worker has nothing to ask Cobalt but the write."""
    now = datetime.now(UTC)
    with transaction(sessions) as session:
        clinic = default_clinic(session, settings, now)
        clinic.access_token_reference_id = "atr_clinic_1"
        job, _ = submit_job(
            session,
            request=TelephoneEncounterRequest.model_validate(body),
            clinic=clinic,
            client=None,
            idempotency_key=None,
            now=now,
        )
        return job.id
