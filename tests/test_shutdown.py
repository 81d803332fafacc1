"""SIGTERM: every process exits inside the platform's 30 s, whatever the settings. A worker
whose call Cobalt never answers gives it up after SHUTDOWN_GRACE_SECONDS and records the job
`unknown` (never resent, never failed), and a later worker's reconcile settles it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from tests.processes import restart_worker, running_system, throwaway_postgres_database
from webhook_service.cli import main
from webhook_service.sandbox.data import DEMO_IDS
from webhook_service.settings import PLATFORM_STOP_SECONDS, SHUTDOWN_MARGIN_SECONDS

pytestmark = pytest.mark.e2e

GRACE_SECONDS = 2.0
SETTLE_SECONDS = 60.0


@pytest.fixture
def throwaway_postgres(postgres_server_url: str) -> Iterator[str]:
    with throwaway_postgres_database(postgres_server_url) as url:
        yield url


def test_sigterm_gives_up_a_call_cobalt_never_answers_within_the_grace(
    throwaway_postgres: str, tmp_path: Path
) -> None:
    settings = {
        "COBALT_READ_TIMEOUT_SECONDS": "120",  # longer than the platform would wait
        "SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
        "NOTE_EXPECTED_SECONDS": "1",  # reconcile the unknown job soon after
    }
    with running_system(throwaway_postgres, tmp_path, env=settings) as system:
        requests.post(
            f"{system.sandbox_url}/_sandbox/faults",
            # Takes the note and never answers; its webhook is lost: only Cobalt's log has it.
            json={"submit_hang_rate": 1.0, "hang_seconds": 120.0, "drop_rate": 1.0},
            timeout=5,
        ).raise_for_status()
        api = system.api()
        marker = f"shutdown-{uuid.uuid4().hex[:8]}"
        # A note: Cobalt's log finds one without its Cobalt job id (by its appointment).
        body = {"appointment_id": DEMO_IDS["appointment_id"], "note": f"Doing well. {marker}"}
        answer = api.post(f"{system.web_url}/v1/notes", json=body, timeout=10)
        assert answer.status_code == 202, answer.text
        url = f"{system.web_url}/v1/jobs/{answer.json()['id']}"
        deadline = time.monotonic() + SETTLE_SECONDS
        while api.get(url, timeout=10).json()["submission"]["state"] != "sending":
            assert time.monotonic() < deadline, system.tails()
            time.sleep(0.05)

        worker = system.processes["worker"]
        worker.popen.terminate()
        # The grace, then recording what it gave up and exiting: inside the platform's 30 s.
        assert worker.popen.wait(GRACE_SECONDS + SHUTDOWN_MARGIN_SECONDS) == 0, system.tails()

        job = api.get(url, timeout=10).json()
        assert job["submission"]["state"] == "unknown", job  # not `sending` until the claim
        assert job["status"] == "processing", job  # never failed

        restart_worker(system)
        requests.post(
            f"{system.sandbox_url}/_sandbox/faults", json={}, timeout=5
        ).raise_for_status()
        while job["status"] == "processing":  # the new worker's reconcile reads Cobalt's log
            assert time.monotonic() < deadline, system.tails()
            time.sleep(0.2)
            job = api.get(url, timeout=10).json()
        assert job["status"] == "completed", job
        sent = [s for s in system.sandbox_submissions() if marker in str(s["body"])]
        assert len(sent) == 1, sent  # never resent

        # The sandbox (a request of its still hanging) and gunicorn exit inside 30 s too.
        for name in ("sandbox", "web"):
            process = system.processes[name]
            process.popen.terminate()
            assert process.popen.wait(PLATFORM_STOP_SECONDS) == 0, system.tails()


@pytest.mark.parametrize("seconds", ["26", "60", "0"])
def test_a_grace_the_platform_would_cut_short_is_refused(
    cli_env: dict[str, str], seconds: str
) -> None:
    result = CliRunner().invoke(
        main, ["worker"], env={**cli_env, "SHUTDOWN_GRACE_SECONDS": seconds}
    )
    assert result.exit_code == 2
    assert "invalid settings: SHUTDOWN_GRACE_SECONDS" in result.output
