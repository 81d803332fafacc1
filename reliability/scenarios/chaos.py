"""The chaos scenario: every sandbox fault at once."""

from __future__ import annotations

import time
from pathlib import Path

from reliability.account import Account, account_for
from reliability.drive import (
    PATTERN,
    Log,
    _stderr,
    plan_jobs,
    set_faults,
    submit_all,
    wait_until_settled,
)
from reliability.runner import FAST, Size, _system


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
    env = FAST | {
        "NOTE_EXPECTED_SECONDS": str(size.expected_seconds),
        "ENCOUNTER_EXPECTED_SECONDS": str(size.expected_seconds),
        "JOB_DEADLINE_SECONDS": str(size.deadline_seconds),
        "COBALT_READ_TIMEOUT_SECONDS": "1",
        "CLAIM_TTL_SECONDS": "10",
    }
    planned = plan_jobs(size.jobs, variants=variants)
    with _system(database_url, tmp_dir, env, 0.3) as system:
        set_faults(
            system,
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
        started = time.monotonic()
        job_ids, retries = submit_all(system, planned)
        wait_until_settled(system, size.deadline_seconds + 30, log)
        elapsed = time.monotonic() - started
        set_faults(system, drop_rate=0.0, duplicate_rate=0.0, reorder_rate=0.0)
        return account_for(
            f"chaos: {size.jobs} jobs, every sandbox fault at once",
            system,
            planned,
            job_ids,
            elapsed=elapsed,
            submit_retries=retries,
        )
