"""Load generation: the files wrk's Lua scripts read, ETag prefetching, and running wrk as
its own process against 127.0.0.1 only, for a bounded time, with a 5 s request timeout
(Cobalt abandons a webhook after 5 s).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.db import is_telephone_encounter
from bench.procs import Processes

LUA_DIR = Path(__file__).resolve().parent / "lua"
REQUEST_TIMEOUT_SECONDS = 5
_RESULT = re.compile(r"^BENCH_RESULT (\{.*\})\s*$", re.MULTILINE)


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles, and what went wrong."""

    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    expected: tuple[int, ...] = field(default=(200,))

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        """Socket errors and timeouts, plus every response that is not 2xx or 304."""
        bad_status = sum(
            count
            for status, count in self.statuses.items()
            if not (200 <= int(status) < 300 or int(status) == 304)
        )
        return sum(self.socket_errors.values()) + bad_status

    @property
    def unexpected(self) -> int:
        """Responses other than the scenario's expected status (e.g. a 200 in the 304 run)."""
        return sum(
            count for status, count in self.statuses.items() if int(status) not in self.expected
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "connections": self.connections,
            "requests": self.requests,
            "seconds": round(self.seconds, 2),
            "rps": round(self.rps, 1),
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "errors": self.errors,
            "unexpected_status": self.unexpected,
            "statuses": self.statuses,
            "socket_errors": self.socket_errors,
        }


def require_wrk() -> str:
    """The path of `wrk`, installed from Debian's package (with sudo unless root) if missing."""
    path = shutil.which("wrk")
    if path is not None:
        return path
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    print("wrk is not installed: apt-get update && apt-get install -y wrk", flush=True)
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        try:
            subprocess.run([*sudo, *argv], check=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            raise SystemExit(
                f"could not install wrk ({exc}): run `apt-get update && apt-get install -y wrk`"
            ) from None
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is still missing after `apt-get install -y wrk`")
    return path


def run_wrk(
    processes: Processes,
    *,
    name: str,
    script: str,
    port: int,
    connections: int,
    seconds: float,
    env: Mapping[str, str],
    threads: int = 1,
    expected: Sequence[int] = (200,),
) -> WrkResult:
    """Run wrk with `bench/lua/<script>.lua` and parse the script's BENCH_RESULT line."""
    argv = [
        require_wrk(),
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={REQUEST_TIMEOUT_SECONDS}s",
        "-s",
        str(LUA_DIR / f"{script}.lua"),
        f"http://127.0.0.1:{port}",
    ]
    run_env = {**env, "BENCH_LUA_DIR": str(LUA_DIR)}
    proc = processes.start(f"wrk-{name}", argv, run_env)
    try:
        proc.popen.wait(timeout=seconds + 60)
    finally:
        processes.stop(proc, timeout=5)
    output = proc.log_path.read_text(errors="replace")
    proc.log_path.unlink(missing_ok=True)  # one wrk log per run would pile up
    match = _RESULT.search(output)
    if match is None:
        raise RuntimeError(f"wrk ({name}) printed no result:\n{output[-2000:]}")
    raw = json.loads(match.group(1))
    latency = raw["latency_us"]
    errors = raw["errors"]
    return WrkResult(
        connections=connections,
        requests=int(raw["requests"]),
        seconds=raw["duration_us"] / 1e6,
        p50_ms=round(latency["p50"] / 1000, 2),
        p90_ms=round(latency["p90"] / 1000, 2),
        p95_ms=round(latency.get("p95", latency["p99"]) / 1000, 2),
        p99_ms=round(latency["p99"] / 1000, 2),
        max_ms=round(latency["max"] / 1000, 2),
        statuses={str(k): int(v) for k, v in raw["statuses"].items()},
        # wrk's "status" error count is responses >= 400, already in `statuses`.
        socket_errors={k: int(v) for k, v in errors.items() if k != "status"},
        expected=tuple(expected),
    )


def write_ids(path: Path, rows: Sequence[str] | Sequence[tuple[str, str]]) -> Path:
    """One id per line, or `id<TAB>etag` lines (poll.lua reads both)."""
    lines = [row if isinstance(row, str) else "\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_webhook_bodies(
    path: Path, *, count: int, secret: str, job_numbers: Sequence[int], seed: int = 7
) -> Path:
    """Signed Cobalt outcome events for the given jobs, one `signature<TAB>body` a line.

    `telephone_encounter.created` (with the encounter id) for a seeded telephone encounter,
    `note.created` (with the appointment id) for a note: the event Cobalt sends for that
    kind. Compact JSON, as Cobalt's `JSON.stringify` sends it; the signature is the
    lowercase hex HMAC-SHA256 of exactly these bytes.
    """
    rng = random.Random(seed)
    created = cobalt_time()
    lines = []
    for index in range(count):
        number = rng.choice(job_numbers)
        body = outcome_event(number, event_id=f"evt_bench_{seed}_{index}", created=created)
        lines.append(f"{sign(body, secret)}\t{body}")
    path.write_text("\n".join(lines) + "\n")
    return path


def outcome_event(number: int, *, event_id: str, created: str) -> str:
    """The success event Cobalt sends for seeded job `number`, by its kind, as compact JSON."""
    if is_telephone_encounter(number):
        event_type, data = "telephone_encounter.created", {"telephone_encounter_id": f"te_{number}"}
    else:
        event_type, data = "note.created", {"appointment_id": f"appt-{number}"}
    return cobalt_event(event_type, data, event_id=event_id, created=created, job_id=f"cj_{number}")


def cobalt_event(
    event_type: str, data: dict[str, str], *, event_id: str, created: str, job_id: str | None
) -> str:
    """A Cobalt event as its `JSON.stringify` sends it (compact); `job_id` only when given
    (a note's event may carry none: it is matched by `data.appointment_id`)."""
    event: dict[str, object] = {"id": event_id, "object": "event", "created": created}
    event["type"] = event_type
    if job_id is not None:
        event["job_id"] = job_id
    event["data"] = data
    return json.dumps(event, separators=(",", ":"))


def sign(body: str, secret: str) -> str:
    """`cobalt-verification`: the lowercase hex HMAC-SHA256 of exactly these bytes."""
    return hmac.new(secret.encode("utf-8"), body.encode("utf-8"), hashlib.sha256).hexdigest()


def cobalt_time() -> str:
    """A Cobalt `created` timestamp for now."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def fetch_etags(
    port: int, ids: Sequence[str], *, token: str, path_prefix: str = "/v1/jobs/", workers: int = 8
) -> list[tuple[str, str]]:
    """GET each job once and keep its ETag, for the 304 scenario (bounded: one GET per id)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def fetch_chunk(chunk: Sequence[str]) -> list[tuple[str, str]]:
        found = []
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for job_id in chunk:
                conn.request("GET", path_prefix + job_id, headers=headers)
                response = conn.getresponse()
                response.read()
                etag = response.getheader("ETag")
                if response.status == 200 and etag:
                    found.append((job_id, etag))
        finally:
            conn.close()
        return found

    chunks = [ids[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(fetch_chunk, chunks))
    return [pair for chunk in results for pair in chunk]


def nonce() -> str:
    """A short tag that makes this run's webhook ids and appointment ids unique."""
    return f"{int(time.time()):x}{random.randrange(16**4):04x}"
