"""The busy-day scenario: a dropped note outcome past the first page of Cobalt's log."""

from __future__ import annotations

import time
from pathlib import Path

from reliability.account import Account, account_for
from reliability.drive import (
    Log,
    _stderr,
    plan_jobs,
    sandbox_events,
    set_faults,
    submit_all,
    wait_for,
    wait_until_settled,
)
from reliability.runner import FAST, _system


def busy_day_note(
    database_url: str, tmp_dir: Path, others: int = 110, log: Log = _stderr
) -> Account:
    """A note whose webhook was dropped, on a day Cobalt's log holds more than one page of
    events (100): its outcome must still be found, however many events came after it."""
    env = FAST | {"NOTE_EXPECTED_SECONDS": "6", "JOB_DEADLINE_SECONDS": "600"}
    note = plan_jobs(1, variants=("note-failed",))
    rest = plan_jobs(others, variants=("encounter-refill", "encounter-plain"))
    with _system(database_url, tmp_dir, env, 0.2) as system:
        set_faults(system, drop_rate=1.0, seed=1)
        started = time.monotonic()
        job_ids, retries = submit_all(system, note)
        wait_for("the note's outcome (dropped)", lambda: len(sandbox_events(system)) == 1, 30)
        set_faults(system, drop_rate=0.0)
        more, more_retries = submit_all(system, rest)
        job_ids |= more
        wait_for(
            "the other outcomes",
            lambda: len(sandbox_events(system)) == 1 + others,
            60,
        )
        log(f"busy-day: {1 + others} events logged; waiting for the note's lookup")
        wait_until_settled(system, 30, log)
        return account_for(
            f"busy-day note: 1 dropped note outcome, then {others} other events",
            system,
            note + rest,
            job_ids,
            elapsed=time.monotonic() - started,
            submit_retries=retries + more_retries,
        )
