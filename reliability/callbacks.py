"""The callbacks scenario: a front end's receiver that fails 30% of the time, hangs 5% (past
the service's timeout) and goes down for two minutes, while jobs run through every sandbox
outcome. Every change of every job in the record of changes must reach the receiver, signed
(verified with the official `standardwebhooks` package), in order per job, none lost;
duplicates (the same `webhook-id` again, after a hang or a lost answer) are allowed and counted.

The retry schedule (about three days) is shrunk a hundredfold with CALLBACK_RETRY_SCALE: a
change failing through the outage is tried again after 0.05 s, 3 s, 18 s, 72 s, 3 min, ….
Registered in `run.py` as `callbacks`.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from reliability.account import Account
from reliability.drive import (
    Log,
    _stderr,
    api_session,
    loopback,
    plan_jobs,
    query,
    submit_all,
    wait_until_settled,
)
from reliability.runner import FAST, Size
from tests.processes import RunningSystem, running_system

RETRY_SCALE = 0.01
# Past the outage, how long the last retries may take: a change that failed through the
# outage and then a few more times waits the scaled schedule's later pauses (3, 6, 6, 14 and
# 14 minutes), so the run's tail is tens of minutes.
DRAIN_SECONDS = 3600.0


def callbacks(
    database_url: str,
    tmp_dir: Path,
    size: Size,
    *,
    down_seconds: float = 120.0,
    log: Log = _stderr,
) -> Account:
    """Callbacks to a receiver failing 30%, hanging 5% and down for `down_seconds`."""
    env = FAST | {
        "JOB_DEADLINE_SECONDS": str(size.deadline_seconds),
        "CALLBACK_ALLOW_PRIVATE_NETWORKS": "true",
        "CALLBACK_CONNECT_TIMEOUT_SECONDS": "1",
        "CALLBACK_TIMEOUT_SECONDS": "2",
        "CALLBACK_RETRY_SCALE": str(RETRY_SCALE),
    }
    planned = plan_jobs(size.jobs)
    half = len(planned) // 2
    with running_system(database_url, tmp_dir, processing_seconds=0.3, env=env) as system:
        with api_session(system) as api:
            url = f"{system.sandbox_url}/callbacks"
            registered = api.put(f"{system.web_url}/v1/callback", json={"url": url}, timeout=10)
        registered.raise_for_status()
        _receiver(system, "secrets", {"secrets": [registered.json()["secret"]]})
        faults = {"fail_rate": 0.3, "hang_rate": 0.05, "hang_seconds": 5}
        _receiver(system, "behaviour", faults)
        started = time.monotonic()
        log(f"callbacks: {half} jobs to a receiver failing 30%, hanging 5%")
        job_ids, retries = submit_all(system, planned[:half])
        rest = len(planned) - half
        log(f"callbacks: the receiver goes down for {down_seconds:.0f} s; {rest} jobs")
        _receiver(system, "behaviour", {**faults, "down_seconds": down_seconds})
        more, more_retries = submit_all(system, planned[half:])
        job_ids |= more
        wait_until_settled(system, size.deadline_seconds + 30, log)
        drained = _wait_for_deliveries(database_url, down_seconds + DRAIN_SECONDS, log)
        elapsed = time.monotonic() - started
        received = _received(system)
        account = _account(size, database_url, list(job_ids.values()), received)
        account.add("submissions answered 5xx and retried", retries + more_retries)
        account.add("all deliveries finished", "yes" if drained else "NO")
        if not drained:
            account.violations.append("deliveries still pending when the run gave up waiting")
        account.add("elapsed (s)", f"{elapsed:.0f}")
        return account


def _receiver(system: RunningSystem, path: str, body: dict[str, Any]) -> None:
    with loopback() as http:
        response = http.put(f"{system.sandbox_url}/callbacks/{path}", json=body, timeout=5)
    response.raise_for_status()


def _received(system: RunningSystem) -> list[dict[str, Any]]:
    with loopback() as http:
        response = http.get(f"{system.sandbox_url}/callbacks/received", timeout=30)
    response.raise_for_status()
    got: list[dict[str, Any]] = response.json()["received"]
    return got


def _wait_for_deliveries(database_url: str, timeout: float, log: Log) -> bool:
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    while time.monotonic() < deadline:
        [(pending,)] = query(
            database_url, "SELECT count(*) FROM callback_deliveries WHERE state = 'pending'"
        )
        if pending == 0:
            return True
        if time.monotonic() - last_report >= 15:
            log(f"  {pending} callback deliveries still pending")
            last_report = time.monotonic()
        time.sleep(1)
    return False


def _account(
    size: Size, database_url: str, job_ids: list[str], received: list[dict[str, Any]]
) -> Account:
    """Every change in the record against what the receiver got."""
    account = Account(
        f"callbacks: {size.jobs} jobs, the receiver failing 30%, hanging 5%, down for a while"
    )
    changes = query(
        database_url,
        "SELECT job_id::text, status, updated_at FROM job_changes "
        "WHERE job_id::text = ANY(%s) ORDER BY seq",
        job_ids,
    )
    expected = Counter((job, status, _instant(at)) for job, status, at in changes)
    answered_ok = [r for r in received if 200 <= r["answered"] < 300]
    first_ok: dict[str, dict[str, Any]] = {}
    for receipt in answered_ok:
        first_ok.setdefault(receipt["webhook_id"], receipt)
    delivered = Counter(
        (r["job_id"], r["job_status"], _instant(r["changed_at"])) for r in first_ok.values()
    )
    lost = expected - delivered
    unverified = [r for r in received if not r["verified"]]
    # In order per job: the changes as they first arrived (any answer) never go back in time.
    seen: set[str] = set()
    arrivals: dict[str, list[datetime]] = defaultdict(list)
    for receipt in received:
        if receipt["verified"] and receipt["webhook_id"] not in seen:
            seen.add(receipt["webhook_id"])
            arrivals[receipt["job_id"]].append(_instant(receipt["changed_at"]))
    out_of_order = [job for job, times in arrivals.items() if times != sorted(times)]
    duplicates = len(answered_ok) - len(first_ok)
    [(attempts,)] = query(database_url, "SELECT count(*) FROM callback_attempts")
    states = dict(query(database_url, "SELECT state, count(*) FROM callback_deliveries GROUP BY 1"))
    outcomes = query(
        database_url,
        "SELECT coalesce(error, status_code::text), count(*) FROM callback_attempts GROUP BY 1",
    )

    account.add("jobs", len(job_ids), "jobs")
    account.add("changes in the record", sum(expected.values()), "changes")
    account.add("changes delivered (a 2xx at least once)", len(first_ok), "delivered")
    account.add("lost (a change never answered 2xx)", sum(lost.values()), "lost")
    account.add("out of order (jobs)", len(out_of_order), "out_of_order")
    account.add("not verified by standardwebhooks", len(unverified), "unverified")
    account.add("duplicates (same webhook-id answered 2xx again)", duplicates, "duplicates")
    account.add("callbacks received in all (every answer)", len(received))
    account.add("attempts recorded", attempts)
    account.add("attempts by outcome", ", ".join(f"{k} {v}" for k, v in sorted(outcomes)))
    answers = Counter(str(r["answered"]) for r in received)
    account.add("receiver's answers", ", ".join(f"{k} {v}" for k, v in sorted(answers.items())))
    account.add("deliveries by state", ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    for (job, status, at), count in sorted(lost.items())[:20]:
        account.violations.append(f"lost: job {job} {status} at {at.isoformat()} (x{count})")
    account.violations.extend(f"out of order: job {job}" for job in out_of_order[:20])
    account.violations.extend(
        f"not verified: {r['webhook_id']} ({r['job_id']})" for r in unverified[:20]
    )
    if states.get("failed"):
        account.violations.append(f"{states['failed']} deliveries ran out of retries")
    return account


def _instant(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)
