"""What every scenario shares: the quick service settings, the sizes, the running system."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from reliability.account import Account, account_for
from reliability.drive import Log, Planned, submit_all, wait_until_settled
from tests.processes import RunningSystem, running_system

# Short timings for every scenario: outcomes are looked up after a few seconds, not minutes.
FAST = {
    "NOTE_EXPECTED_SECONDS": "4",
    "ENCOUNTER_EXPECTED_SECONDS": "4",
    "RETRY_BASE_SECONDS": "0.2",
    "RETRY_CAP_SECONDS": "2",
    "WORKER_CONCURRENCY": "4",
    "LOG_LEVEL": "INFO",
    # Scenarios burst submissions from one client: the limits are tested on their own.
    "RATE_LIMIT_SUBMISSIONS_PER_MINUTE": "0",
    "BACKLOG_MAX_JOBS": "0",
}


@dataclass(frozen=True)
class Size:
    jobs: int
    seed: int = 20261123
    deadline_seconds: int = 45  # JOB_DEADLINE_SECONDS: when an unknowable job gets attention
    expected_seconds: int = 4


class Run:
    """One scenario's run of the system: the jobs it submitted (in one round or several), how
    long they took to settle, and the account of every one of them.

    Every scenario has the same shape, written once here: start the system (`run`), submit,
    inject its fault, wait until every job settled, account for each job.
    """

    def __init__(self, system: RunningSystem, log: Log) -> None:
        self.system = system
        self.log = log
        self.planned: list[Planned] = []
        self.job_ids: dict[str, str] = {}  # marker → job id
        self.retries = 0  # submission tries answered 5xx
        self.started: float | None = None  # the clock starts at the first submission
        self.elapsed = 0.0

    def submit(self, planned: list[Planned]) -> None:
        """Submit a round of jobs (`submit_all`); the account covers every round."""
        if self.started is None:
            self.started = time.monotonic()
        job_ids, retries = submit_all(self.system, planned)
        self.planned += planned
        self.job_ids |= job_ids
        self.retries += retries

    def settle(self, timeout: float) -> None:
        """Wait until every job has settled (or `timeout` ran out); the time it took counts."""
        wait_until_settled(self.system, timeout, self.log)
        self.elapsed = time.monotonic() - (self.started or time.monotonic())

    def account(self, title: str) -> Account:
        """Every job submitted, judged from both sides (`account_for`)."""
        return account_for(
            title,
            self.system,
            self.planned,
            self.job_ids,
            elapsed=self.elapsed,
            submit_retries=self.retries,
        )


@contextmanager
def run(
    database_url: str,
    tmp_dir: Path,
    env: dict[str, str],
    processing_seconds: float,
    log: Log,
) -> Iterator[Run]:
    """The real system on `database_url` with the quick settings (`FAST`) and `env` over them,
    the sandbox taking `processing_seconds` per job; stopped on leaving."""
    with running_system(
        database_url, tmp_dir, processing_seconds=processing_seconds, env=FAST | env
    ) as system:
        yield Run(system, log)
