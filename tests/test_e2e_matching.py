"""End to end: what may settle a note, through the real web, worker and sandbox processes.

A foreign event (another resource's, sharing the note's appointment and Cobalt job id) and a
replayed signed body (the first note's outcome, re-sent with a new `webhook-id` while the
next note for the appointment is at Cobalt) are signed with the webhook secret and POSTed
to the running web process; each note must end with the outcome Cobalt really produced.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.processes import (
    WEBHOOK_SECRET,
    RunningSystem,
    _create_client,
    running_system,
    throwaway_postgres_database,
)
from webhook_service.sandbox.config import DEFAULT_ACCESS_TOKEN_REFERENCE_ID
from webhook_service.sandbox.data import DEMO_IDS
from webhook_service.signatures import compact_json, compute_signature

pytestmark = pytest.mark.e2e

WAIT_SECONDS = 30.0
APPOINTMENT = DEMO_IDS["appointment_id"]


@pytest.fixture
def throwaway_postgres(postgres_server_url: str) -> Iterator[str]:
    with throwaway_postgres_database(postgres_server_url) as url:
        yield url


def post_signed(system: RunningSystem, body: bytes) -> requests.Response:
    """POST a body signed as Cobalt signs it, under a `webhook-id` never used before."""
    headers = {
        "content-type": "application/json",
        "cobalt-verification": compute_signature(WEBHOOK_SECRET, body),
        "webhook-id": f"msg_e2e_{uuid.uuid4().hex}",
        "webhook-timestamp": "2026-11-23T12:00:05Z",
        "webhook-attempt": "1",
    }
    return requests.post(
        f"{system.web_url}/webhooks/cobalt", data=body, headers=headers, timeout=10
    )


def wait_for(
    api: requests.Session,
    system: RunningSystem,
    job_id: str,
    done: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.get(f"{system.web_url}/v1/jobs/{job_id}", timeout=10).json()
        if done(job):
            return job
        time.sleep(0.1)
    pytest.fail(f"job {job_id} never got there: {job}")


def submit_note(api: requests.Session, system: RunningSystem, text: str) -> str:
    body = {"appointment_id": APPOINTMENT, "note": text}
    response = api.post(f"{system.web_url}/v1/notes", json=body, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def accepted(job: dict[str, Any]) -> bool:
    return job["status"] != "processing" or job["submission"]["state"] == "accepted"


def settled(job: dict[str, Any]) -> bool:
    return job["status"] != "processing"


def test_foreign_events_and_replayed_bodies_never_settle_a_note(
    throwaway_postgres: str, tmp_path: Path
) -> None:
    with running_system(throwaway_postgres, tmp_path, processing_seconds=2.0) as system:
        api = system.api()
        assert system.tmp_dir is not None
        support = requests.Session()
        token = _create_client(system.environ, system.tmp_dir, "e2e-support", "support")
        support.headers["Authorization"] = f"Bearer {token}"

        # 1. While the first note is at Cobalt (known by its appointment only: Cobalt's note
        # reply has no job id), another Cobalt operation on the account fails for the same
        # appointment, under its own Cobalt job id.
        first = submit_note(api, system, "First visit.")
        at_cobalt = wait_for(api, system, first, accepted)
        assert at_cobalt["status"] == "processing", "the sandbox answered too fast to test"
        foreign = {
            "id": f"evt_foreign_{uuid.uuid4().hex[:8]}",
            "access_token_reference_id": DEFAULT_ACCESS_TOKEN_REFERENCE_ID,
            "object": "event",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "type": "appointment.failed",
            "job_id": "cj_foreign_operation",
            "data": {"appointment_id": APPOINTMENT, "failure_reason": "Slot taken"},
        }
        assert post_signed(system, compact_json(foreign)).status_code == 200
        done = wait_for(api, system, first, settled)
        assert (done["status"], done["outcome"]["event"]) == ("completed", "note.created")
        assert done["cobalt"]["job_id"] not in (None, "cj_foreign_operation")

        # 2. The first note's signed outcome, as delivered, is re-sent with a new
        # `webhook-id` while the next note for the appointment is at Cobalt.
        story = support.get(f"{system.web_url}/v1/jobs/{first}/events", timeout=10).json()
        [original] = [d for d in story["deliveries"] if d["event_type"] == "note.created"]
        stored = support.get(f"{system.web_url}/v1/deliveries/{original['id']}", timeout=10)
        body = stored.json()["body"].encode()
        assert json.loads(body)["type"] == "note.created"
        second = submit_note(api, system, "Second visit.")
        next_at_cobalt = wait_for(api, system, second, accepted)
        assert next_at_cobalt["status"] == "processing", "the sandbox answered too fast to test"
        assert post_signed(system, body).status_code == 200
        assert api.get(f"{system.web_url}/v1/jobs/{second}", timeout=10).json()["status"] == (
            "processing"
        )
        own = wait_for(api, system, second, settled)
        assert (own["status"], own["outcome"]["event"]) == ("completed", "note.created")
        assert own["cobalt"]["job_id"] not in (None, done["cobalt"]["job_id"])

        # One delivery per event: the replay was a repeat, and nothing failed or 5xx'd.
        story = support.get(f"{system.web_url}/v1/jobs/{first}/events", timeout=10).json()
        states = sorted(d["state"] for d in story["deliveries"])
        assert states == ["applied"], states
        assert system.server_errors() == []
