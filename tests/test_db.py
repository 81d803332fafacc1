"""The PostgreSQL engine's pool: a connection the server dropped while it sat idle is
replaced before a request gets it; one used moments ago is handed out without a ping."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from webhook_service.db import make_engine


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        pid: int = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        return pid


def _drop_the_pooled_connection(engine: Engine, url: str) -> int:
    """Use the pool's one connection, then end it on the server, as a restart or an idle
    timeout does; return its backend's pid."""
    pid = _backend_pid(engine)
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
    return pid


@pytest.fixture
def one_connection_pool(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[Engine]:
    engine = make_engine(postgres_url, pool_size=1, ping_after_idle_seconds=request.param)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("one_connection_pool", [0.2], indirect=True)
def test_a_connection_dropped_while_idle_in_the_pool_is_replaced_before_use(
    one_connection_pool: Engine, postgres_url: str
) -> None:
    dropped = _drop_the_pooled_connection(one_connection_pool, postgres_url)
    time.sleep(0.3)  # idle past ping_after_idle_seconds
    assert _backend_pid(one_connection_pool) != dropped  # no error: a fresh connection


@pytest.mark.parametrize("one_connection_pool", [60.0], indirect=True)
def test_a_connection_used_moments_ago_is_not_pinged_and_one_failure_refreshes_the_pool(
    one_connection_pool: Engine, postgres_url: str
) -> None:
    dropped = _drop_the_pooled_connection(one_connection_pool, postgres_url)
    # Back in the pool a moment ago: handed out without a round trip, so the drop shows
    # on the request that uses it (the web answers it 503, as it does an outage)...
    with pytest.raises(OperationalError) as failed, one_connection_pool.connect() as connection:
        connection.execute(text("SELECT 1"))
    assert failed.value.connection_invalidated
    # ...and the pool has replaced it for the next one.
    assert _backend_pid(one_connection_pool) != dropped
