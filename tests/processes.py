"""Start the whole system as real processes on loopback, for end-to-end and browser tests.

`running_system(database_url, tmp_dir)` starts the Cobalt sandbox, migrates the database with
the Procfile's `release` command, creates a `frontend` API client, then starts the `web`
process (gunicorn exactly as the Procfile says, bound to a free loopback port, two
processes) and the `worker`, all wired together: the sandbox signs its webhooks to the web
process with a secret both share. It waits until each is ready, writes each one's output to
a file in `tmp_dir` (the tails are printed when anything fails), and always stops
everything: SIGTERM, then SIGKILL for whatever is left in each process group.

For fault injection (`tests/test_faults.py`, `reliability/run.py`): `restart_worker` kills
the worker with SIGKILL and starts a new one, `child_pids` finds gunicorn's worker processes,
and `throwaway_postgres_cluster` runs a PostgreSQL cluster of its own that a test may stop.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests
from sqlalchemy.engine import make_url

from webhook_service.sandbox.config import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
)
from webhook_service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's scripts: gunicorn, webhook-service
WEBHOOK_SECRET = "whsec_e2e_shared"
STARTUP_SECONDS = 30.0
STOP_SECONDS = 10.0
TAIL_LINES = 40


@dataclass
class Process:
    """One started process and the file its stdout and stderr go to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output file)"
        return "\n".join(text.splitlines()[-lines:])

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines the process wrote (other lines skipped)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                found.append(parsed)
        return found


@dataclass
class RunningSystem:
    """What a test needs to drive the system: the URLs and the processes."""

    web_url: str
    sandbox_url: str
    token: str = ""  # a `frontend` client's bearer token
    processes: dict[str, Process] = field(default_factory=dict)
    environ: dict[str, str] = field(default_factory=dict)  # what every process was given
    tmp_dir: Path | None = None  # where their output files are
    database_url: str = ""
    retired: list[Process] = field(default_factory=list)  # killed on purpose by a test

    def api(self) -> requests.Session:
        """An HTTP session that sends the front end's bearer token."""
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.token}"
        return session

    def tails(self) -> str:
        return "\n".join(
            f"----- {p.name} (exit code {p.popen.poll()}) {p.log_path} -----\n{p.tail()}"
            for p in [*self.retired, *self.processes.values()]
        )

    def sandbox_submissions(self) -> list[dict[str, Any]]:
        response = requests.get(f"{self.sandbox_url}/_sandbox/submissions", timeout=5)
        response.raise_for_status()
        submissions: list[dict[str, Any]] = response.json()["submissions"]
        return submissions

    def server_errors(self) -> list[dict[str, Any]]:
        """Requests the web process answered with a 5xx, from its request log."""
        return [
            line
            for line in self.processes["web"].log_lines()
            if line.get("message") == "request" and int(line.get("status", 0)) >= 500
        ]


class StartupFailed(RuntimeError):
    pass


@contextmanager
def throwaway_postgres_database(server_url: str, prefix: str = "e2e") -> Iterator[str]:
    """An empty database on the server at `server_url` (the caller migrates it), then dropped."""
    server = make_url(server_url)
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"webhook_service_{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def capped_postgres_database(server_url: str, limit: int) -> Iterator[str]:
    """An empty database owned by a new role allowed `limit` connections (as a small hosted
    plan is), as that role's URL (the caller migrates it); then both dropped."""
    server = make_url(server_url)
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    role = f"wh_capped_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{role}' CONNECTION LIMIT {limit}")
        conn.execute(f'CREATE DATABASE "{role}" OWNER "{role}"')
    try:
        yield server.set(
            drivername="postgresql+psycopg", database=role, username=role, password=role
        ).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{role}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def procfile_command(name: str, procfile: Path = ROOT / "Procfile") -> list[str]:
    """A Procfile line as argv, its program resolved in this interpreter's venv."""
    for line in procfile.read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep and key.strip() == name:
            argv = shlex.split(command)
            return [str(BIN / argv[0]), *argv[1:]]
    raise LookupError(f"no {name!r} line in {procfile}")


