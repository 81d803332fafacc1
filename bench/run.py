"""`python -m bench`: issue 7's bench end to end. Creates, migrates and seeds a database,
drives bare baselines and the service (gunicorn as the Procfile starts it) with wrk,
measures the worker against a Cobalt stub, prints a table, writes bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import logging
import os
import random
import resource
import runpy
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography.fernet import Fernet

from bench import db, latency_report, load, preflight, report
from bench.procs import (
    ROOT,
    VENV_BIN,
    MemorySampler,
    Processes,
    Started,
    children,
    cpu_seconds,
    free_port,
    tree_cpu_seconds,
    venv_tool,
    wait_http_ready,
)
from webhook_service.phi import PhiKeys

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SERVICE_APP = "webhook_service.wsgi:app"
GUNICORN_CONFIG = "config/gunicorn.conf.py"
BENCH_CLIENT = "bench-frontend"
BENCH_SUPPORT = "bench-support"
SUPPORT_SEARCHES = 5_000  # distinct MRN searches drawn at random
SMALL_JOBS = 10_000  # the growth check's "before" size
POLL_SAMPLE = 100_000  # distinct job ids polled at random
ETAGS, ETAGS_QUICK = 5_000, 2_000  # jobs whose ETags the 304 scenarios send
BREAKDOWN_SECONDS = 2.0  # each support filter alone, at 1 connection (--quick: 1 s)
# Before the breakdown: gunicorn is still answering the mix's 128 connections for up to a
# second after wrk stops, and the first filter (no warm-up) would queue behind them.
BREAKDOWN_SETTLE_SECONDS = 2.0
CONNECTIONS = (8, 32, 128)
# A run is "unbalanced" when one gunicorn worker did more than this share of an even split's
# double (with 2 workers: more than 80 % of the CPU): wrk's keep-alive connections all landed
# on one process, which then runs on one core while the other idles.
UNBALANCED_SHARE = 0.8
MAX_RETRIES = 2
# Environment variables passed through from the harness to what it starts; nothing else is.
# PYTHONPATH too: a bench run from a git worktree with `PYTHONPATH=<worktree>` must measure
# that tree's code in gunicorn and the worker, not the venv's editable install.
# GUNICORN_WORKER_CLASS: compare worker classes (`GUNICORN_WORKER_CLASS=gthread make bench`).
PASSTHROUGH_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "GUNICORN_WORKER_CLASS",
)


@dataclass(frozen=True)
class Options:
    jobs: int
    seconds: float
    warmup: float
    worker_seconds: float
    connections: tuple[int, ...]
    web_concurrency: int
    server_url: str
    db_name: str
    keep_db: bool
    auth: str
    wrk_threads: int
    profile: str
    profile_seconds: float
    skip_worker: bool
    quick: bool
    output: Path
    only_preflight: bool = False
    only_latency: bool = False


@dataclass
class Scenario:
    """One kind of request: a wrk script, a path, the data it reads, what it expects."""

    name: str
    script: str
    path: str
    expected: tuple[int, ...]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Served:
    """A running gunicorn: its port, its master's pid, and its memory sampler."""

    port: int
    pid: int
    sampler: MemorySampler


