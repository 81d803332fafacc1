"""The chaos scenario: every sandbox fault at once."""

from __future__ import annotations

from pathlib import Path

from reliability.account import Account
from reliability.drive import PATTERN, Log, _stderr, plan_jobs, set_faults
from reliability.runner import Size, run


def chaos(
    database_url: str,
    tmp_dir: Path,
    size: Size,
    *,
    variants: tuple[str, ...] = PATTERN,
    log: Log = _stderr,
) -> Account:
    """Every sandbox fault at once: 20% duplicated, 10% dropped, 20% reordered webhooks,
    5% of submissions answered 500, 2% hanging past the service's read timeout."""
    env = {
        "NOTE_EXPECTED_SECONDS": str(size.expected_seconds),
        "ENCOUNTER_EXPECTED_SECONDS": str(size.expected_seconds),
        "JOB_DEADLINE_SECONDS": str(size.deadline_seconds),
        "COBALT_READ_TIMEOUT_SECONDS": "1",
        "CLAIM_TTL_SECONDS": "10",
    }
    planned = plan_jobs(size.jobs, variants=variants)
    with run(database_url, tmp_dir, env, 0.3, log) as r:
        set_faults(
            r.system,
            duplicate_rate=0.2,
            drop_rate=0.1,
            reorder_rate=0.2,
            delay_seconds=2.0,
            submit_error_rate=0.05,
            submit_hang_rate=0.02,
            hang_seconds=3.0,
            seed=size.seed,
        )
        log(f"chaos: submitting {len(planned)} jobs")
        r.submit(planned)
        r.settle(size.deadline_seconds + 30)
        set_faults(r.system, drop_rate=0.0, duplicate_rate=0.0, reorder_rate=0.0)
        return r.account(f"chaos: {size.jobs} jobs, every sandbox fault at once")