def base_environment(
    database_url: str, runtime_dir: Path, overrides: Mapping[str, str]
) -> dict[str, str]:
    """This process's environment without any of the service's own settings, plus ours."""
    ours = {str(f.validation_alias) for f in Settings.model_fields.values()}
    ours |= {"PORT", "WEB_CONCURRENCY", "GUNICORN_THREADS", "FORWARDED_ALLOW_IPS"}
    env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("SANDBOX_")}
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            # gunicorn's control socket defaults to ~/.gunicorn/gunicorn.ctl, shared by every
            # gunicorn of the user (a `make run` included); give each run its own.
            "XDG_RUNTIME_DIR": str(runtime_dir),
            "DATABASE_URL": database_url,
            "WEBHOOK_SERVICE_ENV": "test",
            "SECRET_KEY": "e2e-not-secret",
            "COBALT_CLIENT_ID": DEFAULT_CLIENT_ID,
            "COBALT_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
            "COBALT_ACCESS_TOKEN": DEFAULT_ACCESS_TOKEN,
            "COBALT_WEBHOOK_SECRETS": WEBHOOK_SECRET,
            "WORKER_POLL_SECONDS": "0.2",
            "WEB_CONCURRENCY": "2",
            "LOG_LEVEL": "INFO",
        }
    )
    env.update(overrides)
    return env


def _start(
    name: str,
    argv: list[str],
    env: Mapping[str, str],
    tmp_dir: Path,
    system: RunningSystem,
    *,
    log_name: str | None = None,
) -> Process:
    log_path = tmp_dir / f"{log_name or name}.log"
    with log_path.open("wb") as output:
        # Its own process group, so the last resort (SIGKILL) reaches gunicorn's children too.
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    process = Process(name, popen, log_path)
    system.processes[name] = process
    return process


def _stop_all(processes: list[Process]) -> None:
    """SIGTERM to each (in the order given), then SIGKILL to whatever is left of its group."""
    for process in processes:
        if process.popen.returncode is None:
            process.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for process in processes:
        if process.popen.returncode is not None:
            continue
        _wait_unreaped(process.popen.pid, deadline)
        # The leader is exited but not reaped, so its pid (the group's id) cannot have been
        # reused: this reaches only what is left of our own group (e.g. an orphaned gunicorn
        # worker), or the leader itself if it ignored SIGTERM.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait(STOP_SECONDS)


def _wait_unreaped(pid: int, deadline: float) -> None:
    """Wait until `pid` has exited or the deadline passed, leaving it for Popen to reap."""
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return
        time.sleep(0.02)


def _wait_until(what: str, ready: Callable[[], bool], system: RunningSystem) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        for process in system.processes.values():
            if process.popen.poll() is not None:
                raise StartupFailed(f"{process.name} exited while waiting for {what}")
        if ready():
            return
        time.sleep(0.05)
    raise StartupFailed(f"timed out after {STARTUP_SECONDS:.0f} s waiting for {what}")


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _logged(process: Process, message: str) -> bool:
    return message in process.log_path.read_text(errors="replace")


@contextmanager
def running_system(
    database_url: str,
    tmp_dir: Path,
    *,
    environment: str = "test",
    processing_seconds: float = 0.3,
    env: Mapping[str, str] | None = None,
) -> Iterator[RunningSystem]:
    """Migrate `database_url`, start sandbox, web and worker, yield, then stop them all."""
    web_port = free_port()
    sandbox_port = free_port()
    while sandbox_port == web_port:  # the OS may hand the same free port out twice
        sandbox_port = free_port()
    web_url = f"http://127.0.0.1:{web_port}"
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    environ = base_environment(
        database_url,
        tmp_dir,
        {
            "WEBHOOK_SERVICE_ENV": environment,
            "PORT": str(web_port),
            "COBALT_API_URL": f"{sandbox_url}/v1",
            **(env or {}),
        },
    )
    system = RunningSystem(
        web_url, sandbox_url, environ=environ, tmp_dir=tmp_dir, database_url=database_url
    )
    sandbox_argv = [
        str(BIN / "webhook-service"),
        "sandbox",
        "--port",
        str(sandbox_port),
        "--processing-seconds",
        str(processing_seconds),
        "--webhook-url",
        f"{web_url}/webhooks/cobalt",
        "--webhook-secret",
        WEBHOOK_SECRET,
    ]
    web_argv = [*procfile_command("web"), "--bind", f"127.0.0.1:{web_port}"]
    try:
        try:
            # The sandbox needs no database: it boots while the release step migrates.
            _start("sandbox", sandbox_argv, environ, tmp_dir, system)
            _migrate(environ, tmp_dir)
            system.token = _create_client(environ, tmp_dir, "e2e-frontend", "frontend")
            _start("web", web_argv, environ, tmp_dir, system)
            worker = _start("worker", procfile_command("worker"), environ, tmp_dir, system)
            _wait_until("the sandbox", lambda: _answers(f"{sandbox_url}/_sandbox"), system)
            _wait_until("the web process", lambda: _answers(f"{web_url}/readyz"), system)
            _wait_until("the worker", lambda: _logged(worker, "worker started"), system)
            yield system
        finally:
            # The worker first (it calls the other two); all at once, to be quick.
            _stop_all(list(reversed(system.processes.values())))
    except GeneratorExit:
        raise
    except BaseException:
        # Everything has stopped by now, so the tails are complete; pytest shows stderr.
        print(system.tails(), file=sys.stderr)
        raise


