"""What the abuse limits cost a submission, measured in process (issue 18).

    .venv/bin/python -m bench.limits_cost [--server-url URL] [--rounds 5] [--per-round 400]

Creates a throwaway PostgreSQL database, migrates it, and times submissions through the
Flask test client (no HTTP, no gunicorn: the figure is the service's own work) with the
limits off (`RATE_LIMIT_SUBMISSIONS_PER_MINUTE=0`, `BACKLOG_MAX_JOBS=0`) and on, in
alternating rounds so drift hits both alike. Then times the backlog count itself, which a
process runs at most once a second, with `BACKLOG_MAX_JOBS` jobs waiting.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, text

from tests.conftest import make_settings, new_token
from tests.processes import throwaway_postgres_database
from webhook_service.db import make_engine, make_session_factory
from webhook_service.http import create_app
from webhook_service.migrations import upgrade
from webhook_service.services.limits import (
    SUBMISSION_WINDOW_SECONDS,
    Window,
    bump,
    waiting_jobs,
)

NOTE = {"appointment_id": "bench", "note": "S: fine"}


def _round(app: Any, count: int) -> float:
    client = app.test_client()
    headers = {"Authorization": f"Bearer {app.config['TEST_TOKEN']}"}
    started = time.perf_counter()
    for _ in range(count):
        answer = client.post("/v1/notes", json=NOTE, headers=headers)
        assert answer.status_code == 202, answer.get_data(as_text=True)
    return (time.perf_counter() - started) / count * 1e6


def engine_of(app: Any) -> Engine:
    engine: Engine = app.extensions["webhook_service"]["engine"]
    return engine


def _per_call(call: Callable[[], object], count: int = 2000) -> float:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    default = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--server-url", default=default)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=400)
    args = parser.parse_args()
    with throwaway_postgres_database(args.server_url, prefix="limits") as url:
        upgrade(url)
        sessions = make_session_factory(make_engine(url))
        apps = {}
        for name, limits in {
            "off": {"RATE_LIMIT_SUBMISSIONS_PER_MINUTE": 0, "BACKLOG_MAX_JOBS": 0},
            "rate": {"RATE_LIMIT_SUBMISSIONS_PER_MINUTE": 10**9, "BACKLOG_MAX_JOBS": 0},
            "on": {"RATE_LIMIT_SUBMISSIONS_PER_MINUTE": 10**9, "BACKLOG_MAX_JOBS": 10**9},
        }.items():
            app = create_app(make_settings(url, LOG_LEVEL="WARNING", **limits))
            app.config["TEST_TOKEN"] = new_token(sessions, f"bench-{name}", "frontend")
            _round(app, 50)  # warm: pool, caches, the default clinic
            apps[name] = app
        timings: dict[str, list[float]] = {name: [] for name in apps}
        for _ in range(args.rounds):
            for name, app in apps.items():
                timings[name].append(_round(app, args.per_round))
        off = statistics.median(timings["off"])
        print(f"submission, limits off: {off:7.0f} µs (median of {args.rounds} rounds)")
        for name, label in (("rate", "rate limit only"), ("on", "rate limit and backlog cap")):
            on = statistics.median(timings[name])
            print(f"  {label}: {on:7.0f} µs (+{on - off:.0f} µs, {on / off - 1:+.1%})")

        # The statement alone, on one connection, beside a `SELECT 1` round trip.
        with engine_of(apps["on"]).connect() as connection:
            window = Window.at(datetime.now(UTC), SUBMISSION_WINDOW_SECONDS)
            alone = _per_call(lambda: bump(connection, "submit:bench", window))
            trip = _per_call(lambda: connection.execute(text("SELECT 1")))
            connection.rollback()
        print(f"the counter's upsert alone: {alone:5.0f} µs (a SELECT 1 round trip: {trip:.0f} µs)")

        waiting = 5000
        engine = engine_of(apps["on"])
        with engine.begin() as connection:
            have = waiting_jobs(connection)
            connection.execute(
                text(
                    "INSERT INTO jobs (id, kind, status, clinic_id, request_hash, client_id,"
                    " submission_state, submit_attempts, next_attempt_at, flagged, created_at,"
                    " updated_at) SELECT gen_random_uuid(), kind, status, clinic_id,"
                    " request_hash, client_id, submission_state, 0, next_attempt_at, false,"
                    " created_at, updated_at FROM jobs, generate_series(1, :n) LIMIT :n"
                ),
                {"n": max(0, waiting - have)},
            )
        with engine.connect() as connection:
            counted = []
            for _ in range(50):
                started = time.perf_counter()
                found = waiting_jobs(connection)
                counted.append((time.perf_counter() - started) * 1e6)
        print(f"backlog count with {found} waiting: {statistics.median(counted):7.0f} µs")


if __name__ == "__main__":
    main()
