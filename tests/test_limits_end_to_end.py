"""The submission rate limit through the real processes: gunicorn with two web processes."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from tests.processes import child_pids, running_system, throwaway_postgres_database

pytestmark = pytest.mark.e2e

LIMIT = 10
NOTE = {"appointment_id": "rate-limit", "note": "S: fine"}


@pytest.fixture
def throwaway_postgres(postgres_server_url: str) -> Iterator[str]:
    with throwaway_postgres_database(postgres_server_url) as url:
        yield url


def test_the_rate_limit_holds_across_two_web_processes(
    throwaway_postgres: str, tmp_path: Path
) -> None:
    env = {"RATE_LIMIT_SUBMISSIONS_PER_MINUTE": str(LIMIT), "WEB_CONCURRENCY": "2"}
    with running_system(throwaway_postgres, tmp_path, env=env) as system:
        web = system.processes["web"]
        # The limit counts per calendar minute: start the burst early in one, so that it
        # all falls in the same window however slow this machine is.
        if datetime.now(UTC).second > 40:
            time.sleep(60 - datetime.now(UTC).second)
        sessions = sessions_by_process(system.web_url, child_pids(web.popen.pid))

        markers: dict[str, int] = {}
        for turn in range(2 * LIMIT):  # alternately through each process
            pid = list(sessions)[turn % 2]
            marker = f"rate-limit-{turn}-{uuid.uuid4().hex}"
            markers[marker] = pid
            answer = sessions[pid].post(
                f"{system.web_url}/v1/notes",
                json=NOTE,
                headers={"Authorization": f"Bearer {system.token}", "X-Request-ID": marker},
                timeout=10,
            )
            assert answer.status_code in (202, 429), answer.text
            if answer.status_code == 429:
                assert answer.headers["Content-Type"] == "application/problem+json"
                assert 1 <= int(answer.headers["Retry-After"]) <= 60

        # Which process answered each, from its own request log line.
        lines = [line for line in web.log_lines() if line.get("request_id") in markers]
        assert len(lines) == 2 * LIMIT
        statuses = Counter((line["pid"], line["status"]) for line in lines)
        # Each process accepted about half: had either counted alone, it would have taken
        # LIMIT of its own.
        assert sum(n for (_, status), n in statuses.items() if status == 202) == LIMIT, statuses
        assert all(statuses[pid, 202] and statuses[pid, 429] for pid in sessions), statuses


def sessions_by_process(web_url: str, pids: list[int]) -> dict[int, requests.Session]:
    """One kept-alive HTTP session per gunicorn process: each opened while every other
    process is stopped (SIGSTOP), so the one left running must accept its connection."""
    assert len(pids) == 2, f"gunicorn should run two web processes, not {pids}"
    found: dict[int, requests.Session] = {}
    for pid in pids:
        others = [other for other in pids if other != pid]
        for other in others:
            os.kill(other, signal.SIGSTOP)
        try:
            session = requests.Session()
            session.get(f"{web_url}/healthz", timeout=5).raise_for_status()
            found[pid] = session
        finally:
            for other in others:
                os.kill(other, signal.SIGCONT)
    return found


def test_a_chunked_body_over_the_limit_is_413_through_gunicorn(
    throwaway_postgres: str, tmp_path: Path
) -> None:
    with running_system(throwaway_postgres, tmp_path, env={"MAX_BODY_BYTES": "1000"}) as system:

        def chunks() -> Iterator[bytes]:  # a generator body: requests sends it chunked
            yield b'{"appointment_id": "1", "note": "'
            yield b"x" * 2000
            yield b'"}'

        answer = requests.post(
            f"{system.web_url}/v1/notes",
            data=chunks(),
            headers={"Authorization": f"Bearer {system.token}", "Content-Type": "application/json"},
            timeout=10,
        )
        assert answer.status_code == 413, answer.text
        assert answer.headers["Content-Type"] == "application/problem+json"
