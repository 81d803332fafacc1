"""Processes the bench starts (gunicorn, worker, Cobalt stub, wrk, py-spy): each in its own
session, always stopped (SIGTERM to its group, SIGKILL after a bounded wait); and their
memory and CPU, read from /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The venv of the interpreter running the bench (`.venv/bin/python -m bench`): its console
# scripts (gunicorn, webhook-service, py-spy) are the ones the bench starts, also from a
# git worktree whose venv lives elsewhere.
VENV_BIN = Path(sys.prefix) / "bin"
STOP_SECONDS = 30.0  # gunicorn's graceful_timeout is 25 s
READY_SECONDS = 60.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Started:
    """One process the bench started, and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Processes:
    """Starts processes and guarantees they are stopped (use as a context manager)."""

    log_dir: Path
    started: list[Started] = field(default_factory=list)

    def __enter__(self) -> Processes:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], *, cwd: Path = ROOT
    ) -> Started:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Started(name, popen, log_path)
        self.started.append(proc)
        return proc

    def stop(self, proc: Started, timeout: float = STOP_SECONDS) -> None:
        """SIGTERM the process group, wait up to `timeout`, then SIGKILL it."""
        if proc.alive():
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.popen.wait(timeout=10)
        # Children that outlived their parent (a gunicorn worker mid-exit) go too.
        _signal_group(proc.pid, signal.SIGKILL)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.started)):
            with contextlib.suppress(Exception):
                self.stop(proc)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_http_ready(proc: Started, url: str, timeout: float = READY_SECONDS) -> None:
    """Wait until `url` answers 200, failing early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} was not ready within {timeout:.0f} s:\n{proc.tail()}")


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                found.extend(int(part) for part in text.split())
    return found


def _memory_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in KiB, or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    if "VmRSS" not in values:
        return None
    return values["VmRSS"], values.get("VmHWM", values["VmRSS"])


def rss_mb(master: int) -> list[float]:
    """Resident memory (MB) of each child of `master` now (a gunicorn's workers), sorted."""
    found = []
    for pid in children(master):
        memory = _memory_kib(pid)
        if memory is not None:
            found.append(round(memory[0] / 1024, 1))
    return sorted(found)


@dataclass
class MemoryPeaks:
    """Peak resident memory seen for a process tree: the root and each descendant."""

    root_peak_kib: int = 0
    child_peaks_kib: dict[int, int] = field(default_factory=dict)

    def summary(self) -> dict[str, float | int]:
        children = list(self.child_peaks_kib.values())
        return {
            "master_peak_mb": round(self.root_peak_kib / 1024, 1),
            "worker_peak_mb": round(max(children, default=0) / 1024, 1),
            "workers_seen": len(children),
        }


class MemorySampler:
    """Samples VmRSS/VmHWM of a process and its descendants on a thread, every `interval` s.

    VmHWM is the kernel's own high-water mark, so a spike between samples is still caught
    for as long as the process lives; gunicorn workers recycled by `max_requests` are
    new pids and are counted too.
    """

    def __init__(self, root_pid: int, interval: float = 0.25) -> None:
        self.root_pid = root_pid
        self.interval = interval
        self.peaks = MemoryPeaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample()
        self._stop.set()
        self._thread.join(timeout=5)

    def sample(self) -> None:
        root = _memory_kib(self.root_pid)
        if root is not None:
            self.peaks.root_peak_kib = max(self.peaks.root_peak_kib, *root)
        pending = children(self.root_pid)
        seen = 0
        while pending and seen < 1000:  # bounded: a gunicorn tree is a handful of pids
            pid = pending.pop()
            seen += 1
            memory = _memory_kib(pid)
            if memory is not None:
                old = self.peaks.child_peaks_kib.get(pid, 0)
                self.peaks.child_peaks_kib[pid] = max(old, *memory)
            pending.extend(children(pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int, *, reaped: bool) -> int:
    """utime+stime of `pid` (plus its reaped children's, when `reaped`), in clock ticks."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = text[text.rfind(")") + 2 :].split()  # fields from the 3rd (state) on
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return utime + stime + ((cutime + cstime) if reaped else 0)


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by one process (not its children)."""
    return _cpu_ticks(pid, reaped=False) / _TICKS


def tree_cpu_seconds(root_pid: int) -> float:
    """CPU time used so far by a process tree, including children that already exited.

    The root's cutime/cstime hold its reaped children (gunicorn workers recycled by
    max_requests, PostgreSQL backends whose connection closed); live descendants are
    added one by one.
    """
    total = _cpu_ticks(root_pid, reaped=True)
    pending = children(root_pid)
    seen = 0
    while pending and seen < 2000:
        pid = pending.pop()
        seen += 1
        total += _cpu_ticks(pid, reaped=False)
        pending.extend(children(pid))
    return total / _TICKS


def venv_tool(name: str) -> str:
    """A console script from the project's venv (gunicorn, webhook-service, py-spy)."""
    path = VENV_BIN / name
    return str(path) if path.exists() else name
