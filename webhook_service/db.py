"""Engine and session factory: one session per request or per worker step.

SQLite gets WAL and a busy timeout so the web and worker processes can share the embedded
file; PostgreSQL gets a statement timeout so no request can hang past Heroku's 30 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SessionFactory = sessionmaker[Session]


def make_engine(
    url: str,
    *,
    statement_timeout_ms: int = 10_000,
    wait_seconds: float = 15,
    **kwargs: Any,
) -> Engine:
    """Create the engine for `url`, with the per-dialect settings this service relies on.

    `wait_seconds` bounds every wait for the database (connecting, a pooled connection, a
    SQLite lock): the web process keeps it short, so that a database outage is a quick 503
    that Cobalt retries, never a request hanging past Cobalt's 5 s.
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
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=kwargs.pop("pool_size", 5),
        max_overflow=kwargs.pop("max_overflow", 5),
        pool_timeout=wait_seconds,
        # libpq's minimum is 2 s.
        connect_args={"options": options, "connect_timeout": max(2, int(wait_seconds))},
        **kwargs,
    )


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