@dataclass
class Bench:
    """State of one bench run: options, secrets, the database, and collected results."""

    options: Options
    processes: Processes
    work_dir: Path
    nonce: str = field(default_factory=load.nonce)
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))
    webhook_secret: str = field(default_factory=lambda: "whsec_bench_" + secrets.token_hex(16))
    phi_keys: tuple[str, ...] = field(default_factory=lambda: (Fernet.generate_key().decode(),))
    phi_search_key: str = field(default_factory=lambda: Fernet.generate_key().decode())
    database: db.BenchDatabase | None = None
    token: str = ""
    support_token: str = ""
    wrk_runs: int = 0  # wrk processes started so far: each gets its own nonce
    postmaster: int | None = None  # PostgreSQL's main pid, for CPU accounting
    results: dict[str, Any] = field(default_factory=dict)

    # --- environment -----------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def service_env(self) -> dict[str, str]:
        """What the web and worker processes get: production mode, bench secrets, quiet logs."""
        env = {
            **self.base_env(),
            "WEBHOOK_SERVICE_ENV": "production",
            "SECRET_KEY": self.secret_key,
            "COBALT_WEBHOOK_SECRETS": self.webhook_secret,
            "COBALT_ACCESS_TOKEN": db.ACCESS_TOKEN,
            "PHI_ENCRYPTION_KEYS": ",".join(self.phi_keys),
            "PHI_SEARCH_KEY": self.phi_search_key,
            "LOG_LEVEL": "WARNING",
            # The bench measures speed from one client, far past any sensible rate limit,
            # over a seeded backlog; `bench.limits_cost` measures what the limits cost.
            "RATE_LIMIT_SUBMISSIONS_PER_MINUTE": "0",
            "BACKLOG_MAX_JOBS": "0",
        }
        if self.database is not None:
            env["DATABASE_URL"] = self.database.service_url
        return env

    def worker_env(self, stub_port: int) -> dict[str, str]:
        """What `webhook-service worker` gets: the service's environment, Cobalt being the
        stub (bench/cobalt_stub.py) on `stub_port`."""
        return {
            **self.service_env(),
            "COBALT_API_URL": f"http://127.0.0.1:{stub_port}/v1",
            "COBALT_CLIENT_ID": "ci_bench",
            "COBALT_CLIENT_SECRET": "cs_bench",
        }

    def wrk_env(self, scenario: Scenario, *, auth: bool) -> dict[str, str]:
        return {
            **self.base_env(),
            "BENCH_PATH": scenario.path,
            "BENCH_NONCE": self.nonce,
            "BENCH_AUTH_TOKEN": self.token if auth else "",
            **scenario.env,
        }

    # --- gunicorn --------------------------------------------------------------------------

    @contextlib.contextmanager
    def gunicorn(
        self, name: str, app: str, extra_env: Mapping[str, str] | None = None
    ) -> Iterator[Served]:
        """Start gunicorn as the Procfile's `web` line does; stop it however the block ends."""
        port = free_port()
        env = {
            **self.service_env(),
            "PORT": str(port),
            "WEB_CONCURRENCY": str(self.options.web_concurrency),
            **(extra_env or {}),
        }
        argv = [venv_tool("gunicorn"), "--config", GUNICORN_CONFIG, app]
        proc = self.processes.start(f"gunicorn-{name}", argv, env)
        try:
            wait_http_ready(proc, f"http://127.0.0.1:{port}/healthz")
            with MemorySampler(proc.pid) as sampler:
                yield Served(port, proc.pid, sampler)
        finally:
            self.processes.stop(proc)

    # --- measuring -------------------------------------------------------------------------

    def measure(
        self,
        served: Served,
        target: str,
        scenario: Scenario,
        *,
        auth: bool,
        connections: tuple[int, ...] | None = None,
        label: str | None = None,
    ) -> list[dict[str, Any]]:
        """Warm up once, then one wrk run per connection count; record and print each."""
        env = self.wrk_env(scenario, auth=auth)
        if self.options.warmup > 0:
            name = f"{target}-{scenario.name}-warmup"
            self._wrk(served.port, name, scenario, 32, self.options.warmup, env)
        measured = []
        for conns in connections or self.options.connections:
            row = self.measure_once(served, target, scenario, conns, env, label=label)
            tries = [row]
            while row["unbalanced"] and len(tries) <= MAX_RETRIES:
                # wrk's keep-alive connections all landed on one gunicorn worker (see
                # bench/README.md, "Keep-alive stickiness"): try again with fresh
                # connections; keep the most balanced try.
                tries.append(self.measure_once(served, target, scenario, conns, env, label=label))
                row = min(tries, key=lambda t: t["worker_cpu_share"][:1] or [0.0])
            if len(tries) > 1:
                row["tries"] = [
                    {k: t[k] for k in ("rps", "p50_ms", "p99_ms", "worker_cpu_share")}
                    for t in tries
                ]
            measured.append(row)
            self.results["runs"].append(row)
            retried = f" ({len(row['tries'])} tries: unbalanced)" if "tries" in row else ""
            print(
                f"  {target:<12} {row['scenario']:<14} c={conns:<4} {row['rps']:>7.0f} req/s  "
                f"p50 {row['p50_ms']:>6.1f} p95 {row['p95_ms']:>6.1f} "
                f"p99 {row['p99_ms']:>6.1f} ms  "
                f"errors {row['errors']}  cpu/req app {row['cpu_ms_per_request']['app']:.2f} "
                f"db {row['cpu_ms_per_request'].get('db', 0):.2f} ms{retried}",
                flush=True,
            )
        return measured

    def measure_once(
        self,
        served: Served,
        target: str,
        scenario: Scenario,
        conns: int,
        env: Mapping[str, str],
        *,
        label: str | None = None,
        seconds: float | None = None,
    ) -> dict[str, Any]:
        """One wrk run after a checkpoint, with the CPU it cost (not recorded: the caller's)."""
        self._quiesce()
        workers = children(served.pid)
        before = self._cpu(served)
        worker_before = {pid: cpu_seconds(pid) for pid in workers}
        load_before = os.getloadavg()[0]
        result = self._wrk(
            served.port,
            f"{target}-{scenario.name}",
            scenario,
            conns,
            seconds or self.options.seconds,
            env,
        )
        after = self._cpu(served)
        worker_used = {pid: cpu_seconds(pid) - worker_before[pid] for pid in workers}
        row = {"target": target, "scenario": label or scenario.name, **result.as_dict()}
        row["cpu_ms_per_request"] = {
            part: round(1000 * (after[part] - before[part]) / max(result.requests, 1), 3)
            for part in after
        }
        # Share of the work each gunicorn worker did (pids alive for the whole run).
        alive = {
            pid: used
            for pid, used in worker_used.items()
            if used >= 0 and pid in children(served.pid)
        }
        total = sum(alive.values())
        shares = (
            sorted((round(used / total, 2) for used in alive.values()), reverse=True)
            if total
            else []
        )
        row["worker_cpu_share"] = shares
        # Fewer connections than workers cannot be spread (1 connection is one worker's):
        # nothing to retry there.
        spread = conns >= len(shares) >= 2
        row["unbalanced"] = spread and shares[0] > UNBALANCED_SHARE * 2 / len(shares)
        row["loadavg_1m_before"] = round(load_before, 2)
        return row

    def _wrk(
        self,
        port: int,
        name: str,
        scenario: Scenario,
        connections: int,
        seconds: float,
        env: Mapping[str, str],
    ) -> load.WrkResult:
        # The scripts' ids are (nonce, thread, counter) and the counter restarts with each
        # wrk: with one nonce per bench run, every run re-sent the previous runs' webhook-ids,
        # so most webhooks after the first run were duplicates (stored once, never applied).
        self.wrk_runs += 1
        run_env = {**env, "BENCH_NONCE": f"{env.get('BENCH_NONCE', self.nonce)}r{self.wrk_runs}"}
        return load.run_wrk(
            self.processes,
            name=name,
            script=scenario.script,
            port=port,
            connections=connections,
            seconds=seconds,
            env=run_env,
            threads=self.options.wrk_threads,
            expected=scenario.expected,
        )

    def _cpu(self, served: Served) -> dict[str, float]:
        """CPU seconds used so far by gunicorn, PostgreSQL (whole server) and wrk."""
        cpu = {"app": tree_cpu_seconds(served.pid)}
        if self.postmaster is not None:
            cpu["db"] = tree_cpu_seconds(self.postmaster)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once reaped
        cpu["wrk"] = children.ru_utime + children.ru_stime
        return cpu

    def _quiesce(self) -> None:
        """A checkpoint before each run, so none lands in the middle of one."""
        assert self.database is not None
        with db.connect(self.database) as conn:
            db.checkpoint(conn)


