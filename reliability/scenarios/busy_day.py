"""The busy-day scenario: a dropped note outcome past the first page of Cobalt's log."""

from __future__ import annotations

from pathlib import Path

from reliability.account import Account
from reliability.drive import Log, _stderr, plan_jobs, sandbox_events, set_faults, wait_for
from reliability.runner import run


def busy_day_note(
    database_url: str, tmp_dir: Path, others: int = 110, log: Log = _stderr
) -> Account:
    """A note whose webhook was dropped, on a day Cobalt's log holds more than one page of
    events (100): its outcome must still be found, however many events came after it."""
    env = {"NOTE_EXPECTED_SECONDS": "6", "JOB_DEADLINE_SECONDS": "600"}
    note = plan_jobs(1, variants=("note-failed",))
    rest = plan_jobs(others, variants=("encounter-refill", "encounter-plain"))
    with run(database_url, tmp_dir, env, 0.2, log) as r:
        system = r.system
        set_faults(system, drop_rate=1.0, seed=1)
        r.submit(note)
        wait_for("the note's outcome (dropped)", lambda: len(sandbox_events(system)) == 1, 30)
        set_faults(system, drop_rate=0.0)
        r.submit(rest)
        wait_for(
            "the other outcomes",
            lambda: len(sandbox_events(system)) == 1 + others,
            60,
        )
        log(f"busy-day: {1 + others} events logged; waiting for the note's lookup")
        r.settle(30)
        return r.account(f"busy-day note: 1 dropped note outcome, then {others} other events")
