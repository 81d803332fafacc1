"""Alembic environment: migrate the configured database, under a lock and timeouts.

On PostgreSQL an advisory lock makes concurrent release phases take turns, and lock/statement
timeouts keep a migration from queueing behind live traffic indefinitely (Warehouse's rule).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from webhook_service.db import make_engine
from webhook_service.models import Base
from webhook_service.settings import Settings

MIGRATION_LOCK_ID = 0x5EB0_0C  # arbitrary, constant: one lock for all of this app's releases

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if url:
        return str(url)
    return Settings(WEBHOOK_SERVICE_ENV="development").effective_database_url


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(
        database_url(), statement_timeout_ms=60_000, pool_size=1, process_kind="release"
    )
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


def _run(connection: Connection) -> None:
    is_postgres = connection.dialect.name == "postgresql"
    if connection.dialect.name == "sqlite":
        # Batch migrations rebuild tables (copy, drop, rename); with foreign keys enforced,
        # dropping a referenced table fails. The pragma only works outside a transaction,
        # so it goes straight to the driver before SQLAlchemy begins one.
        connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=not is_postgres,
        compare_type=True,
    )
    if not is_postgres:
        with context.begin_transaction():
            context.run_migrations()
        return
    # One release migrates at a time. The lock is the session's, not the transaction's: a
    # migration that builds an index CONCURRENTLY commits in the middle of the run.
    lock = {"id": MIGRATION_LOCK_ID}
    connection.execute(text("SELECT pg_advisory_lock(:id)"), lock)
    connection.commit()
    try:
        with context.begin_transaction():
            connection.execute(text("SET LOCAL lock_timeout = '4s'"))
            context.run_migrations()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:id)"), lock)
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
