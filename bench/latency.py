"""Push latency (issue 20's targets): how soon a settled job reaches a front end, on
PostgreSQL, against the bare NOTIFY between two connections measured in the same run.

    .venv/bin/python -m bench.latency            # 2-3 min: 100,000 jobs seeded
    .venv/bin/python -m bench --only-latency     # the same; a full `python -m bench` runs it too

Two gunicorns of the service, started as the Procfile's `web` line (`WEB_CONCURRENCY=1`
each, same database): front ends wait on A (a long poll, or a job stream) while the bench
posts the settling Cobalt webhook to B, so the wake-up crosses processes. Then, with the
worker running against the Cobalt stub, webhooks at 50 a second and the callbacks they
cause, and what one job costs a front end in requests from submit to outcome. Prints a
table and writes `bench/results/latency.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench import db
from bench.frontend import CallbackReceiver
from bench.latency_report import OUTPUT, format_table, summary, verdicts, write
from bench.procs import (
    Processes,
    free_port,
    rss_mb,
    tree_cpu_seconds,
    venv_tool,
    wait_http_ready,
)
from bench.push import Push
from bench.run import RESULTS_DIR, SERVICE_APP, Bench, parse_args, prepare_database, seed

SEED_JOBS = 100_000  # 2,000 of them open: enough for every phase at the default plan
NOTIFY_CHANNEL = "bench_latency"


@dataclass(frozen=True)
class Plan:
    """How much of each measurement one run takes."""

    notify_samples: int = 300
    samples: int = 300  # per push: long poll, stream
    waiters: int = 25  # held at once on A, on distinct jobs, then settled one by one
    callback_rate: float = 50.0  # webhooks (changes) per second
    callback_seconds: float = 20.0
    outcome_after: float = 3.0  # seconds from Cobalt accepting a note to its webhook
    jobs_per_mode: int = 3  # front-end jobs followed from submit to outcome, per way
    worker_env: tuple[tuple[str, str], ...] = ()  # what-ifs: the worker's settings changed

    @property
    def callback_jobs(self) -> int:
        return round(self.callback_rate * self.callback_seconds)

    @property
    def open_jobs(self) -> int:
        return 2 * self.samples + Push.WARMUP_CALLBACKS + self.callback_jobs

    @classmethod
    def quick(cls) -> Plan:
        return cls(notify_samples=200, samples=100, callback_seconds=10.0, jobs_per_mode=2)


# --- the bare baseline ------------------------------------------------------------------------


def notify_baseline(libpq_url: str, samples: int) -> dict[str, Any]:
    """From a committed NOTIFY's commit returning to another connection receiving it, in ms:
    one connection LISTENs on a thread, this one commits `SELECT pg_notify(…)` one at a time."""
    arrived: dict[str, float] = {}
    got, ready, stop = threading.Event(), threading.Event(), threading.Event()

    def listen() -> None:
        with psycopg.connect(libpq_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            ready.set()
            while not stop.is_set():
                for notify in conn.notifies(timeout=0.2):
                    arrived[notify.payload] = time.perf_counter()
                    got.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    latencies, lost = [], 0
    try:
        if not ready.wait(10):
            raise RuntimeError("the NOTIFY baseline's listener did not start")
        with psycopg.connect(libpq_url, connect_timeout=5) as conn:
            for index in range(samples):
                got.clear()
                conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(index)))
                conn.commit()
                committed = time.perf_counter()
                if got.wait(2) and str(index) in arrived:
                    latencies.append((arrived[str(index)] - committed) * 1000)
                else:
                    lost += 1
                time.sleep(0.005)
    finally:
        stop.set()
        listener.join(timeout=5)
    return {**summary(latencies), "lost": lost}


# --- the service ------------------------------------------------------------------------------


def measure(bench: Bench, plan: Plan) -> dict[str, Any]:
    """Every measurement of the module on `bench`'s database (seeded, 100,000 jobs or more)."""
    assert bench.database is not None
    results: dict[str, Any] = {"plan": dataclasses.asdict(plan), "loadavg_1m": {}}

    def phase(name: str) -> None:
        results["loadavg_1m"][name] = round(os.getloadavg()[0], 2)
        print(f"latency: {name} (load average {os.getloadavg()[0]:.2f})", flush=True)

    phase("notify")
    results["notify"] = notify_baseline(bench.database.libpq_url, plan.notify_samples)
    with db.connect(bench.database) as conn:
        # An earlier phase's submissions, still pending, would keep the worker busy.
        db.settle_open_jobs(conn)
    jobs = open_jobs(bench, plan.open_jobs)
    polled, streamed = jobs[: plan.samples], jobs[plan.samples : 2 * plan.samples]
    called = jobs[2 * plan.samples :]
    web_env = {"WEB_CONCURRENCY": "1", "CALLBACK_ALLOW_PRIVATE_NETWORKS": "true"}
    with (
        bench.gunicorn("latency-a", SERVICE_APP, web_env) as a,
        bench.gunicorn("latency-b", SERVICE_APP, web_env) as b,
    ):
        push = Push(bench, plan, held_on=a.port, webhooks_to=b.port)
        phase("long_poll")
        results["long_poll"] = asyncio.run(push.held(polled, stream=False))
        phase("stream")
        results["stream"] = asyncio.run(push.held(streamed, stream=True))
        with worker(bench, dict(plan.worker_env)) as worker_pid, CallbackReceiver() as receiver:
            phase("callbacks")
            pids = {"worker": worker_pid, "web A": a.pid, "web B": b.pid}
            if bench.postmaster is not None:
                pids["PostgreSQL (server)"] = bench.postmaster
            used = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
            started = time.perf_counter()
            calls = asyncio.run(push.callbacks(called, receiver))
            elapsed = time.perf_counter() - started
            calls["cpu_share"] = {
                name: round((tree_cpu_seconds(pid) - used[name]) / elapsed, 2)
                for name, pid in pids.items()
            }
            calls["breakdown_ms"] = callback_breakdown(bench, calls.pop("job_ids"))
            results["callbacks"] = calls
            phase("requests_per_job")
            results["requests_per_job"] = asyncio.run(push.front_ends(accepted(bench)))
            asyncio.run(push.unregister())  # a later phase's changes must not call it
        results["rss_mb"] = {"A (held)": rss_mb(a.pid), "B (webhooks)": rss_mb(b.pid)}
    phase("end")
    results["targets"] = verdicts(results)
    return results


