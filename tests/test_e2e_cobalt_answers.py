"""End to end: Cobalt's awkward answers to a submission, through the real processes.

The sandbox is told to answer the way Cobalt (or a gateway in front of it) sometimes does,
and a front end's view of each job is checked: a gateway 502 after Cobalt queued the note
is never resent and the note settles once from its webhook; a 200 saying
`"success": false` fails the job at once; a synchronous "medication not found" fails it
with the field to fix and the medications that could be refilled.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.processes import (
    RunningSystem,
    _create_client,
    running_system,
    throwaway_postgres_database,
)
from webhook_service.sandbox.data import DEMO_IDS, PATIENTS

pytestmark = pytest.mark.e2e

DEADLINE_SECONDS = 30.0


@pytest.fixture(scope="module")
def system(
    postgres_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSystem]:
    with (
        throwaway_postgres_database(postgres_server_url, prefix="answers") as url,
        running_system(url, tmp_path_factory.mktemp("answers")) as running,
    ):
        yield running


def set_faults(system: RunningSystem, **faults: Any) -> None:
    """Every fault this module uses, at 0 unless given."""
    knobs = {
        "gateway_error_after_queue_rate": 0.0,
        "success_false_rate": 0.0,
        "sync_medication_not_found_rate": 0.0,
        **faults,
    }
    url = f"{system.sandbox_url}/_sandbox/faults"
    requests.post(url, json=knobs, timeout=5).raise_for_status()


def submit(system: RunningSystem, path: str, body: dict[str, Any]) -> str:
    response = system.api().post(system.web_url + path, json=body, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def settled(system: RunningSystem, job_id: str) -> dict[str, Any]:
    api = system.api()
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        job: dict[str, Any] = api.get(f"{system.web_url}/v1/jobs/{job_id}", timeout=10).json()
        if job["status"] != "processing":
            return job
        assert time.monotonic() < deadline, (job, system.tails())
        time.sleep(0.2)


def sent_to_cobalt(system: RunningSystem, marker: str) -> list[dict[str, Any]]:
    return [s for s in system.sandbox_submissions() if marker in str(s["body"])]


def encounter(marker: str, **fields: str) -> dict[str, Any]:
    return {
        "patient_mrn": DEMO_IDS["patient_mrn"],
        "provider_id": DEMO_IDS["provider_id"],
        "location_id": DEMO_IDS["location_id"],
        "assigned_to_id": DEMO_IDS["assigned_to_id"],
        "message": f"Asks for a refill. {marker}",
        **fields,
    }


def test_a_gateway_502_after_queuing_is_not_resent_and_the_note_settles_once(
    system: RunningSystem,
) -> None:
    set_faults(system, gateway_error_after_queue_rate=1.0)
    marker = f"e2e-gateway-{uuid.uuid4().hex[:8]}"
    body = {"appointment_id": DEMO_IDS["appointment_id"], "note": f"Doing well. {marker}"}
    job_id = submit(system, "/v1/notes", body)
    job = settled(system, job_id)
    assert job["status"] == "completed", job
    assert job["outcome"]["event"] == "note.created"
    assert job["submission"]["state"] == "unknown"  # the 502 proved nothing either way

    # Give a worker that would resend time to do it: it must not.
    time.sleep(3)
    set_faults(system)
    assert len(sent_to_cobalt(system, marker)) == 1
    support = requests.Session()
    token = _create_client(system.environ, system.tmp_dir, "e2e-answers-support", "support")
    support.headers["Authorization"] = f"Bearer {token}"
    timeline = support.get(f"{system.web_url}/v1/jobs/{job_id}/events", timeout=10).json()
    steps = [event["type"] for event in timeline["events"]]
    assert steps.count("submission_unknown") == 1, steps
    assert steps.count("webhook_applied") + steps.count("reconciled") == 1, steps
    assert system.server_errors() == []


def test_a_200_saying_success_false_fails_the_job_with_a_code(system: RunningSystem) -> None:
    set_faults(system, success_false_rate=1.0)
    marker = f"e2e-success-false-{uuid.uuid4().hex[:8]}"
    job_id = submit(system, "/v1/telephone-encounters", encounter(marker))
    job = settled(system, job_id)
    set_faults(system)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "cobalt_rejected"
    assert job["error"]["message"]
    assert job["submission"]["state"] == "rejected"
    assert sent_to_cobalt(system, marker) == []  # Cobalt took nothing


def test_a_synchronous_medication_not_found_names_the_field_and_the_medications(
    system: RunningSystem,
) -> None:
    set_faults(system, sync_medication_not_found_rate=1.0)
    marker = f"e2e-sync-medication-{uuid.uuid4().hex[:8]}"
    body = encounter(marker, refill_medication_name=DEMO_IDS["unknown_medication_name"])
    job = settled(system, submit(system, "/v1/telephone-encounters", body))
    set_faults(system)
    patient = next(p for p in PATIENTS if p.mrn == DEMO_IDS["patient_mrn"])
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "medication_not_found"
    assert job["error"]["field"] == "refill_medication_name"
    assert job["outcome"]["available_medications"] == patient.refillable_medications
    assert sent_to_cobalt(system, marker) == []