def start_another_web(system: RunningSystem, processes: int = 1) -> str:
    """Start a second `web` (the Procfile's gunicorn, on a port of its own) beside the first,
    on the same database; return its URL. The sandbox's webhooks still go to the first, so a
    request held here is answered by a change another process made. Stopped with the rest."""
    port = free_port()
    assert system.tmp_dir is not None
    environ = {**system.environ, "PORT": str(port), "WEB_CONCURRENCY": str(processes)}
    argv = [*procfile_command("web"), "--bind", f"127.0.0.1:{port}"]
    _start("web2", argv, environ, system.tmp_dir, system)
    url = f"http://127.0.0.1:{port}"
    _wait_until("the second web process", lambda: _answers(f"{url}/readyz"), system)
    return url


def _run(argv: list[str], environ: Mapping[str, str], log_path: Path) -> str:
    """Run a one-off command to completion; its stdout, or StartupFailed with its output."""
    result = subprocess.run(
        argv, cwd=ROOT, env=dict(environ), capture_output=True, timeout=60, check=False
    )
    stdout = result.stdout.decode(errors="replace")
    log_path.write_text(stdout + result.stderr.decode(errors="replace"))
    if result.returncode != 0:
        raise StartupFailed(f"{argv[1:]} exited {result.returncode}:\n{log_path.read_text()}")
    return stdout


def _migrate(environ: Mapping[str, str], tmp_dir: Path) -> None:
    """Run the Procfile's `release` command (migrate to head)."""
    _run(procfile_command("release"), environ, tmp_dir / "release.log")


def _create_client(environ: Mapping[str, str], tmp_dir: Path, name: str, role: str) -> str:
    """`webhook-service clients create`: the token is alone on the last line of output."""
    argv = [str(BIN / "webhook-service"), "clients", "create", name, "--role", role]
    stdout = _run(argv, environ, tmp_dir / f"client-{name}.log")
    return stdout.strip().splitlines()[-1].strip()


# --- Faults: kill and restart processes, restart the database --------------------------------


def kill_group(process: Process) -> None:
    """SIGKILL a started process and everything in its process group, and reap it."""
    if process.popen.returncode is None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait(STOP_SECONDS)


def restart_worker(system: RunningSystem) -> Process:
    """`kill -9` the worker (its whole group), then start a fresh one and wait until it runs.

    The killed one moves to `system.retired`, so its output is still shown when something
    fails; the new one is `system.processes["worker"]`.
    """
    assert system.tmp_dir is not None
    old = system.processes.pop("worker")
    kill_group(old)
    system.retired.append(old)
    generation = sum(1 for p in system.retired if p.name == "worker")
    worker = _start(
        "worker",
        procfile_command("worker"),
        system.environ,
        system.tmp_dir,
        system,
        log_name=f"worker-{generation + 1}",
    )
    _wait_until("the restarted worker", lambda: _logged(worker, "worker started"), system)
    return worker


def child_pids(parent: int) -> list[int]:
    """Live children of `parent` (e.g. a gunicorn master's workers), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces or parentheses: the fields start after the last ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == parent and fields[0] != "Z":
            found.append(int(entry))
    return found


@dataclass
class PostgresCluster:
    """A throwaway PostgreSQL cluster on a loopback port, which a test may stop and start."""

    bin_dir: Path
    data_dir: Path
    port: int
    run_as: list[str]  # `runuser -u postgres --` when we are root (initdb refuses root)

    @property
    def server_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        argv = [*self.run_as, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args]
        subprocess.run(argv, check=True, capture_output=True, timeout=timeout)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1"
        self._pg_ctl("-o", options, "-l", str(self.data_dir / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "-w", "stop")

    def running(self) -> bool:
        argv = [*self.run_as, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "status"]
        return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0


def _postgres_bin_dir() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise StartupFailed("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")


@contextmanager
def throwaway_postgres_cluster() -> Iterator[PostgresCluster]:
    """initdb a new cluster in a temporary directory, start it, and always remove it.

    As root the server runs as the `postgres` OS user (PostgreSQL refuses to run as root).
    """
    bin_dir = _postgres_bin_dir()
    base = Path(tempfile.mkdtemp(prefix="webhook-service-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        import pwd

        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    cluster = PostgresCluster(bin_dir, base / "data", free_port(), run_as)
    try:
        subprocess.run(
            [
                *run_as,
                str(bin_dir / "initdb"),
                "-D",
                str(cluster.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        cluster.start()
        yield cluster
    finally:
        with suppress(subprocess.SubprocessError, OSError):
            if cluster.running():
                cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
