"""The Cobalt client: what each kind of answer to a write proves about the EMR.

Cobalt has no idempotency key, so the class of error decides whether a note can be sent
again (`CobaltTransient`), must be looked up first (`CobaltAmbiguous`), or failed with a
code a front end can act on (`CobaltRejected`).
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
import responses
from urllib3.exceptions import MaxRetryError, NewConnectionError

from webhook_service.cobalt import (
    REJECTION_CODES,
    CobaltAmbiguous,
    CobaltClient,
    CobaltRejected,
    CobaltTransient,
    Rejection,
    recognise_rejection,
)

COBALT = "https://cobalt.test/v1"
NOTE = {"appointment_id": "728948", "note": "Patient doing well."}
HTML_502 = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


@pytest.fixture
def cobalt() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def client() -> CobaltClient:
    return CobaltClient(COBALT, "ci_test", "cs_test", connect_timeout=1, read_timeout=1)


def notes_posted(cobalt: responses.RequestsMock) -> int:
    return len([c for c in cobalt.calls if c.request.method == "POST"])


# --- resent: Cobalt certainly did not take it ------------------------------------------------


def test_connection_refused_is_transient(cobalt, client: CobaltClient) -> None:
    refused = requests.ConnectionError(
        MaxRetryError(None, "/v1/notes", NewConnectionError(None, "Connection refused"))  # type: ignore[arg-type]
    )
    cobalt.add(responses.POST, f"{COBALT}/notes", body=refused)
    with pytest.raises(CobaltTransient):
        client.create_note("at", NOTE)


def test_429_is_transient(cobalt, client: CobaltClient) -> None:
    cobalt.add(responses.POST, f"{COBALT}/notes", status=429, body="")
    with pytest.raises(CobaltTransient) as raised:
        client.create_note("at", NOTE)
    assert raised.value.status_code == 429


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_with_cobalts_own_error_body_is_transient(cobalt, client, status: int) -> None:
    body = {"success": False, "message": "Internal server error"}
    cobalt.add(responses.POST, f"{COBALT}/notes", status=status, json=body)
    with pytest.raises(CobaltTransient) as raised:
        client.create_note("at", NOTE)
    assert raised.value.status_code == status


# --- unknown: it may be in the EMR ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kwargs"),
    [
        (502, {"body": HTML_502, "content_type": "text/html"}),
        (504, {"body": ""}),
        (500, {"json": {"error": "upstream timed out"}}),  # JSON, but not Cobalt's
        (503, {"body": "Service Unavailable", "content_type": "text/plain"}),
        (502, {"json": ["not", "an", "object"]}),
    ],
    ids=["502-html", "504-empty", "500-other-json", "503-text", "502-json-list"],
)
def test_5xx_without_cobalts_error_body_is_unknown(
    cobalt, client: CobaltClient, status: int, kwargs: dict[str, Any]
) -> None:
    cobalt.add(responses.POST, f"{COBALT}/telephone-encounters", status=status, **kwargs)
    with pytest.raises(CobaltAmbiguous) as raised:
        client.create_telephone_encounter("at", {"patient_mrn": "MRN1"})
    assert raised.value.status_code == status
    assert not isinstance(raised.value, CobaltTransient)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_unknown_and_not_followed(cobalt, client: CobaltClient, status: int) -> None:
    cobalt.add(
        responses.POST,
        f"{COBALT}/notes",
        status=status,
        headers={"Location": f"{COBALT}/elsewhere"},
    )
    # Were the redirect followed, this GET's 200 would read as "accepted".
    cobalt.add(responses.GET, f"{COBALT}/elsewhere", json={"success": True})
    cobalt.add(responses.POST, f"{COBALT}/elsewhere", json={"success": True})
    with pytest.raises(CobaltAmbiguous) as raised:
        client.create_note("at", NOTE)
    assert raised.value.status_code == status
    assert [c.request.url for c in cobalt.calls] == [f"{COBALT}/notes"]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_read_is_not_redirected_so_the_credentials_stay_with_cobalt(
    cobalt, client: CobaltClient, status: int
) -> None:
    cobalt.add(
        responses.GET,
        f"{COBALT}/settings",
        status=status,
        headers={"Location": "https://elsewhere.test/settings"},
    )
    cobalt.add(responses.GET, "https://elsewhere.test/settings", json={"success": True})
    with pytest.raises(CobaltTransient) as raised:
        client.get_access_token_reference_id("at")
    assert raised.value.status_code == status
    assert [c.request.url for c in cobalt.calls] == [f"{COBALT}/settings"]


@pytest.mark.parametrize("field", ["message", "error"])
def test_a_long_refusal_is_kept_as_a_bounded_message(cobalt, client: CobaltClient, field) -> None:
    cobalt.add(
        responses.POST, f"{COBALT}/notes", status=400, json={"success": False, field: "x" * 100_000}
    )
    with pytest.raises(CobaltRejected) as raised:
        client.create_note("at", NOTE)
    assert len(raised.value.message) == 500
    assert raised.value.message.endswith("\u2026")


def test_read_timeout_is_unknown(cobalt, client: CobaltClient) -> None:
    cobalt.add(responses.POST, f"{COBALT}/notes", body=requests.ReadTimeout("slow"))
    with pytest.raises(CobaltAmbiguous):
        client.create_note("at", NOTE)


# --- refused: Cobalt said no -------------------------------------------------------------------


def test_a_2xx_saying_success_false_is_a_rejection(cobalt, client: CobaltClient) -> None:
    body = {"success": False, "message": "Unable to queue the note"}
    cobalt.add(responses.POST, f"{COBALT}/notes", status=200, json=body)
    with pytest.raises(CobaltRejected) as raised:
        client.create_note("at", NOTE)
    assert (raised.value.status_code, raised.value.message) == (200, "Unable to queue the note")
    assert raised.value.code == "cobalt_rejected"


def test_a_2xx_saying_unsupported_emr_is_that_rejection(cobalt, client: CobaltClient) -> None:
    body = {"success": False, "message": "Unsupported EMR"}
    cobalt.add(responses.POST, f"{COBALT}/telephone-encounters", status=200, json=body)
    with pytest.raises(CobaltRejected) as raised:
        client.create_telephone_encounter("at", {})
    assert raised.value.rejection == Rejection("unsupported_emr")


def test_an_accepted_write_keeps_cobalts_ids(cobalt, client: CobaltClient) -> None:
    body = {"success": True, "message": "queued", "telephone_encounter_id": "te_1", "job_id": 7}
    cobalt.add(responses.POST, f"{COBALT}/telephone-encounters", json=body)
    reply = client.create_telephone_encounter("at", {})
    assert (reply.job_id, reply.telephone_encounter_id) == ("7", "te_1")


MEDS = ["Lisinopril 10 mg tablet", "Metformin 500 mg tablet"]


@pytest.mark.parametrize(
    ("status", "body", "code", "field"),
    [
        (
            404,
            {"message": "Provider not found. Sync providers using GET /v1/providers."},
            "provider_not_found",
            "provider_id",
        ),
        (400, {"error": "PROVIDER_NOT_FOUND"}, "provider_not_found", "provider_id"),
        (
            404,
            {"message": "provider_id doesn't exist in the providers table."},
            "provider_not_found",
            "provider_id",
        ),
        (404, {"message": "Staff member not found"}, "staff_not_found", "assigned_to_id"),
        (
            400,
            {"message": "assigned_to_id doesn't exist in the staff list."},
            "staff_not_found",
            "assigned_to_id",
        ),
        (
            404,
            {"error": "staff_member_not_found", "message": "Not found"},
            "staff_not_found",
            "assigned_to_id",
        ),
        (
            404,
            {"message": "Location not found. Call GET /v1/locations to resolve this error."},
            "location_not_found",
            "location_id",
        ),
        (404, {"message": "Pharmacy not found"}, "pharmacy_not_found", "pharmacy_ehr_id"),
        (
            400,
            {"message": "pharmacy_ehr_id is present but no corresponding pharmacy can be found"},
            "pharmacy_not_found",
            "pharmacy_ehr_id",
        ),
        (404, {"message": "User not found"}, "user_not_found", None),
        (422, {"message": "Unsupported EMR"}, "unsupported_emr", None),
        (
            400,
            {"message": "This EMR is not supported for telephone encounters"},
            "unsupported_emr",
            None,
        ),
        (
            403,
            {"success": False, "error": "login_required", "message": "Re-link"},
            "login_required",
            None,
        ),
        (403, {"success": False, "message": "Your EMR session expired"}, "login_required", None),
        (403, {"message": "Forbidden by WAF"}, "cobalt_rejected", None),
        (400, {"message": "Missing required field: patient_mrn"}, "cobalt_rejected", None),
        (400, {"message": "Reason Too Long"}, "cobalt_rejected", None),
        (
            400,
            {"message": "Medication name must be between 2 and 50 characters"},
            "cobalt_rejected",
            None,
        ),
        (400, {}, "cobalt_rejected", None),
    ],
)
def test_each_synchronous_error_gets_its_code_and_field(
    status: int, body: dict[str, Any], code: str, field: str | None
) -> None:
    rejection = recognise_rejection(status, body)
    assert (rejection.code, rejection.field) == (code, field)
    assert rejection.code in REJECTION_CODES
    assert rejection.available_medications is None


@pytest.mark.parametrize(
    "body",
    [
        {"message": "Medication not found", "available_medications": MEDS},
        {"message": "No refillable medication matched", "available_medications": MEDS},
        {"message": "Could not add the refill", "available_medications": MEDS},
    ],
)
def test_medication_not_found_keeps_the_available_medications(body: dict[str, Any]) -> None:
    assert recognise_rejection(404, body) == Rejection(
        "medication_not_found", "refill_medication_name", MEDS
    )


def test_a_synchronous_error_reaches_the_caller_with_its_code(cobalt, client) -> None:
    body = {"success": False, "message": "Medication not found", "available_medications": MEDS}
    cobalt.add(responses.POST, f"{COBALT}/telephone-encounters", status=404, json=body)
    with pytest.raises(CobaltRejected) as raised:
        client.create_telephone_encounter("at", {})
    assert raised.value.rejection.code == "medication_not_found"
    assert raised.value.rejection.available_medications == MEDS
    assert raised.value.message == "Medication not found"
    assert notes_posted(cobalt) == 1


def test_reads_still_retry_any_5xx(cobalt, client: CobaltClient) -> None:
    """A read changes nothing at Cobalt, so a gateway's 502 to it is simply tried again."""
    cobalt.add(responses.GET, f"{COBALT}/webhook-events", status=502, body=HTML_502)
    with pytest.raises(CobaltTransient):
        client.list_webhook_events("at")
