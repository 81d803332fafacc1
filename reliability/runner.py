"""What every scenario shares: the quick service settings, the sizes, the running system."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.processes import RunningSystem, running_system

# --- Scenarios --------------------------------------------------------------------------------

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


@contextmanager
def _system(
    database_url: str, tmp_dir: Path, env: dict[str, str], processing_seconds: float
) -> Iterator[RunningSystem]:
    with running_system(
        database_url, tmp_dir, processing_seconds=processing_seconds, env=env
    ) as system:
        yield system
