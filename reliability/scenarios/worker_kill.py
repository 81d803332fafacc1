"""The worker-kill scenario: `kill -9` of the worker mid-submission, again and again."""

from __future__ import annotations

import time
from pathlib import Path

from reliability.account import Account
from reliability.drive import Log, _sending, _stderr, plan_jobs, query, set_faults
from reliability.runner import Size, run
from tests.processes import RunningSystem, restart_worker


def worker_kills(
    database_url: str, tmp_dir: Path, size: Size, kills: int = 5, log: Log = _stderr
) -> Account:
    """`kill -9` the worker while submissions hang in flight, restart it, again and again."""
    env = {
        "JOB_DEADLINE_SECONDS": str(size.deadline_seconds),
        "COBALT_READ_TIMEOUT_SECONDS": "10",
        "CLAIM_TTL_SECONDS": "3",
    }
    planned = plan_jobs(size.jobs)
    with run(database_url, tmp_dir, env, 0.3, log) as r:
        system = r.system
        set_faults(system, submit_hang_rate=0.5, hang_seconds=1.5, seed=size.seed)
        log(f"worker-kill: submitting {len(planned)} jobs, then {kills} kills")
        r.submit(planned)
        in_flight: set[str] = set()
        done = 0
        for _ in range(kills):
            sending = _wait_for_sending(system, timeout=15)
            if not sending:
                break  # nothing left to send
            time.sleep(0.3)  # let the calls reach the sandbox and hang there
            in_flight |= set(_sending(system))
            restart_worker(system)
            done += 1
        log(f"worker-kill: {done} kills, {len(in_flight)} submissions in flight at a kill")
        r.settle(size.deadline_seconds + 30)
        account = r.account(
            f"worker-kill: {size.jobs} jobs, worker SIGKILLed {done} times mid-submission"
        )
        expired = query(
            system.database_url, "SELECT count(*) FROM job_events WHERE type = 'claim_expired'"
        )[0][0]
        account.add("worker kills", done, "kills")
        account.add(
            "jobs whose submission was in flight at a kill", len(in_flight), "in_flight_at_kill"
        )
        account.add(
            "claims expired after a kill (→ unknown, reconciled)", expired, "claims_expired"
        )
        return account


def _wait_for_sending(system: RunningSystem, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _sending(system):
            return True
        pending = query(
            system.database_url,
            "SELECT count(*) FROM jobs WHERE status = 'processing'"
            " AND submission_state IN ('pending', 'waiting', 'retrying')",
        )[0][0]
        if not pending:
            return False
        time.sleep(0.02)
    return False