# --- phases ----------------------------------------------------------------------------------


def prepare_database(bench: Bench) -> tuple[int, int]:
    """Create, migrate, make the bench client; return (clinic id, client id)."""
    opts = bench.options
    started = time.perf_counter()
    bench.database = db.create_database(opts.server_url, opts.db_name, bench.service_env())
    print(f"database {opts.db_name} created and migrated in {time.perf_counter() - started:.1f} s")
    with db.connect(bench.database) as conn:
        clinic_id = db.seed_clinic(conn, PhiKeys(bench.phi_keys, bench.phi_search_key))
        db.create_baseline_tables(conn)
        bench.postmaster = db.postmaster_pid(conn)
    client_id = None
    if opts.auth == "auto" and _cli_has_clients(bench):
        bench.token = _create_client(bench)
        bench.support_token = _create_client(bench, BENCH_SUPPORT, "support")
        with db.connect(bench.database) as conn:
            client_id = db.client_id(conn, BENCH_CLIENT)
    bench.results["meta"]["auth"] = bool(bench.token)
    return clinic_id, client_id or 0


def _cli_has_clients(bench: Bench) -> bool:
    probe = subprocess.run(
        [venv_tool("webhook-service"), "clients", "--help"],
        env=bench.service_env(),
        capture_output=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    return probe.returncode == 0


def _create_client(bench: Bench, name: str = BENCH_CLIENT, role: str = "frontend") -> str:
    """A client made with the operators' own command; its token is the last line."""
    done = subprocess.run(
        [venv_tool("webhook-service"), "clients", "create", name, "--role", role],
        env=bench.service_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    return done.stdout.strip().splitlines()[-1].strip()


def seed(bench: Bench, first: int, last: int, clinic_id: int, client_id: int) -> float:
    """Seed jobs first..last on two connections at once (one per core); return seconds."""
    assert bench.database is not None
    values = db.SeedValues.make(bench.phi_keys, bench.phi_search_key)
    middle = (first + last) // 2
    parts = [(first, middle), (middle + 1, last)] if last - first > 1000 else [(first, last)]
    database = bench.database

    def seed_part(part: tuple[int, int]) -> float:
        with db.connect(database) as conn:
            return db.seed_jobs(
                conn, part[0], part[1], clinic_id=clinic_id, client_id=client_id, values=values
            )

    started = time.perf_counter()
    with ThreadPoolExecutor(len(parts)) as pool:
        list(pool.map(seed_part, parts))
    with db.connect(database) as conn:
        db.analyze(conn)
        db.checkpoint(conn)
    return time.perf_counter() - started


def poll_scenario(bench: Bench, name: str, ids_file: Path, conditional: bool = False) -> Scenario:
    return Scenario(
        name,
        "poll",
        "/v1/jobs/",
        (304,) if conditional else (200,),
        {"BENCH_IDS_FILE": str(ids_file), "BENCH_CONDITIONAL": "1" if conditional else "0"},
    )


def growth(bench: Bench, size: int, ids_file: Path) -> float:
    """Poll (200) throughput at 32 connections for the hot set in `ids_file`; return req/s.

    Run twice: with only the first 10,000 jobs in the table, and again right after the
    rest is seeded, over the same ids (the newest jobs, which front ends poll). What
    changes between the two is only the table's size.
    """
    print(f"growth check: polling the newest {SMALL_JOBS:,} jobs with {size:,} in the table")
    with bench.gunicorn(f"service-growth-{size}", SERVICE_APP) as served:
        rows = bench.measure(
            served,
            "service",
            poll_scenario(bench, "poll_200", ids_file),
            auth=True,
            connections=(32,),
            label=f"growth@{size:,}",
        )
    return float(rows[0]["rps"])


def baselines(bench: Bench, bodies_file: Path) -> None:
    assert bench.database is not None
    with db.connect(bench.database) as conn:
        item_ids = db.sample_item_ids(conn, db.BASELINE_ROWS)
    items_file = load.write_ids(bench.work_dir / "items.txt", item_ids)
    plans = [
        ("constant", Scenario("constant", "constant", "/", (200,))),
        (
            "pk_read",
            Scenario("pk_read", "poll", "/items/", (200,), {"BENCH_IDS_FILE": str(items_file)}),
        ),
        (
            "verify_write",
            Scenario(
                "verify_write", "webhook", "/write", (200,), {"BENCH_BODIES_FILE": str(bodies_file)}
            ),
        ),
    ]
    for app_name, scenario in plans:
        print(f"baseline {app_name}")
        with bench.gunicorn(app_name, f"bench.baselines:{app_name}") as served:
            bench.measure(served, app_name, scenario, auth=False)
        bench.results["memory"][app_name] = served.sampler.peaks.summary()


def webhook_scenario(bodies_file: Path) -> Scenario:
    return Scenario(
        "webhook", "webhook", "/webhooks/cobalt", (200,), {"BENCH_BODIES_FILE": str(bodies_file)}
    )


def submit_scenario() -> Scenario:
    return Scenario("submit", "submit", "/v1/notes", (202,))


def etags_of(bench: Bench, port: int, ids: list[str], path: Path) -> Path:
    """The ETags of the first jobs in `ids` as the app on `port` answers them, for poll_304."""
    etag_count = ETAGS_QUICK if bench.options.quick else ETAGS
    etags = load.fetch_etags(port, ids[:etag_count], token=bench.token)
    if len(etags) < etag_count // 2:
        raise RuntimeError(f"only {len(etags)} of {etag_count} jobs answered 200 with an ETag")
    return load.write_ids(path, etags)


def service(bench: Bench, bodies_file: Path, ids: list[str], ids_file: Path) -> None:
    """The service's four scenarios at every connection count; then profiles if asked."""
    assert bench.database is not None
    opts = bench.options
    print(f"service at {opts.jobs:,} jobs")
    with bench.gunicorn("service", SERVICE_APP) as served:
        etags_file = etags_of(bench, served.port, ids, bench.work_dir / "etags.txt")
        scenarios = {
            "poll_200": poll_scenario(bench, "poll_200", ids_file),
            "poll_304": poll_scenario(bench, "poll_304", etags_file, conditional=True),
            # The same jobs without If-None-Match: a front end reading again the jobs it
            # follows (98 % settled, whose answer a web process keeps: issue 20).
            "poll_200_repeat": poll_scenario(bench, "poll_200_repeat", etags_file),
            "webhook": webhook_scenario(bodies_file),
            "submit": submit_scenario(),
        }
        if bench.support_token:
            scenarios.update(support_scenarios(bench))
        for scenario in scenarios.values():
            support = scenario.name.startswith("support")
            conns = support_connections(bench) if support else None
            bench.measure(served, "service", scenario, auth=True, connections=conns)
            if scenario.name == "support_filters":
                support_breakdown(bench, served, scenario)
        bench.results["memory"]["service"] = served.sampler.peaks.summary()
        if opts.profile != "none":
            etag_count = ETAGS_QUICK if opts.quick else ETAGS
            profile(bench, served, scenarios, ids[:etag_count])


def preflight_cost(bench: Bench) -> None:
    """What the pre-flight check costs a telephone encounter's submission: the same scenario
    on the service with PREFLIGHT_CHECKS on and off, one after the other (bench/preflight.py).
    """
    assert bench.database is not None
    with db.connect(bench.database) as conn:
        clinic = conn.execute("SELECT id FROM clinics WHERE name = %s", (db.CLINIC_NAME,))
        row = clinic.fetchone()
        assert row is not None
        listed = db.seed_reference_lists(conn, int(row[0]), preflight.LIST_SIZES)
    print(f"pre-flight: encounters with the check on and off ({listed:,} list entries)")
    # On, off, off, on: whichever runs at a quieter moment of a shared machine, both had one
    # (bench/preflight.py keeps each one's better run).
    on, off = (preflight.CHECKED, "true"), (preflight.UNCHECKED, "false")
    for label, checks in (on, off, off, on):
        scenario = Scenario(label, "encounter", "/v1/telephone-encounters", (202,))
        with bench.gunicorn(label, SERVICE_APP, {"PREFLIGHT_CHECKS": checks}) as served:
            bench.measure(served, "service", scenario, auth=True)


def floors(
    bench: Bench, bodies_file: Path, ids: list[str], ids_file: Path, open_jobs: list[int]
) -> None:
    """The contract floors (bench/baselines.py), each mirroring service scenarios exactly.

    Measured after the service, so nothing they write changes what the service measured.
    The open jobs the service's webhooks settled are first put back as seeded, so the poll
    floor reads and the webhook floor settles what the service read and settled; the poll
    floor's ETags are fetched from the floor itself (its formula is the service's). The
    support floor runs support's two scenarios with the support token, as the service did.
    """
    assert bench.database is not None
    with db.connect(bench.database) as conn:
        reopened = db.reopen_jobs(conn, open_jobs)
    print(f"contract floors ({reopened:,} jobs the service's webhooks touched reopened)")
    with bench.gunicorn("poll_floor", "bench.baselines:poll_floor") as served:
        etags_file = etags_of(bench, served.port, ids, bench.work_dir / "etags-floor.txt")
        for scenario in (
            poll_scenario(bench, "poll_200", ids_file),
            poll_scenario(bench, "poll_304", etags_file, conditional=True),
        ):
            bench.measure(served, "poll_floor", scenario, auth=True)
    bench.results["memory"]["poll_floor"] = served.sampler.peaks.summary()
    for app_name, scenario in (
        ("webhook_floor", webhook_scenario(bodies_file)),
        ("submit_floor", submit_scenario()),
    ):
        with bench.gunicorn(app_name, f"bench.baselines:{app_name}") as served:
            bench.measure(served, app_name, scenario, auth=True)
        bench.results["memory"][app_name] = served.sampler.peaks.summary()
    if bench.support_token:
        with bench.gunicorn("support_floor", "bench.baselines:support_floor") as served:
            for scenario in support_scenarios(bench).values():
                conns = support_connections(bench)
                bench.measure(served, "support_floor", scenario, auth=True, connections=conns)
        bench.results["memory"]["support_floor"] = served.sampler.peaks.summary()


def support_connections(bench: Bench) -> tuple[int, ...]:
    """Support is a handful of people: one connection too, for the unloaded latency."""
    return (1, *bench.options.connections)


def support_scenarios(bench: Bench) -> dict[str, Scenario]:
    """Support's first page: by filters (`GET /v1/jobs?…`) and by MRN (`POST /v1/jobs/search`).

    Filters mix rare and common statuses, kinds and a created range; MRNs are the seed's
    (`MRN<n>` for the telephone encounters, n = 1 mod 4), each matching one job.
    """
    opts = bench.options
    filters_file = bench.work_dir / "support-filters.txt"
    filters_file.write_text("".join(f"GET\t{query}\n" for query in support_filter_queries()))
    rng = random.Random(7)
    encounters = max(1, opts.jobs // 4)
    mrns = [4 * rng.randrange(encounters) + 1 for _ in range(SUPPORT_SEARCHES)]
    mrn_file = bench.work_dir / "support-mrn.txt"
    mrn_file.write_text("".join(f'POST\t{{"patient_mrn":"MRN{n}"}}\n' for n in mrns))
    env = {"BENCH_AUTH_TOKEN": bench.support_token}
    return {
        "support_filters": Scenario(
            "support_filters",
            "support",
            "/v1/jobs",
            (200,),
            {**env, "BENCH_QUERIES_FILE": str(filters_file)},
        ),
        "support_mrn": Scenario(
            "support_mrn",
            "support",
            "/v1/jobs",
            (200,),
            {**env, "BENCH_QUERIES_FILE": str(mrn_file)},
        ),
    }


def support_filter_queries() -> list[str]:
    """Support's list filters: rare and common statuses, kinds, overdue, created ranges."""
    newest = datetime.now(UTC)
    month = [(newest.replace(day=1) - _months(k)).date().isoformat() for k in range(0, 13, 3)]
    return [
        "",
        "?status=failed",
        "?status=processing",
        "?status=completed",
        "?kind=telephone_encounter",
        "?status=failed&kind=note",
        "?overdue=true",
        *(f"?created_from={a}&created_to={b}" for b, a in itertools.pairwise(month)),
    ]


def support_breakdown(bench: Bench, served: Served, mix: Scenario) -> None:
    """Each support filter alone, at 1 connection, briefly: one slow filter cannot hide.

    The mix's p95 is the target; this says which filter makes it. No warm-up (the mix just
    ran) and one short run each, so it adds about 11 x (BREAKDOWN_SECONDS + 1) s.
    """
    seconds = min(bench.options.seconds, 1.0 if bench.options.quick else BREAKDOWN_SECONDS)
    time.sleep(BREAKDOWN_SETTLE_SECONDS)
    for index, query in enumerate(support_filter_queries()):
        queries_file = bench.work_dir / f"support-filter-{index}.txt"
        queries_file.write_text(f"GET\t{query}\n")
        scenario = Scenario(
            "support_filter",
            mix.script,
            mix.path,
            mix.expected,
            {**mix.env, "BENCH_QUERIES_FILE": str(queries_file)},
        )
        env = bench.wrk_env(scenario, auth=True)
        row = bench.measure_once(served, "service", scenario, 1, env, seconds=seconds)
        row["label"] = query.removeprefix("?") or "(no filter)"
        bench.results["runs"].append(row)
        print(
            f"  {'service':<12} {'support_filter':<14} c=1    {row['rps']:>7.0f} req/s  "
            f"p50 {row['p50_ms']:>6.1f} p95 {row['p95_ms']:>6.1f} "
            f"p99 {row['p99_ms']:>6.1f} ms  errors {row['errors']}  {row['label']}",
            flush=True,
        )


def _months(count: int) -> timedelta:
    return timedelta(days=30.44 * count)


def profile(
    bench: Bench, served: Served, scenarios: dict[str, Scenario], etag_ids: list[str]
) -> None:
    """Record py-spy profiles of the gunicorn workers under 32-connection load."""
    report.add_ratios(bench.results["runs"])
    bench.results["targets"] = [v.as_dict() for v in report.verdicts(bench.results)]
    missed = {
        name
        for name in scenarios
        for item in bench.results["targets"]
        if item["name"].startswith(name) and not item["pass"]
    }
    chosen = list(scenarios) if bench.options.profile == "all" else sorted(missed)
    if not chosen:
        print("profiles: every service target passed; nothing to profile")
        return
    py_spy = _ensure_py_spy()
    port = served.port
    out_dir = RESULTS_DIR / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    bench.results["profiles"] = {}
    for name in chosen:
        scenario = scenarios[name]
        if name == "poll_304":  # webhooks settled some jobs since: refresh the ETags
            etags = load.fetch_etags(port, etag_ids, token=bench.token)
            load.write_ids(Path(scenario.env["BENCH_IDS_FILE"]), etags)
        for mode, flags in PROFILE_MODES.items():
            raw = out_dir / f"{name}-{mode}.txt"
            _record_profile(bench, served, py_spy, scenario, raw, flags)
            summary: dict[str, Any] = (
                report.summarize_profile(raw) if raw.exists() else {"samples": 0}
            )
            key = f"{name}-{mode}"
            bench.results["profiles"][key] = {"file": str(raw.relative_to(ROOT)), **summary}
            print(f"profile {key}: {summary.get('samples', 0)} samples -> {raw.relative_to(ROOT)}")
            for package, pct in summary.get("self_by_package", [])[:6]:
                print(f"    self {pct:5.1f}%  {package}")


# wall: every thread that is not idle in the kernel (psycopg's wait loop counts, so time
# spent waiting for PostgreSQL shows up); gil: only the thread holding the GIL (Python CPU).
PROFILE_MODES = {"wall": [], "gil": ["--gil"]}


def _record_profile(
    bench: Bench, served: Served, py_spy: str, scenario: Scenario, raw: Path, flags: list[str]
) -> None:
    """py-spy the gunicorn master and its workers while wrk drives 32 connections."""
    seconds = bench.options.profile_seconds
    argv = [py_spy, "record", "--pid", str(served.pid), "--subprocesses", "--rate", "250"]
    argv += ["--duration", str(int(seconds)), "--format", "raw", "--nonblocking"]
    argv += [*flags, "--output", str(raw)]
    spy = bench.processes.start(f"py-spy-{raw.stem}", argv, bench.base_env())
    try:
        time.sleep(1.0)  # let py-spy attach before the load starts
        env = bench.wrk_env(scenario, auth=True)
        bench._wrk(served.port, f"profile-{raw.stem}", scenario, 32, seconds, env)
        spy.popen.wait(timeout=seconds + 30)
    finally:
        bench.processes.stop(spy, timeout=5)


def _ensure_py_spy() -> str:
    """py-spy from the venv, installed from PyPI with the venv's pip on first use."""
    path = venv_tool("py-spy")
    if not Path(path).exists():
        print("installing py-spy into .venv (pip install py-spy)")
        subprocess.run(
            [str(VENV_BIN / "pip"), "install", "--quiet", "py-spy"],
            check=True,
            timeout=300,
        )
        path = venv_tool("py-spy")
    return path


# --- worker throughput ----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerCase:
    delay_ms: float
    concurrency: int | None  # None: WORKER_CONCURRENCY unset (the service's default)
    what_if: bool
    processes: int | None = None  # None: WORKER_PROCESSES unset (one process)
    per_core: bool = False  # WORKER_PROCESSES = --web-concurrency, set when the run starts


# The service's defaults (one process), then what-ifs: the worker as it was (one call at a
# time), enough threads for a 200 ms Cobalt; last, the configuration the README gives a
# dyno, one process per core, taken as the web's WEB_CONCURRENCY is (the bench's
# --web-concurrency, 2 on this 2-core machine). The targets are judged on the better of the
# two configured cases, and the verdict names both.
WORKER_CASES = (
    WorkerCase(0, None, False),
    WorkerCase(200, None, False),
    WorkerCase(0, 1, True),
    WorkerCase(200, 16, True),
    WorkerCase(0, None, False, per_core=True),
)


def worker_throughput(bench: Bench, clinic_id: int, client_id: int) -> None:
    """Jobs leaving `pending` per second, counted in the database, against the Cobalt stub."""
    assert bench.database is not None
    opts = bench.options
    next_number = opts.jobs + 1
    # With --profile, the first case runs once more under py-spy; that pass is not measured.
    profiled = [(WORKER_CASES[0], RESULTS_DIR / "profiles" / "worker-0ms.txt")]
    cases = [
        dataclasses.replace(case, processes=opts.web_concurrency) if case.per_core else case
        for case in WORKER_CASES
    ]
    plan = [(case, None) for case in cases] + (profiled if opts.profile != "none" else [])
    for case, profile_path in plan:
        expected_rate = 400 if case.delay_ms == 0 else 100
        batch = int(expected_rate * opts.worker_seconds * 1.5)
        with db.connect(bench.database) as conn:
            db.settle_open_jobs(conn)
            values = db.SeedValues.make(bench.phi_keys, bench.phi_search_key)
            db.seed_jobs(
                conn,
                next_number,
                next_number + batch - 1,
                clinic_id=clinic_id,
                client_id=client_id,
                values=values,
                pending=True,
            )
            conn.execute("ANALYZE jobs")
        next_number += batch
        port = free_port()
        stub = bench.processes.start(
            f"cobalt-stub-{case.delay_ms:.0f}",
            [
                sys.executable,
                *("-m", "bench.cobalt_stub"),
                *("--port", str(port)),
                *("--delay-ms", str(case.delay_ms)),
            ],
            bench.base_env(),
        )
        try:
            wait_http_ready(stub, f"http://127.0.0.1:{port}/healthz")
            env = bench.worker_env(port)
            if case.concurrency is not None:
                env["WORKER_CONCURRENCY"] = str(case.concurrency)
            if case.processes is not None:
                env["WORKER_PROCESSES"] = str(case.processes)
            row = _run_worker(bench, env, batch, case, profile_path)
        finally:
            bench.processes.stop(stub, timeout=5)
        if profile_path is not None:
            print(f"  (profiled pass, not measured: {row['jobs_per_s']:.1f} jobs/s)")
            continue
        bench.results["worker"].append(row)
        print(
            f"  worker Cobalt {case.delay_ms:>3.0f} ms, concurrency {row['concurrency']:<10} "
            f"processes {row['processes']} "
            f"{row['jobs_per_s']:>7.1f} jobs/s  RSS {row['rss_peak_mb']:.0f} MB",
            flush=True,
        )


def _run_worker(
    bench: Bench,
    env: dict[str, str],
    batch: int,
    case: WorkerCase,
    profile_path: Path | None = None,
) -> dict[str, Any]:
    """Start `webhook-service worker`, count pending jobs until drained or time is up."""
    assert bench.database is not None
    name = f"worker-{case.delay_ms:.0f}ms-{case.concurrency or 'default'}-{case.processes or 1}p"
    proc = bench.processes.start(name, [venv_tool("webhook-service"), "worker"], env)
    spies = _start_worker_profiles(bench, proc.pid, profile_path) if profile_path else []
    samples: list[tuple[float, int]] = []
    try:
        with MemorySampler(proc.pid) as sampler, db.connect(bench.database) as conn:
            deadline = time.monotonic() + bench.options.worker_seconds + 15
            started = False
            while time.monotonic() < deadline:
                if not proc.alive():
                    raise RuntimeError(f"worker exited early:\n{proc.tail()}")
                now, pending = time.monotonic(), db.count_pending(conn)
                samples.append((now, pending))
                if not started and pending < batch:
                    started = True  # measure from the first job out, for worker_seconds
                    deadline = now + bench.options.worker_seconds
                if pending == 0:
                    break
                time.sleep(0.25)
    finally:
        for spy in spies:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.popen.wait(timeout=15)
            bench.processes.stop(spy, timeout=5)
        bench.processes.stop(proc)
    if profile_path is not None:
        for mode in PROFILE_MODES:
            output = profile_path.with_name(f"{profile_path.stem}-{mode}.txt")
            if output.exists():
                bench.results.setdefault("profiles", {})[output.stem] = {
                    "file": str(output.relative_to(ROOT)),
                    **report.summarize_profile(output),
                }
    moving = [sample for sample in samples if sample[1] < batch]
    rate = 0.0
    if len(moving) >= 2:
        (t0, p0), (t1, p1) = moving[0], moving[-1]
        rate = (p0 - p1) / (t1 - t0) if t1 > t0 else 0.0
    return {
        "cobalt_delay_ms": case.delay_ms,
        "concurrency": str(case.concurrency) if case.concurrency is not None else "default",
        "processes": case.processes or 1,
        "what_if": case.what_if,
        "batch": batch,
        "jobs_per_s": round(rate, 1),
        "left_pending": samples[-1][1] if samples else batch,
        # Each worker process's: the command itself, or each of the processes it forks.
        "rss_peak_mb": round(
            max([sampler.peaks.root_peak_kib, *sampler.peaks.child_peaks_kib.values()]) / 1024, 1
        ),
    }


def _start_worker_profiles(bench: Bench, pid: int, path: Path) -> list[Started]:
    """py-spy on the worker for up to 10 s: GIL samples (Python CPU) and wall samples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seconds = str(int(min(bench.options.worker_seconds, 10)))
    started = []
    for mode, flags in PROFILE_MODES.items():
        output = path.with_name(f"{path.stem}-{mode}.txt")
        argv = [_ensure_py_spy(), "record", "--pid", str(pid), "--rate", "250", *flags]
        argv += ["--duration", seconds, "--format", "raw", "--nonblocking"]
        argv += ["--output", str(output)]
        started.append(bench.processes.start(f"py-spy-{output.stem}", argv, bench.base_env()))
    return started


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="~2 min run: 100k jobs, 3 s runs")
    parser.add_argument("--jobs", type=int, help="jobs to seed (default 1,000,000; quick 100,000)")
    parser.add_argument("--seconds", type=float, help="seconds per wrk run (default 10; quick 3)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per scenario (3; quick 1)")
    parser.add_argument(
        "--worker-seconds", type=float, help="seconds per worker case (default 15; quick 4)"
    )
    parser.add_argument(
        "--connections",
        default=",".join(map(str, CONNECTIONS)),
        help="wrk connection counts (default 8,32,128)",
    )
    parser.add_argument("--web-concurrency", type=int, default=2, help="WEB_CONCURRENCY (2)")
    parser.add_argument(
        "--server-url",
        default=os.environ.get("BENCH_DATABASE_URL")
        or os.environ.get("TEST_DATABASE_URL")
        or "postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server URL the bench can create databases on",
    )
    parser.add_argument("--db-name", default="webhook_bench")
    parser.add_argument("--keep-db", action="store_true", help="leave the bench database")
    parser.add_argument(
        "--auth",
        choices=["auto", "none"],
        default="auto",
        help="auto: create a front-end API client and send its bearer token (if the "
        "service has `webhook-service clients`); none: send no Authorization header",
    )
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument(
        "--profile",
        choices=["none", "missed", "all"],
        default="none",
        help="record py-spy profiles of the service scenarios (missed targets, or all)",
    )
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--skip-worker", action="store_true")
    parser.add_argument(
        "--only-preflight",
        action="store_true",
        help="only what the pre-flight check costs a submission (and its baselines)",
    )
    parser.add_argument(
        "--only-latency",
        action="store_true",
        help="only push latency (issue 20): python -m bench.latency, on its own database",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "latest.json")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    jobs = args.jobs or (100_000 if quick else 1_000_000)
    if jobs < 1_000:
        parser.error("--jobs must be at least 1000")
    return Options(
        jobs=jobs,
        seconds=args.seconds or (3.0 if quick else 10.0),
        warmup=args.warmup if args.warmup is not None else (1.0 if quick else 3.0),
        worker_seconds=args.worker_seconds or (4.0 if quick else 15.0),
        connections=tuple(int(c) for c in args.connections.split(",") if c.strip()),
        web_concurrency=args.web_concurrency,
        server_url=args.server_url,
        db_name=args.db_name,
        keep_db=args.keep_db,
        auth=args.auth,
        wrk_threads=args.wrk_threads,
        profile=args.profile,
        profile_seconds=args.profile_seconds,
        skip_worker=args.skip_worker,
        quick=quick,
        only_preflight=bool(args.only_preflight),
        only_latency=bool(args.only_latency),
        output=args.output,
    )


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.only_latency:
        # bench.latency builds on this module's Bench: imported here, not at the top.
        from bench import latency

        return latency.main(
            ["--server-url", opts.server_url, *(["--quick"] if opts.quick else [])]
            + (["--keep-db"] if opts.keep_db else [])
        )
    load.require_wrk()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    work_dir = RESULTS_DIR / "work"
    started = time.perf_counter()
    log_dir = RESULTS_DIR / "logs"
    for old in log_dir.glob("*.log"):  # this run's logs only
        old.unlink()
    with Processes(log_dir) as processes:
        work_dir.mkdir(parents=True, exist_ok=True)
        bench = Bench(opts, processes, work_dir)
        bench.results = {
            "meta": _meta(opts),
            "seed": {},
            "runs": [],
            "growth": {},
            "memory": {},
            "worker": [],
        }
        try:
            run_all(bench)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping everything the bench started", file=sys.stderr)
            return 130
        finally:
            processes.stop_all()
            if bench.database is not None and not opts.keep_db:
                with contextlib.suppress(Exception):
                    db.drop_database(bench.database)
    bench.results["meta"]["elapsed_s"] = round(time.perf_counter() - started, 1)
    report.add_ratios(bench.results["runs"])
    bench.results["contract_floor"] = report.contract_floor(bench.results)
    bench.results["support_floor"] = report.support_floor(bench.results)
    bench.results["preflight"] = preflight.summary(bench.results["runs"])
    bench.results["targets"] = [v.as_dict() for v in report.verdicts(bench.results)]
    table = report.format_table(bench.results)
    if "latency" in bench.results:
        latency_report.write(bench.results["latency"])
        table += "\n\n" + latency_report.format_table(bench.results["latency"])
    report.write_results(bench.results, opts.output)
    (opts.output.with_suffix(".md")).write_text(table + "\n")
    print()
    print(table)
    print(f"\nwrote {opts.output} in {bench.results['meta']['elapsed_s']:.0f} s")
    return 0


def run_all(bench: Bench) -> None:
    opts = bench.options
    clinic_id, client_id = prepare_database(bench)
    assert bench.database is not None
    if opts.only_preflight:
        # Just issue 21's part: the bare baseline it is compared with, then the check on/off.
        with bench.gunicorn("constant", "bench.baselines:constant") as served:
            constant = Scenario("constant", "constant", "/", (200,))
            bench.measure(served, "constant", constant, auth=False)
        with bench.gunicorn("submit", SERVICE_APP) as served:
            bench.measure(served, "service", submit_scenario(), auth=True)
        preflight_cost(bench)
        return
    small = min(SMALL_JOBS, opts.jobs)
    seconds = seed(bench, 1, small, clinic_id, client_id)
    with db.connect(bench.database) as conn:
        hot_ids = db.sample_job_ids(conn, small)
    hot_file = load.write_ids(bench.work_dir / "ids-newest.txt", hot_ids)
    small_rps = growth(bench, small, hot_file)
    if opts.jobs > small:
        seconds += seed(bench, small + 1, opts.jobs, clinic_id, client_id)
    large_rps = growth(bench, opts.jobs, hot_file)
    bench.results["growth"] = {
        "small_jobs": small,
        "small_rps": small_rps,
        "large_jobs": opts.jobs,
        "large_rps": large_rps,
        "ratio": round(large_rps / small_rps, 3) if small_rps else None,
    }
    with db.connect(bench.database) as conn:
        bench.results["seed"] = {
            "jobs": db.count_jobs(conn),
            "seconds": round(seconds, 1),
            "table_bytes": db.table_sizes(conn),
        }
    print(f"seeded {opts.jobs:,} jobs in {seconds:.1f} s")
    open_jobs = list(range(db.OPEN_EVERY, opts.jobs + 1, db.OPEN_EVERY))
    bodies_file = load.write_webhook_bodies(
        bench.work_dir / "webhooks.txt",
        count=5_000 if opts.quick else 20_000,
        secret=bench.webhook_secret,
        job_numbers=open_jobs,
    )
    baselines(bench, bodies_file)
    with db.connect(bench.database) as conn:
        ids = db.sample_job_ids(conn, POLL_SAMPLE)
    ids_file = load.write_ids(bench.work_dir / "ids.txt", ids)
    service(bench, bodies_file, ids, ids_file)
    preflight_cost(bench)
    floors(bench, bodies_file, ids, ids_file, open_jobs)
    # Push latency before the worker's cases, which settle every open job first.
    from bench import latency  # it builds on this module's Bench: not imported at the top

    plan = latency.Plan.quick() if opts.quick else latency.Plan()
    if opts.jobs >= plan.open_jobs * db.OPEN_EVERY:
        bench.results["latency"] = latency.measure(bench, plan)
    else:
        print(f"push latency skipped: it needs {plan.open_jobs * db.OPEN_EVERY:,} jobs seeded")
    if not opts.skip_worker:
        print("worker throughput (Cobalt stub)")
        worker_throughput(bench, clinic_id, client_id)


def _gunicorn_setting(name: str) -> Any:
    """A value from config/gunicorn.conf.py as the bench's gunicorn sees it (no env overrides)."""
    saved = {
        k: os.environ.pop(k) for k in ("GUNICORN_THREADS", "WEB_CONCURRENCY") if k in os.environ
    }
    # The config, meant for gunicorn's process, turns stderr and uncaught exceptions into log
    # lines (`capture_stray_output`); in the bench, with no logging set up, they vanished: a
    # failing run exited 1 without a word. The bench keeps its own.
    hooks = (sys.stderr, sys.excepthook, threading.excepthook)
    try:
        return runpy.run_path(str(ROOT / GUNICORN_CONFIG)).get(name)
    finally:
        os.environ.update(saved)
        sys.stderr, sys.excepthook, threading.excepthook = hooks
        logging.captureWarnings(False)


def _meta(opts: Options) -> dict[str, Any]:
    def git(*args: str) -> str:
        # Read-only: --no-optional-locks keeps `git status` from rewriting the index.
        done = subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return done.stdout.strip()

    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "cpus": os.cpu_count(),
        "jobs": opts.jobs,
        "quick": opts.quick,
        "seconds_per_run": opts.seconds,
        "warmup_seconds": opts.warmup,
        "connections": list(opts.connections),
        "web_concurrency": opts.web_concurrency,
        "gunicorn_threads": _gunicorn_setting("threads"),
        "gunicorn_worker_class": _gunicorn_setting("worker_class"),
        "gunicorn_max_requests": _gunicorn_setting("max_requests"),
        "wrk_threads": opts.wrk_threads,
    }