def open_jobs(bench: Bench, count: int) -> list[tuple[str, int]]:
    """(id, number) of the first `count` jobs the seed left open, put back open as seeded."""
    assert bench.database is not None
    numbers = [db.OPEN_EVERY * (k + 1) for k in range(count)]
    with db.connect(bench.database) as conn:
        db.reopen_jobs(conn, numbers)
        rows = conn.execute(
            "SELECT id::text, cobalt_job_id FROM jobs WHERE cobalt_job_id = ANY(%s)",
            ([f"cj_{n}" for n in numbers],),
        ).fetchall()
    found = {int(cobalt_id[3:]): job_id for job_id, cobalt_id in rows}
    if len(found) < count:
        raise RuntimeError(f"{count} open jobs needed, {len(found)} seeded: seed more jobs")
    return [(found[n], n) for n in numbers]


def accepted(bench: Bench) -> Callable[[str], bool]:
    """A blocking check: has Cobalt (the stub) accepted job `id` yet? For Push.front_ends."""
    database = bench.database
    assert database is not None

    def check(job_id: str) -> bool:
        with db.connect(database) as conn:
            row = conn.execute(
                "SELECT submission_state FROM jobs WHERE id = %s", (job_id,)
            ).fetchone()
        return row is not None and row[0] == "accepted"

    return check


