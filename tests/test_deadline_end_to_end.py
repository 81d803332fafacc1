"""The deadline end to end: real web, worker and sandbox processes, a front end polling.

An encounter whose submit reply never came (Cobalt took it, the answer hung past the read
timeout) and whose webhook was dropped leaves the service nothing to match Cobalt's log by:
its fate cannot be known. The front end must see `processing` with `attention`, never a
failure, until a person checks the chart.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.processes import _create_client, running_system, throwaway_postgres_database
from tests.test_end_to_end import encounter

pytestmark = pytest.mark.e2e

WAIT_SECONDS = 40.0
FAST_DEADLINE = {
    "COBALT_READ_TIMEOUT_SECONDS": "1",
    "ENCOUNTER_EXPECTED_SECONDS": "2",
    "NOTE_EXPECTED_SECONDS": "2",
    "JOB_DEADLINE_SECONDS": "6",
}


@pytest.fixture
def throwaway_postgres(postgres_server_url: str) -> Iterator[str]:
    with throwaway_postgres_database(postgres_server_url) as url:
        yield url


def test_an_encounter_whose_fate_is_unknown_waits_with_attention_for_the_chart(
    throwaway_postgres: str, tmp_path: Path
) -> None:
    with running_system(throwaway_postgres, tmp_path, env=FAST_DEADLINE) as system:
        faults = {"submit_hang_rate": 1.0, "hang_seconds": 3.0, "drop_rate": 1.0}
        requests.post(
            f"{system.sandbox_url}/_sandbox/faults", json=faults, timeout=5
        ).raise_for_status()
        api = system.api()
        case = encounter("unknown-fate", "completed", None, "telephone_encounter.created")
        answer = api.post(system.web_url + case.path, json=case.body, timeout=10)
        assert answer.status_code == 202, answer.text
        url = system.web_url + answer.headers["Location"]

        job, response = _poll_until(api, url, answer, lambda j: j["attention"] is not None)
        assert job["status"] == "processing", job
        assert job["finished_at"] is None
        assert job["error"] is None
        assert job["attention"]["code"] == "no_outcome"
        assert "check the chart" in job["attention"]["message"]
        assert job["submission"]["state"] == "unknown"
        assert response.headers["Retry-After"].isdigit(), "still processing: keep polling"
        sent = [s for s in system.sandbox_submissions() if case.marker in str(s["body"])]
        assert len(sent) == 1, "never resent"

        support = requests.Session()
        token = _create_client(system.environ, tmp_path, "e2e-support", "support")
        support.headers["Authorization"] = f"Bearer {token}"
        recorded = support.post(
            f"{url}/chart-outcome",
            json={"reason": "found it in the EMR", "found_in_chart": True},
            timeout=10,
        )
        assert recorded.status_code == 200, recorded.text

        job, _ = _poll_until(api, url, response, lambda j: j["status"] != "processing")
        assert job["status"] == "completed"
        assert job["attention"] is None
        assert job["outcome"]["event"] == "chart_confirmed"
        assert system.server_errors() == []


def _poll_until(
    api: requests.Session, url: str, last: requests.Response, done: Any
) -> tuple[dict[str, Any], requests.Response]:
    """Poll as a front end does (with the ETag) until `done(job)`; the job and its answer."""
    job, etag = last.json(), last.headers["ETag"]
    deadline = time.monotonic() + WAIT_SECONDS
    while not done(job):
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
        response = api.get(url, headers={"If-None-Match": etag}, timeout=10)
        if response.status_code == 304:
            continue
        assert response.status_code == 200, response.text
        job, etag, last = response.json(), response.headers["ETag"], response
    return job, last
