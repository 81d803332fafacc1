"""The foreign-events scenario: an `appointment.failed` beside every note in flight."""

from __future__ import annotations

import time
from pathlib import Path

from reliability.account import Account, account_for
from reliability.drive import (
    Log,
    _stderr,
    plan_jobs,
    query,
    set_faults,
    submit_all,
    wait_until_settled,
)
from reliability.runner import FAST, Size, _system


def foreign_events(database_url: str, tmp_dir: Path, size: Size, log: Log = _stderr) -> Account:
    """Every note Cobalt accepts is followed at once by an `appointment.failed` for the same
    appointment (another Cobalt operation on it), delivered and logged like any event, while
    the note is still in flight. None may settle or bind a note: each note ends as its own
    `note.*` outcome says."""
    env = FAST | {"JOB_DEADLINE_SECONDS": str(size.deadline_seconds)}
    planned = plan_jobs(size.jobs)
    with _system(database_url, tmp_dir, env, 1.0) as system:
        set_faults(system, foreign_event_rate=1.0, seed=size.seed)
        log(f"foreign-events: submitting {len(planned)} jobs")
        started = time.monotonic()
        job_ids, retries = submit_all(system, planned)
        wait_until_settled(system, size.deadline_seconds + 30, log)
        account = account_for(
            f"foreign events: {size.jobs} jobs, an appointment.failed beside every note",
            system,
            planned,
            job_ids,
            elapsed=time.monotonic() - started,
            submit_retries=retries,
        )
        foreign = query(
            system.database_url,
            "SELECT state, job_id IS NOT NULL, count(*) FROM webhook_deliveries"
            " WHERE event_type NOT LIKE 'note.%%' AND event_type NOT LIKE 'telephone_encounter.%%'"
            " GROUP BY 1, 2",
        )
        received = sum(int(n) for _, _, n in foreign)
        taken = sum(int(n) for _, bound, n in foreign if bound)
        account.add("foreign events received", received, "foreign_received")
        account.add("foreign events bound to a job (must be 0)", taken, "foreign_bound")
        if taken:
            account.violations.append(f"{taken} foreign event(s) were bound to a job")
        if not received:
            account.violations.append("no foreign event reached the service")
        return account
