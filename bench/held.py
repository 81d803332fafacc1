"""Held requests: does the web formation hold N long polls (or streams) while polls and
submissions beside them keep their throughput and p99? (issue 20)

    .venv/bin/python -m bench.held --held 1000            # long polls, default formation
    .venv/bin/python -m bench.held --held 300 --mode stream
    .venv/bin/python -m bench.held --held 50 --worker-class gthread   # for comparison

Creates its own database (as `python -m bench` does), seeds a few thousand jobs, starts
gunicorn as the Procfile does (`WEB_CONCURRENCY` 2, the worker class config/gunicorn.conf.py
picks for PostgreSQL unless `--worker-class`), then measures with wrk, in the same run, polls
(200) and submissions at 32 connections, in rounds (`--rounds`, 3): with nothing held, then
with N requests held by an asyncio client (each a long poll `Prefer: wait=25` on an unchanged
job, re-sent when answered, or an open `/v1/jobs/{id}/stream` of one); and the web
processes' resident memory in both states. Each run with held requests is compared with the
runs without just before and after it; the median over the rounds is reported.
(`/v1/stream` is not the held load here: every change of a client wakes each of that
client's streams, and the bench has one client.) Prints the
report and writes `bench/results/held-<mode>-<n>-<class>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from typing import Any

import requests

from bench import load
from bench.procs import Processes, rss_mb
from bench.run import RESULTS_DIR, Bench, Scenario, parse_args, prepare_database, seed

HOLD_WAIT = 25


class Holder:
    """N connections, each holding a long poll (re-sent when answered) or a stream."""

    def __init__(self, port: int, token: str, count: int, mode: str, job: tuple[str, str]):
        self.port, self.token, self.count, self.mode, self.job = port, token, count, mode, job
        self.held = 0  # requests sent and not yet answered (or streams open)
        self.answered: dict[str, int] = {}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Holder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        tasks = []
        for _ in range(self.count):
            tasks.append(asyncio.create_task(self._one()))
            await asyncio.sleep(0.002)  # no accept-queue overflow
        while not self._stop.is_set():
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _request(self) -> bytes:
        job_id, etag = self.job
        if self.mode == "stream":
            lines = [f"GET /v1/jobs/{job_id}/stream HTTP/1.1", "Accept: text/event-stream"]
        else:
            lines = [
                f"GET /v1/jobs/{job_id} HTTP/1.1",
                f"If-None-Match: {etag}",
                f"Prefer: wait={HOLD_WAIT}",
            ]
        lines += ["Host: 127.0.0.1", f"Authorization: Bearer {self.token}", "", ""]
        return "\r\n".join(lines).encode()

    async def _one(self) -> None:
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.errors += 1
                await asyncio.sleep(0.5)
                continue
            try:
                while not self._stop.is_set():
                    writer.write(self._request())
                    await writer.drain()
                    self.held += 1
                    try:
                        status = await self._answer(reader)
                    finally:
                        self.held -= 1
                    self.answered[status] = self.answered.get(status, 0) + 1
            except (OSError, asyncio.IncompleteReadError, ValueError):
                self.errors += 1
            finally:
                writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> str:
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1].decode()
        if self.mode == "stream":
            while await reader.read(65536):  # held until the server ends it
                pass
            raise asyncio.IncompleteReadError(b"", None)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await reader.readexactly(length)
        return status


def measure(bench: Bench, port: int, scenario: Scenario, seconds: float) -> dict[str, Any]:
    env = bench.wrk_env(scenario, auth=True)
    bench.wrk_runs += 1
    env["BENCH_NONCE"] = f"{bench.nonce}h{bench.wrk_runs}"
    result = load.run_wrk(
        bench.processes,
        name=scenario.name,
        script=scenario.script,
        port=port,
        connections=32,
        seconds=seconds,
        env=env,
        expected=scenario.expected,
    )
    return {"rps": round(result.rps, 1), "p99_ms": result.p99_ms, "errors": result.errors}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.held", description=__doc__)
    parser.add_argument("--held", type=int, default=1000, help="requests held at once (1000)")
    parser.add_argument("--mode", choices=["poll", "stream"], default="poll")
    parser.add_argument("--seconds", type=float, default=8.0, help="per wrk run (8)")
    parser.add_argument("--jobs", type=int, default=5000, help="jobs seeded (5000)")
    parser.add_argument("--worker-class", default="", help="GUNICORN_WORKER_CLASS (config's)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of without / with held (3; median ratio)"
    )
    args = parser.parse_args(argv)

    options = parse_args(["--quick", "--jobs", str(args.jobs), "--db-name", "webhook_bench_held"])
    work = RESULTS_DIR / "work"
    with Processes(RESULTS_DIR / "logs") as processes:
        bench = Bench(options, processes, work)
        bench.results["meta"] = {}
        clinic_id, client_id = prepare_database(bench)
        seed(bench, 1, args.jobs, clinic_id, client_id)
        work.mkdir(parents=True, exist_ok=True)
        extra = {"GUNICORN_WORKER_CLASS": args.worker_class} if args.worker_class else {}
        original = bench.service_env
        bench.service_env = lambda: {**original(), **extra}  # type: ignore[method-assign]
        with bench.gunicorn("held", "webhook_service.wsgi:app") as served:
            base = f"http://127.0.0.1:{served.port}"
            api = requests.Session()
            api.headers["Authorization"] = f"Bearer {bench.token}"
            ids = [
                api.post(
                    f"{base}/v1/notes",
                    json={"appointment_id": f"held-{n}", "note": "Synthetic bench note."},
                    timeout=10,
                ).json()["id"]
                for n in range(200)
            ]
            first = api.get(f"{base}/v1/jobs/{ids[0]}", timeout=10)
            job = (ids[0], first.headers["ETag"])
            ids_file = load.write_ids(work / "held-ids.txt", ids)
            polls = Scenario("poll", "poll", "/v1/jobs/", (200,), {"BENCH_IDS_FILE": str(ids_file)})
            submits = Scenario("submit", "submit", "/v1/notes", (202,))
            report: dict[str, Any] = {
                "held": args.held,
                "mode": args.mode,
                "worker_class": args.worker_class or "config (gevent on PostgreSQL)",
                "web_concurrency": options.web_concurrency,
            }
            report["rss_idle_mb"] = rss_mb(served.pid)

            def both() -> dict[str, Any]:
                return {
                    "poll": measure(bench, served.port, polls, args.seconds),
                    "submit": measure(bench, served.port, submits, args.seconds),
                }

            # Rounds of (without, with N held), then once more without: each run with held
            # requests is judged against the runs without just before and just after it, so
            # a machine that drifts over the minutes does not read as a loss or a gain.
            withouts, withs = [], []
            for _ in range(args.rounds):
                withouts.append(both())
                report["rss_before_mb"] = rss_mb(served.pid)
                with Holder(served.port, bench.token, args.held, args.mode, job) as holder:
                    deadline = time.monotonic() + 60
                    while holder.held < args.held * 0.98 and time.monotonic() < deadline:
                        time.sleep(0.2)
                    report["held_reached"] = holder.held
                    probes = []
                    for job_id in ids[:5]:
                        started = time.perf_counter()
                        api.get(f"{base}/v1/jobs/{job_id}", timeout=60)
                        probes.append(round((time.perf_counter() - started) * 1000, 1))
                    report["plain_poll_ms_while_held"] = probes
                    report["rss_held_mb"] = rss_mb(served.pid)
                    withs.append(both())
                    report["held_at_end"] = holder.held
                    report["holder_answers"] = dict(holder.answered)
                    report["holder_errors"] = holder.errors
                time.sleep(2)  # the held connections closed
            withouts.append(both())
            report["without"], report["with"] = withouts, withs
        for kind in ("poll", "submit"):
            throughput, p99 = [], []
            for n, with_ in enumerate(withs):
                around = (withouts[n][kind], withouts[n + 1][kind])
                rps = sum(run["rps"] for run in around) / 2
                p99_ms = sum(run["p99_ms"] for run in around) / 2
                throughput.append(round(with_[kind]["rps"] / max(rps, 0.01), 3))
                p99.append(round(with_[kind]["p99_ms"] / max(p99_ms, 0.01), 3))
            report[f"{kind}_throughput_ratios"] = throughput
            report[f"{kind}_p99_ratios"] = p99
            report[f"{kind}_throughput_ratio"] = statistics.median(throughput)
            report[f"{kind}_p99_ratio"] = statistics.median(p99)
        out = RESULTS_DIR / f"held-{args.mode}-{args.held}-{args.worker_class or 'default'}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        if bench.database is not None:
            from bench import db

            db.drop_database(bench.database)


if __name__ == "__main__":
    main()
