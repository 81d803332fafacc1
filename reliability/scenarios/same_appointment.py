"""The same-appointment scenario: notes for one appointment, every webhook dropped."""

from __future__ import annotations

from pathlib import Path

from reliability.account import Account
from reliability.drive import APPOINTMENTS, Log, Planned, _stderr, plan_jobs, set_faults
from reliability.runner import run


def same_appointment_notes(
    database_url: str, tmp_dir: Path, notes: int = 3, log: Log = _stderr
) -> Account:
    """Several notes for one appointment, every webhook dropped: each must be reconciled to
    its own outcome (they go to Cobalt one at a time, so each has its own event)."""
    env = {"NOTE_EXPECTED_SECONDS": "2", "JOB_DEADLINE_SECONDS": "600"}
    planned = plan_jobs(notes, variants=("note-written",))
    planned = [
        Planned(
            p.marker,
            p.kind,
            p.variant,
            p.body | {"appointment_id": APPOINTMENTS[2]},
            p.event,
            p.error_code,
        )
        for p in planned
    ]
    with run(database_url, tmp_dir, env, 0.2, log) as r:
        set_faults(r.system, drop_rate=1.0, seed=1)
        r.submit(planned)
        # Each note needs one housekeeping pass (5 s) after the one before it settled.
        r.settle(15 + 10 * notes)
        return r.account(f"same-appointment notes: {notes} notes, every webhook dropped")
