"""Every outcome, end to end through HTTP: submit → worker → Cobalt → webhook → poll."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import responses
from flask.testing import FlaskClient
from urllib3.exceptions import MaxRetryError, NewConnectionError

from tests.conftest import COBALT, FakeClock, event
from webhook_service.worker import Worker

NOTE = {
    "appointment_id": "728948",
    "note": {
        "subjective": "this is the subjective section",
        "objective": "this is the objective section",
        "assessment": "this is the assessment section",
        "plan": "this is the plan section",
    },
}
ENCOUNTER = {
    "patient_mrn": "MRN-1001",
    "provider_id": "prov_1",
    "location_id": "loc_1",
    "assigned_to_id": "staff_1",
    "reason": "Refill request",
    "refill_medication_name": "Lisinopril",
    "is_high_priority": "false",
}


# Cobalt's own error body: proof that Cobalt saw the request and did not queue it.
COBALT_500 = {"success": False, "message": "Internal server error"}


def submit(client: FlaskClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code == 202, response.json
    assert response.headers["Location"] == f"/v1/jobs/{response.json['id']}"
    assert response.json["status"] == "processing"
    return response.json  # type: ignore[no-any-return]


def poll(client: FlaskClient, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200
    return response.json  # type: ignore[no-any-return]


def accept_note(cobalt: responses.RequestsMock, **extra: Any) -> None:
    cobalt.add(
        responses.POST,
        f"{COBALT}/notes",
        json={"success": True, "message": "Note upload in progress.", **extra},
    )


def accept_encounter(cobalt: responses.RequestsMock, job_id: Any = 4242) -> None:
    cobalt.add(
        responses.POST,
        f"{COBALT}/telephone-encounters",
        json={
            "success": True,
            "message": "Telephone encounter queued successfully",
            "telephone_encounter_id": "te_77",
            "job_id": job_id,
        },
    )


def test_note_is_completed_by_its_webhook(client, worker: Worker, cobalt, post_webhook):
    accept_note(cobalt)
    job = submit(client, "/v1/notes", NOTE)
    assert worker.run_once()
    assert poll(client, job["id"])["submission"]["state"] == "accepted"

    sent = [c for c in cobalt.calls if c.request.url.endswith("/notes")]
    assert len(sent) == 1
    assert sent[0].request.headers["client_id"] == "ci_test"
    assert sent[0].request.headers["client_secret"] == "cs_test"
    assert sent[0].request.headers["access_token"] == "at_test_clinic"

    assert post_webhook(event("note.created", appointment_id="728948")).status_code == 200
    done = poll(client, job["id"])
    assert done["status"] == "completed"
    assert done["outcome"]["event"] == "note.created"
    assert done["finished_at"] is not None
    assert done["error"] is None


def test_note_uploaded_event_also_completes(client, worker, cobalt, post_webhook):
    accept_note(cobalt, job_id="cj_1")
    job = submit(client, "/v1/notes", NOTE)
    worker.run_once()
    assert poll(client, job["id"])["cobalt"]["job_id"] == "cj_1"
    post_webhook(event("note.uploaded", job_id="cj_1", appointment_id="728948"))
    assert poll(client, job["id"])["status"] == "completed"


def test_note_failure_carries_cobalt_reason(client, worker, cobalt, post_webhook):
    accept_note(cobalt)
    job = submit(client, "/v1/notes", NOTE)
    worker.run_once()
    post_webhook(
        event(
            "note.failed",
            appointment_id="728948",
            failure_reason="Appointment not found in EMR",
            reasons=[{"code": "appointment_not_found", "description": "No such appointment"}],
        )
    )
    failed = poll(client, job["id"])
    assert failed["status"] == "failed"
    assert failed["error"] == {
        "code": "appointment_not_found",
        "message": "Appointment not found in EMR",
        "field": None,
    }
    assert failed["outcome"]["reasons"][0]["code"] == "appointment_not_found"


def test_encounter_completed(client, worker, cobalt, post_webhook):
    accept_encounter(cobalt)
    job = submit(client, "/v1/telephone-encounters", ENCOUNTER)
    worker.run_once()
    accepted = poll(client, job["id"])
    # Cobalt's integer job id is stored as a string.
    assert accepted["cobalt"] == {"job_id": "4242", "telephone_encounter_id": "te_77"}
    post_webhook(
        event(
            "telephone_encounter.created",
            job_id="4242",
            telephone_encounter_id="te_77",
            refill_medication_name="Lisinopril 10 mg tablet",
        )
    )
    done = poll(client, job["id"])
    assert done["status"] == "completed"
    assert done["outcome"]["refill_medication_name"] == "Lisinopril 10 mg tablet"


def test_encounter_partial_when_refill_not_added(client, worker, cobalt, post_webhook):
    accept_encounter(cobalt)
    job = submit(client, "/v1/telephone-encounters", ENCOUNTER)
    worker.run_once()
    post_webhook(
        event(
            "telephone_encounter.created_partial",
            job_id="4242",
            telephone_encounter_id="te_77",
            message="Encounter created but the refill could not be added",
        )
    )
    partial = poll(client, job["id"])
    assert partial["status"] == "partial"
    assert partial["error"]["code"] == "refill_not_added"


def test_encounter_failure_lists_available_medications(client, worker, cobalt, post_webhook):
    accept_encounter(cobalt)
    job = submit(client, "/v1/telephone-encounters", ENCOUNTER)
    worker.run_once()
    post_webhook(
        event(
            "telephone_encounter.failed",
            job_id="4242",
            telephone_encounter_id="te_77",
            failure_reason="Medication not found",
            available_medications=["Metformin 500 mg", "Atorvastatin 20 mg"],
        )
    )
    failed = poll(client, job["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "medication_not_found"
    assert failed["outcome"]["available_medications"] == ["Metformin 500 mg", "Atorvastatin 20 mg"]


def test_cobalt_4xx_fails_the_job_with_its_message(client, worker, cobalt):
    cobalt.add(
        responses.POST,
        f"{COBALT}/telephone-encounters",
        status=400,
        json={"success": False, "message": "Reason too long"},
    )
    job = submit(client, "/v1/telephone-encounters", ENCOUNTER)
    worker.run_once()
    failed = poll(client, job["id"])
    assert failed["status"] == "failed"
    assert failed["error"] == {
        "code": "cobalt_rejected",
        "message": "Reason too long",
        "field": None,
    }
    assert failed["submission"]["state"] == "rejected"


@pytest.mark.parametrize(
    ("status", "message", "code", "field"),
    [
        (404, "Provider not found", "provider_not_found", "provider_id"),
        (404, "Location not found", "location_not_found", "location_id"),
        (404, "Staff member not found", "staff_not_found", "assigned_to_id"),
        (404, "Pharmacy not found", "pharmacy_not_found", "pharmacy_ehr_id"),
        (404, "User not found", "user_not_found", None),
        (422, "Unsupported EMR", "unsupported_emr", None),
    ],
)
def test_cobalts_synchronous_errors_reach_the_job_with_their_code_and_field(
    client, worker, cobalt, status: int, message: str, code: str, field: str | None
):
    cobalt.add(
        responses.POST,
        f"{COBALT}/telephone-encounters",
        status=status,
        json={"success": False, "message": message},
    )
    job = submit(client, "/v1/telephone-encounters", ENCOUNTER)
    worker.run_once()
    failed = poll(client, job["id"])
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": code, "message": message, "field": field}
    assert failed["outcome"]["event"] == "submission_rejected"


def test_synchronous_medication_not_found_lists_the_available_medications(client, worker, cobalt):
    meds = ["Metformin 500 mg", "Atorvastatin 20 mg"]
    cobalt.add(
        responses.POST,
        f"{COBALT}/telephone-encounters",
        status=404,
        json={"success": False, "message": "Medication not found", "available_medications": meds},
    )
    job = submit(client, "/v1/telephone-encounters", ENCOUNTER)
    worker.run_once()
    failed = poll(client, job["id"])
    assert failed["status"] == "failed"
    assert failed["error"] == {
        "code": "medication_not_found",
        "message": "Medication not found",
        "field": "refill_medication_name",
    }
    assert failed["outcome"]["available_medications"] == meds


def test_a_2xx_saying_success_false_fails_the_job_at_once(client, worker, cobalt):
    cobalt.add(
        responses.POST,
        f"{COBALT}/notes",
        status=200,
        json={"success": False, "message": "Note could not be queued"},
    )
    job = submit(client, "/v1/notes", NOTE)
    worker.run_once()
    failed = poll(client, job["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "cobalt_rejected"
    assert failed["error"]["message"] == "Note could not be queued"
    assert failed["submission"]["state"] == "rejected"


def test_login_required_fails_job_and_flags_clinic(client, worker, cobalt, sessions):
    cobalt.add(
        responses.POST,
        f"{COBALT}/notes",
        status=403,
        json={"success": False, "error": "login_required", "message": "Re-link the EMR"},
    )
    job = submit(client, "/v1/notes", NOTE)
    worker.run_once()
    assert poll(client, job["id"])["error"]["code"] == "login_required"
    from webhook_service.models import Clinic

    with sessions() as session:
        assert session.query(Clinic).one().needs_relink is True


def test_transient_5xx_is_retried_then_succeeds(
    client, worker, cobalt, clock: FakeClock, post_webhook
):
    cobalt.add(responses.POST, f"{COBALT}/notes", status=503, json=COBALT_500)
    job = submit(client, "/v1/notes", NOTE)
    worker.run_once()
    retrying = poll(client, job["id"])
    assert retrying["status"] == "processing"
    assert retrying["submission"]["state"] == "retrying"
    assert not worker.run_once(), "the retry is not due yet"

    cobalt.replace(responses.POST, f"{COBALT}/notes", json={"success": True, "message": "ok"})
    clock.advance(seconds=10)
    assert worker.run_once()
    assert poll(client, job["id"])["submission"] == {
        "state": "accepted",
        "attempts": 2,
        "next_attempt_at": None,
    }
    post_webhook(event("note.created", appointment_id="728948"))
    assert poll(client, job["id"])["status"] == "completed"


def test_429_and_connection_errors_are_retried(client, worker, cobalt, clock: FakeClock):
    cobalt.add(responses.POST, f"{COBALT}/notes", status=429)
    job = submit(client, "/v1/notes", NOTE)
    worker.run_once()
    assert poll(client, job["id"])["submission"]["state"] == "retrying"
    cobalt.replace(
        responses.POST,
        f"{COBALT}/notes",
        body=requests.ConnectionError(
            MaxRetryError(None, "/v1/notes", NewConnectionError(None, "Connection refused"))  # type: ignore[arg-type]
        ),
    )
    clock.advance(seconds=30)
    worker.run_once()
    assert poll(client, job["id"])["submission"]["state"] == "retrying"


def test_transient_failures_give_up_after_the_limit(client, worker, cobalt, clock: FakeClock):
    cobalt.add(responses.POST, f"{COBALT}/notes", status=500, json=COBALT_500)
    job = submit(client, "/v1/notes", NOTE)
    for _ in range(4):
        clock.advance(seconds=60)
        worker.run_once()
    failed = poll(client, job["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "cobalt_unavailable"
    assert failed["submission"]["attempts"] == 4


def test_read_timeout_makes_submission_unknown_and_never_resends(
    client, worker, cobalt, clock: FakeClock
):
    cobalt.add(responses.POST, f"{COBALT}/notes", body=requests.ReadTimeout("slow"))
    job = submit(client, "/v1/notes", NOTE)
    worker.run_once()
    unknown = poll(client, job["id"])
    assert unknown["status"] == "processing"
    assert unknown["submission"]["state"] == "unknown"
    for _ in range(5):
        clock.advance(minutes=10)
        assert not worker.run_once()
    sent = [c for c in cobalt.calls if c.request.url.endswith("/notes")]
    assert len(sent) == 1


def test_connection_cut_after_sending_is_unknown_not_retried(client, worker, cobalt):
    cobalt.add(
        responses.POST,
        f"{COBALT}/notes",
        body=requests.ConnectionError(ConnectionResetError("reset by peer")),
    )
    job = submit(client, "/v1/notes", NOTE)
    worker.run_once()
    assert poll(client, job["id"])["submission"]["state"] == "unknown"


@pytest.mark.parametrize(
    ("status", "kwargs"),
    [
        (502, {"body": "<html><body>502 Bad Gateway</body></html>", "content_type": "text/html"}),
        (504, {"body": ""}),
        (500, {"json": {"error": "upstream"}}),
        (302, {"headers": {"Location": f"{COBALT}/login"}}),
    ],
    ids=["502-html", "504-empty", "500-other-json", "302"],
)
def test_an_answer_not_from_cobalt_makes_the_submission_unknown_and_it_is_never_resent(
    client, worker, cobalt, clock: FakeClock, post_webhook, status: int, kwargs: dict[str, Any]
):
    """A gateway's 502 may come after Cobalt queued the note: sending it again could write
    it twice. The job waits for Cobalt's outcome instead, which settles it once."""
    cobalt.add(responses.POST, f"{COBALT}/notes", status=status, **kwargs)
    cobalt.add(responses.GET, f"{COBALT}/login", json={"success": True})
    job = submit(client, "/v1/notes", NOTE)
    assert worker.run_once()
    unknown = poll(client, job["id"])
    assert unknown["status"] == "processing"
    assert unknown["submission"]["state"] == "unknown"
    for _ in range(5):
        clock.advance(minutes=1)
        assert not worker.run_once()
    assert [c.request.method for c in cobalt.calls if "/notes" in c.request.url] == ["POST"]
    assert not [c for c in cobalt.calls if c.request.url.endswith("/login")]

    post_webhook(event("note.created", appointment_id="728948"))
    assert poll(client, job["id"])["status"] == "completed"
