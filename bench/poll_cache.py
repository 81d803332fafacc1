"""Polls answered from memory against the bare primary-key read, measured in process (issue 20).

    .venv/bin/python -m bench.poll_cache [--server-url URL] [--rounds 5] [--per-round 1000]

Creates a throwaway PostgreSQL database, migrates it, adds the baselines' `bench_items`, and
times through Flask's test client (no HTTP, no gunicorn: both sides' own work and their
database round trips), in alternating rounds so drift hits all alike: the bare baseline
`pk_read` (bench/baselines.py), the service's poll 304 and a settled job's poll 200 with the
poll cache (http/poll_cache.py), and the same two polls with it switched off (every poll
reads the database, as before). Ratios are the baseline's time over the poll's (its
throughput over the baseline's, as the bench's ratios are).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from bench.db import create_baseline_tables, sample_item_ids
from tests.conftest import make_settings, new_token
from tests.processes import throwaway_postgres_database
from webhook_service.db import make_engine, make_session_factory, transaction
from webhook_service.http import create_app
from webhook_service.migrations import upgrade
from webhook_service.models import Job

NOTE = {"appointment_id": "bench", "note": "S: fine"}
JOBS = 200


CPU: dict[str, list[float]] = {}  # this process's CPU a request (µs), by case


def _round(client: Any, urls: list[str], headers: list[dict[str, str]], count: int) -> float:
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        answer = client.get(urls[i % len(urls)], headers=headers[i % len(headers)])
        assert answer.status_code in (200, 304), answer.status_code
    CPU.setdefault(_case, []).append((time.process_time() - cpu) / count * 1e6)
    return (time.perf_counter() - started) / count * 1e6


_case = ""


def main() -> None:
    parser = argparse.ArgumentParser()
    default = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--server-url", default=default)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=1000)
    args = parser.parse_args()
    with throwaway_postgres_database(args.server_url, prefix="pollcache") as url:
        upgrade(url)
        libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(libpq, autocommit=True) as conn:
            create_baseline_tables(conn)
            items = sample_item_ids(conn, JOBS)
        os.environ["DATABASE_URL"] = url
        from bench.baselines import pk_read

        sessions = make_session_factory(make_engine(url))
        app = create_app(make_settings(url, LOG_LEVEL="WARNING"))
        token = new_token(sessions, "bench-poll", "frontend")
        auth = {"Authorization": f"Bearer {token}"}
        client = app.test_client()
        ids = []
        for _ in range(JOBS):
            answer = client.post("/v1/notes", json=NOTE, headers=auth)
            assert answer.status_code == 202, answer.get_data(as_text=True)
            ids.append(answer.get_json()["id"])
        with transaction(sessions) as session:  # all settled: a 200 may be kept
            for job_id in ids:
                job = session.get(Job, uuid.UUID(job_id))
                assert job is not None
                job.status, job.finished_at = "completed", job.updated_at
                job.outcome = {"note_id": f"n_{job_id[:8]}"}
        extension = app.extensions["webhook_service"]
        extension["wakeups"].start()
        while extension["wakeups"].fresh_epoch() is None:
            time.sleep(0.01)
        cache = extension["poll_cache"]
        urls = [f"/v1/jobs/{job_id}" for job_id in ids]
        etags = [
            {**auth, "If-None-Match": client.get(u, headers=auth).headers["ETag"]} for u in urls
        ]
        base = pk_read.test_client()
        cases = {
            "pk_read": lambda n: _round(base, [f"/items/{i}" for i in items], [{}], n),
            "poll_304": lambda n: _round(client, urls, etags, n),
            "poll_200": lambda n: _round(client, urls, [auth], n),
        }

        def switched(on: bool, case: str) -> Any:
            def run(n: int) -> float:
                extension["poll_cache"] = cache if on else None
                try:
                    return cases[case](n)
                finally:
                    extension["poll_cache"] = cache

            return run

        runs = {
            "pk_read": cases["pk_read"],
            "poll_304 cached": switched(True, "poll_304"),
            "poll_200 cached": switched(True, "poll_200"),
            "poll_304 uncached": switched(False, "poll_304"),
            "poll_200 uncached": switched(False, "poll_200"),
        }
        for run in runs.values():
            run(200)  # warm: pools, caches, the cache's entries
        timings: dict[str, list[float]] = {name: [] for name in runs}
        CPU.clear()
        global _case
        for _ in range(args.rounds):
            for name, run in runs.items():
                _case = name
                timings[name].append(run(args.per_round))
        bare = statistics.median(timings["pk_read"])
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        for name in runs:
            median = statistics.median(timings[name])
            spread = f"{min(timings[name]):.0f}-{max(timings[name]):.0f}"
            cpu = statistics.median(CPU[name])
            print(
                f"{name:18} {median:7.0f} µs ({spread}); x{bare / median:.2f} of pk_read;"
                f" this process's CPU {cpu:5.0f} µs"
            )


if __name__ == "__main__":
    main()
