"""The foreign-events scenario: an `appointment.failed` beside every note in flight."""

from __future__ import annotations

from pathlib import Path

from reliability.account import Account
from reliability.drive import Log, _stderr, plan_jobs, query, set_faults
from reliability.runner import Size, run


def foreign_events(database_url: str, tmp_dir: Path, size: Size, log: Log = _stderr) -> Account:
    """Every note Cobalt accepts is followed at once by an `appointment.failed` for the same
    appointment (another Cobalt operation on it), delivered and logged like any event, while
    the note is still in flight. None may settle or bind a note: each note ends as its own
    `note.*` outcome says."""
    env = {"JOB_DEADLINE_SECONDS": str(size.deadline_seconds)}
    planned = plan_jobs(size.jobs)
    with run(database_url, tmp_dir, env, 1.0, log) as r:
        set_faults(r.system, foreign_event_rate=1.0, seed=size.seed)
        log(f"foreign-events: submitting {len(planned)} jobs")
        r.submit(planned)
        r.settle(size.deadline_seconds + 30)
        account = r.account(
            f"foreign events: {size.jobs} jobs, an appointment.failed beside every note"
        )
        foreign = query(
            r.system.database_url,
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
