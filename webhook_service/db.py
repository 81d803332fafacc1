"""Engine and session factory: one session per request or per worker step.

SQLite gets WAL and a busy timeout so the web and worker processes can share the embedded
file; PostgreSQL gets a statement timeout so no request can hang past Heroku's 30 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

SessionFactory = sessionmaker[Session]

# A pooled PostgreSQL connection idle longer than this is pinged (`SELECT 1`) before it is
# handed out; one back in the pool sooner is handed out as it is.
PING_AFTER_IDLE_SECONDS = 1.0

# What each process kind calls itself in `pg_stat_activity.application_name`, so an operator
# counting connections against the plan's limit sees who holds them.
APPLICATION_NAME_PREFIX = "webhook-service"

# PostgreSQL's refusals when its connection limit is reached (max_connections, a role's or a
# database's CONNECTION LIMIT). libpq reports them at connect time with no SQLSTATE, so the
# server's fixed wording is all there is to recognise them by.
_TOO_MANY_CLIENTS = ("too many clients", "too many connections")


def make_engine(
    url: str,
    *,
    statement_timeout_ms: int = 10_000,
    wait_seconds: float = 15,
    ping_after_idle_seconds: float = PING_AFTER_IDLE_SECONDS,
    pool_size: int = 5,
    process_kind: str = "cli",
    **kwargs: Any,
) -> Engine:
    """Create the engine for `url`, with the per-dialect settings this service relies on.

    `wait_seconds` bounds every wait for the database (connecting, a pooled connection, a
    SQLite lock): the web process keeps it short, so that a database outage is a quick 503
    that Cobalt retries, never a request hanging past Cobalt's 5 s.

    A PostgreSQL connection that sat in the pool longer than `ping_after_idle_seconds` is
    pinged before use, and replaced if the server dropped it (a restart in a quiet hour, an
    idle timeout): the request gets a fresh connection, not an error. SQLAlchemy's
    `pool_pre_ping` pings on every checkout, a round trip that was a sixth of a poll's CPU;
    a connection used within the second is taken as alive. If the server dropped it in
    that second, the one request on it fails as those in flight did (503), and SQLAlchemy
    then replaces every connection the pool held from before the drop.

    A PostgreSQL engine holds at most `pool_size` connections, never more (no overflow):
    the sum over every process is what the plan's connection limit must cover (README,
    "Connection budget"). Its connections carry `application_name`
    `webhook-service:<process_kind>`.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": wait_seconds}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; emit it ourselves so that a
        # claim's SELECT and UPDATE are one serialisable step (SQLAlchemy's documented recipe).
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    lock_ms = min(statement_timeout_ms, 5000)
    options = f"-c statement_timeout={statement_timeout_ms} -c lock_timeout={lock_ms}"
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=wait_seconds,
        connect_args={
            "options": options,
            "connect_timeout": max(2, int(wait_seconds)),  # libpq's minimum is 2 s
            "application_name": f"{APPLICATION_NAME_PREFIX}:{process_kind}",
        },
        **kwargs,
    )
    _ping_when_idle(engine, ping_after_idle_seconds)
    return engine


def connection_trouble(exc: BaseException) -> str | None:
    """Say in words why no database connection could be had, or None for any other error.

    The words go to logs as they are: they never quote the driver's message, which can
    carry bound parameters (PHI).
    """
    if isinstance(exc, PoolTimeout):
        return "no database connection free in this process's pool"
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return "the database closed the connection"
    if isinstance(exc, DBAPIError) and exc.statement is None:
        # Raised while connecting, before any statement: the message is libpq's own.
        message = str(exc.orig)
        if any(phrase in message for phrase in _TOO_MANY_CLIENTS):
            return "database refused the connection: too many clients"
        return "database unreachable"
    return None


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Ping a pooled connection at checkout when it has been idle over `idle_seconds`.

    SQLAlchemy's documented checkout-event recipe: raising `DisconnectionError` makes the
    pool discard the connection and hand out another (a new one, if need be).
    """
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def note_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def ping_if_idle(
        dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
    ) -> None:
        checked_in_at = record.info.get("checked_in_at")
        if checked_in_at is None or time.monotonic() - checked_in_at <= idle_seconds:
            return  # new, or back in the pool moments ago
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError("the database closed a pooled connection") from exc


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # let the "begin" hook own transactions
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> SessionFactory:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def transaction(factory: SessionFactory) -> Iterator[Session]:
    """Open a session, commit when the block ends, roll back if it raises."""
    with factory() as session, session.begin():
        yield session
