"""The connection-cap scenario: a 20-connection database full while webhooks arrive."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from reliability.account import Account, _ok
from reliability.drive import (
    Log,
    _all_sent,
    _ready,
    _stderr,
    plan_jobs,
    psycopg_url,
    sandbox_deliveries,
    wait_for,
)
from reliability.runner import Size, run
from tests.processes import capped_postgres_database


def connection_cap(
    server_url: str, tmp_dir: Path, size: Size, full_seconds: float = 4.0, log: Log = _stderr
) -> Account:
    """A database capped at 20 connections (a small hosted plan) fills up with other clients
    while Cobalt's webhooks arrive: the web processes lose their connections and cannot get
    new ones. Each webhook is stored or answered 503; what Cobalt gave up on is found by
    reconciliation once connections free up, with no restart.
    """
    env = {"JOB_DEADLINE_SECONDS": str(size.deadline_seconds)}
    planned = plan_jobs(size.jobs)
    with (
        capped_postgres_database(server_url, 20) as database_url,
        run(database_url, tmp_dir, env, 2.5, log) as r,
    ):
        system = r.system
        log(f"connection-cap: submitting {len(planned)} jobs")
        r.submit(planned)
        wait_for("the worker to send every job it may send now", lambda: _all_sent(system), 60)
        # Outcomes come 2.5 s after each acceptance: the burst falls into the full spell.
        hogs: list[psycopg.Connection[Any]] = []
        stop_at = time.monotonic() + full_seconds
        try:
            while time.monotonic() < stop_at:
                _take_the_web_connections(server_url, database_url, hogs)
                time.sleep(0.2)
            log(f"connection-cap: the server was full for {full_seconds:.0f} s")
        finally:
            for hog in hogs:
                hog.close()
        wait_for("gunicorn to serve again", lambda: _ready(system), 30)
        r.settle(size.deadline_seconds + 30)
        account = r.account(
            f"connection-cap: {size.jobs} jobs, a 20-connection database full for "
            f"{full_seconds:.0f} s mid-burst"
        )
        refused = sum(1 for a in sandbox_deliveries(system) if not _ok(a))
        account.add("webhook attempts refused while the database was full", refused, "refused")
        account.add("other clients holding the spare connections", len(hogs), "hogs")
        return account


def _take_the_web_connections(
    server_url: str, database_url: str, hogs: list[psycopg.Connection[Any]]
) -> None:
    """End the web processes' connections and take every free slot, as another client of the
    plan would: the web's next requests find the server full."""
    with psycopg.connect(psycopg_url(server_url), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = 'webhook-service:web'",
            (make_url(database_url).database,),
        )
    while True:
        try:
            hogs.append(psycopg.connect(psycopg_url(database_url)))
        except psycopg.OperationalError:
            return