def callback_breakdown(bench: Bench, job_ids: list[str]) -> dict[str, Any]:
    """Where a callback's time went, from the service's own timestamps (ms): from the change
    (the webhook's transaction) to its delivery row (fan-out), from there to the first
    attempt's start (waiting for a sender), and the attempt itself."""
    assert bench.database is not None
    deadline = time.monotonic() + 10  # the last attempts are recorded after they answered
    with db.connect(bench.database) as conn:
        while True:
            rows = conn.execute(_BREAKDOWN, (job_ids,)).fetchall()
            if len(rows) >= len(job_ids) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    parts = ("fan_out_wait", "sender_wait", "attempt")
    return {part: summary([float(row[i]) for row in rows]) for i, part in enumerate(parts)}


_BREAKDOWN = """
    SELECT extract(epoch FROM d.created_at - c.updated_at) * 1000,
           extract(epoch FROM a.at - d.created_at) * 1000 - a.latency_ms,
           a.latency_ms
    FROM callback_deliveries d
    JOIN job_changes c ON c.seq = d.change_seq
    JOIN LATERAL (
        SELECT at, latency_ms FROM callback_attempts
        WHERE delivery_id = d.id ORDER BY id LIMIT 1
    ) a ON true
    WHERE d.job_id = ANY(%s::uuid[])
    """


@contextlib.contextmanager
def worker(bench: Bench, what_if: dict[str, str]) -> Iterator[int]:
    """`webhook-service worker` (the Procfile's line) against the Cobalt stub, accepting at once."""
    port = free_port()
    stub = bench.processes.start(
        "latency-cobalt-stub",
        [sys.executable, "-m", "bench.cobalt_stub", "--port", str(port)],
        bench.base_env(),
    )
    try:
        wait_http_ready(stub, f"http://127.0.0.1:{port}/healthz")
        env = {
            **bench.worker_env(port),
            "CALLBACK_ALLOW_PRIVATE_NETWORKS": "true",
            **what_if,
        }
        proc = bench.processes.start(
            "latency-worker", [venv_tool("webhook-service"), "worker"], env
        )
        try:
            yield proc.pid
        finally:
            bench.processes.stop(proc)
    finally:
        bench.processes.stop(stub, timeout=5)


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--jobs", type=int, default=SEED_JOBS, help="jobs seeded (100,000)")
    parser.add_argument("--quick", action="store_true", help="fewer samples, 10 s of callbacks")
    parser.add_argument("--server-url", help="PostgreSQL server (as python -m bench)")
    parser.add_argument("--db-name", default="webhook_bench_latency")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a what-if: set this for the worker (e.g. WORKER_POLL_SECONDS=0.1); repeatable",
    )
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    if any("=" not in item for item in args.worker_env):
        parser.error("--worker-env takes NAME=VALUE")
    what_if = dict(item.split("=", 1) for item in args.worker_env)
    plan = dataclasses.replace(plan, worker_env=tuple(sorted(what_if.items())))
    bench_argv = ["--quick", "--jobs", str(args.jobs), "--db-name", args.db_name]
    bench_argv += ["--server-url", args.server_url] if args.server_url else []
    options = parse_args(bench_argv)
    if options.jobs < plan.open_jobs * db.OPEN_EVERY:
        parser.error(f"--jobs must be at least {plan.open_jobs * db.OPEN_EVERY:,} for this plan")
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    with Processes(RESULTS_DIR / "logs") as processes:
        bench = Bench(options, processes, RESULTS_DIR / "work")
        bench.results = {"meta": {}}
        try:
            clinic_id, client_id = prepare_database(bench)
            seed(bench, 1, options.jobs, clinic_id, client_id)
            results = measure(bench, plan)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping everything the bench started", file=sys.stderr)
            return 130
        finally:
            processes.stop_all()
            if bench.database is not None and not args.keep_db:
                with contextlib.suppress(Exception):
                    db.drop_database(bench.database)
    write(results, args.output)
    print()
    print(format_table(results))
    print(f"\nwrote {args.output}")
    return 0


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
