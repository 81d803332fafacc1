"""Contract tests for the Cobalt sandbox: Cobalt's HTTP shapes, outcomes, delivery and faults.

Deliveries go to a real HTTP receiver on 127.0.0.1 that can be told to fail, so the retry
rules are tested on the wire. Background work is awaited by polling with a deadline.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from webhook_service.logs import JsonLineFormatter
from webhook_service.sandbox import (
    DEMO_IDS,
    AccessTokenConfig,
    FaultSettings,
    SandboxConfig,
    create_sandbox_app,
    get_sandbox,
    start_sandbox_server,
)
from webhook_service.sandbox.cli import config_from_options, sandbox_command
from webhook_service.signatures import compact_json, compute_signature

AUTH = {
    "client_id": "ci_test_sandbox",
    "client_secret": "cs_test_sandbox",
    "access_token": "sandbox-access-token",
}
OTHER_CLINIC_AUTH = AUTH | {"access_token": "other-clinic-token"}
KNOWN_SECRET = "whsec_known_secret_for_tests"
ENCOUNTER = {
    "patient_mrn": DEMO_IDS["patient_mrn"],
    "provider_id": DEMO_IDS["provider_id"],
    "location_id": DEMO_IDS["location_id"],
    "assigned_to_id": DEMO_IDS["assigned_to_id"],
}
NOTE = {"appointment_id": DEMO_IDS["appointment_id"], "note": "Subjective: cough\nPlan: rest"}
SOAP = {"subjective": "Cough.", "objective": "Clear chest.", "assessment": "Cold.", "plan": "Rest."}
T = TypeVar("T")
FAST = {
    "processing_seconds": 0.0,
    "first_attempt_timeout": 0.4,
    "retry_delay_seconds": 0.05,
    "retry_timeout": 0.4,
}


def wait_for(probe: Callable[[], T | None], timeout: float = 5.0) -> T:
    """Poll `probe` until it returns something truthy, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout} s")


# --- a real webhook receiver ----------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.body)
        return result


class Receiver:
    """An HTTP server that records every POST and answers from a script ("200", "500", "hang")."""

    def __init__(self, hang_seconds: float = 1.0) -> None:
        self.requests: list[Received] = []
        self.script: deque[str] = deque()
        self.hang_seconds = hang_seconds
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    receiver.requests.append(
                        Received({k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    action = receiver.script.popleft() if receiver.script else "200"
                if action == "hang":
                    time.sleep(receiver.hang_seconds)
                    action = "200"
                try:
                    self.send_response(int(action))
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sandbox gave up waiting

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/cobalt"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def answer(self, *actions: str) -> None:
        self.script.extend(actions)

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def make_app() -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def build(clock: Callable[[], datetime] | None = None, **overrides: Any) -> Flask:
        config = SandboxConfig(**(FAST | overrides))
        app = create_sandbox_app(config, clock=clock)
        apps.append(app)
        return app

    yield build
    for app in apps:
        get_sandbox(app).shutdown(timeout=3.0)


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app().test_client()


@pytest.fixture
def wired(make_app: Callable[..., Flask], receiver: Receiver) -> FlaskClient:
    """A sandbox with the receiver pre-registered under a known secret."""
    return make_app(webhook_url=receiver.url, webhook_secret=KNOWN_SECRET).test_client()


def events(client: FlaskClient, auth: dict[str, str] = AUTH, **params: Any) -> dict[str, Any]:
    reply = client.get("/v1/webhook-events", headers=auth, query_string=params)
    assert reply.status_code == 200, reply.json
    result: dict[str, Any] = reply.json or {}
    return result


def settled_event(client: FlaskClient, **params: Any) -> dict[str, Any]:
    """Wait for the single event matching `params` to finish delivery, and return it."""

    def probe() -> dict[str, Any] | None:
        found = events(client, **params)["webhook_events"]
        return found[0] if len(found) == 1 and found[0]["delivery_status"] != "pending" else None

    return wait_for(probe)


def submit_note(client: FlaskClient, body: dict[str, Any] = NOTE) -> str:
    """Submit a note and return the job id the sandbox gave it (the reply carries none)."""
    before = len(submissions(client))
    reply = client.post("/v1/notes", json=body, headers=AUTH)
    assert reply.status_code == 200, reply.json
    return str(submissions(client)[before]["job_id"])


def submit_encounter(client: FlaskClient, **fields: str) -> dict[str, Any]:
    reply = client.post("/v1/telephone-encounters", json=ENCOUNTER | fields, headers=AUTH)
    assert reply.status_code == 200, reply.json
    result: dict[str, Any] = reply.json or {}
    return result


def submissions(client: FlaskClient) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = (client.get("/_sandbox/submissions").json or {})["submissions"]
    return result


def deliveries(client: FlaskClient) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = (client.get("/_sandbox/deliveries").json or {})["deliveries"]
    return result


# --- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"client_id": "ci_test_sandbox", "access_token": "sandbox-access-token"},
        AUTH | {"client_id": "ci_live_wrong"},
        AUTH | {"client_secret": "cs_wrong"},
        AUTH | {"access_token": "no-such-token"},
    ],
    ids=["nothing", "no-secret", "wrong-client-id", "wrong-secret", "unknown-token"],
)
def test_bad_credentials_are_401(client: FlaskClient, headers: dict[str, str]) -> None:
    reply = client.post("/v1/notes", json=NOTE, headers=headers)
    assert reply.status_code == 401
    assert reply.json is not None
    assert reply.json["success"] is False
    assert reply.json["message"]
    assert submissions(client) == []


def test_expired_access_token_is_403_login_required_and_announced(client: FlaskClient) -> None:
    assert client.post("/_sandbox/tokens/sandbox-access-token/expire").status_code == 200
    reply = client.post("/v1/notes", json=NOTE, headers=AUTH)
    assert reply.status_code == 403
    assert reply.json is not None
    assert reply.json["success"] is False
    assert reply.json["error"] == "login_required"
    assert reply.json["message"]
    assert submissions(client) == []
    # The events log needs a live token, so relink to look at the login_required event.
    assert client.post("/_sandbox/tokens/sandbox-access-token/renew").status_code == 200
    event = settled_event(client, event_type="login_required")
    assert event["job_id"] is None
    assert event["data"]["access_token_reference_id"] == "atr_sandbox_clinic"


def test_expiring_an_unknown_token_is_404(client: FlaskClient) -> None:
    assert client.post("/_sandbox/tokens/nope/expire").status_code == 404


def test_settings_name_the_calling_clinic(make_app: Callable[..., Flask]) -> None:
    tokens = [
        AccessTokenConfig(access_token="sandbox-access-token", access_token_reference_id="atr_a"),
        AccessTokenConfig(access_token="other-clinic-token", access_token_reference_id="atr_b"),
    ]
    client = make_app(access_tokens=tokens).test_client()
    first = client.get("/v1/settings", headers=AUTH).json
    second = client.get("/v1/settings", headers=OTHER_CLINIC_AUTH).json
    assert first is not None
    assert second is not None
    assert first["success"] is True
    assert first["emr"] == "sandbox"
    assert first["access_token_reference_id"] == "atr_a"
    assert second["access_token_reference_id"] == "atr_b"


def test_real_server_keeps_cobalts_underscore_headers(make_app: Callable[..., Flask]) -> None:
    server, _ = start_sandbox_server(make_app())
    try:
        reply = requests.get(f"http://127.0.0.1:{server.port}/v1/settings", headers=AUTH, timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert reply.status_code == 200
    assert reply.json()["access_token_reference_id"] == "atr_sandbox_clinic"


# --- reads ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "key", "demo_id"),
    [
        ("/v1/providers", "providers", "provider_id"),
        ("/v1/locations", "locations", "location_id"),
        ("/v1/pharmacies", "pharmacies", "pharmacy_ehr_id"),
        ("/v1/staff", "staff", "assigned_to_id"),
    ],
)
def test_read_endpoints_list_the_seeded_demo_ids(
    client: FlaskClient, path: str, key: str, demo_id: str
) -> None:
    reply = client.get(path, headers=AUTH).json
    assert reply is not None
    assert reply["success"] is True
    assert all(item["ehr_id"] and item["name"] for item in reply[key])
    assert DEMO_IDS[demo_id] in {item["ehr_id"] for item in reply[key]}


def test_seed_has_three_pharmacies_one_of_which_fails(client: FlaskClient) -> None:
    pharmacies = (client.get("/v1/pharmacies", headers=AUTH).json or {})["pharmacies"]
    assert len(pharmacies) == 3
    assert DEMO_IDS["failing_pharmacy_ehr_id"] in {p["ehr_id"] for p in pharmacies}


def test_appointments_are_filtered_by_date(make_app: Callable[..., Flask]) -> None:
    client = make_app(today=datetime(2024, 3, 1, tzinfo=UTC).date()).test_client()
    today = client.get(
        "/v1/appointments",
        headers=AUTH,
        query_string={"start_date": "2024-03-01", "end_date": "2024-03-01"},
    ).json
    assert today is not None
    assert DEMO_IDS["appointment_id"] in {a["id"] for a in today["appointments"]}
    assert all(a["start_time"].startswith("2024-03-01") for a in today["appointments"])
    first = today["appointments"][0]
    assert {"id", "patient_mrn", "provider_id", "start_time"} <= set(first)
    week = client.get(
        "/v1/appointments",
        headers=AUTH,
        query_string={"start_date": "2024-02-23", "end_date": "2024-03-08"},
    ).json
    assert week is not None
    assert len(week["appointments"]) > len(today["appointments"])
    bad = client.get("/v1/appointments", headers=AUTH, query_string={"start_date": "03/01/2024"})
    assert bad.status_code == 400


# --- notes ----------------------------------------------------------------------------------


def test_note_reply_has_no_job_id_by_default(client: FlaskClient) -> None:
    reply = client.post("/v1/notes", json=NOTE, headers=AUTH)
    assert reply.status_code == 200
    assert reply.json == {"success": True, "message": "Note upload in progress."}


def test_notes_return_job_id_flag_adds_a_string_job_id(make_app: Callable[..., Flask]) -> None:
    client = make_app(notes_return_job_id=True).test_client()
    reply = client.post("/v1/notes", json=NOTE, headers=AUTH).json
    assert reply is not None
    assert isinstance(reply["job_id"], str)
    assert reply["job_id"] == submissions(client)[0]["job_id"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"note": "text"}, "Missing required field: appointment_id"),
        ({"appointment_id": 728948, "note": "text"}, "appointment_id must be a string"),
        ({"appointment_id": "728948"}, "Missing required field: note"),
        ({"appointment_id": "728948", "note": "  "}, "note must not be empty"),
        ({"appointment_id": "728948", "note": ["a"]}, "note must be a string or an object"),
        ({"appointment_id": "728948", "note": SOAP | {"plan": 3}}, "note.plan must be a string"),
        ({"appointment_id": "728948", "note": {"other": "x"}}, "Missing required field: note."),
        (
            {"appointment_id": "728948", "note": {"plan": "Rest."}},
            "Missing required field: note.subjective",
        ),
        (
            {"appointment_id": "728948", "note": SOAP | {"objective": None}},
            "Missing required field: note.objective",
        ),
        (
            {"appointment_id": "728948", "note": dict.fromkeys(SOAP, " \n\t")},
            "note must have text in at least one of",
        ),
        (
            {"appointment_id": "728948", "note": SOAP | {"icd_10_codes": "J20.9"}},
            "note.icd_10_codes must be an array of strings",
        ),
        (
            {"appointment_id": "728948", "note": SOAP, "cpt_codes": [99213]},
            "cpt_codes must be an array of strings",
        ),
        ([], "Request body must be a JSON object"),
    ],
)
def test_malformed_note_is_400_and_not_accepted(
    client: FlaskClient, body: Any, message: str
) -> None:
    reply = client.post("/v1/notes", json=body, headers=AUTH)
    assert reply.status_code == 400
    assert reply.json is not None
    assert reply.json["success"] is False
    assert reply.json["message"].startswith(message)
    assert submissions(client) == []


@pytest.mark.parametrize(
    "note",
    [SOAP, SOAP | {"subjective": "", "objective": " ", "assessment": ""}],
    ids=["four-sections", "one-section-with-text"],
)
def test_structured_note_with_all_four_sections_and_some_text_is_accepted(
    client: FlaskClient, note: dict[str, str]
) -> None:
    reply = client.post("/v1/notes", json={"appointment_id": "728948", "note": note}, headers=AUTH)
    assert reply.status_code == 200, reply.json


def test_structured_note_with_codes_is_accepted(client: FlaskClient) -> None:
    note = {
        "subjective": "s",
        "objective": "o",
        "assessment": "a",
        "plan": "p",
        "icd_10_codes": ["J20.9"],
        "cpt_codes": ["99213"],
    }
    reply = client.post("/v1/notes", json={"appointment_id": "728948", "note": note}, headers=AUTH)
    assert reply.status_code == 200


def test_note_for_a_seeded_appointment_ends_note_created(client: FlaskClient) -> None:
    job_id = submit_note(client)
    event = settled_event(client, job_id=job_id)
    assert event["event_type"] == "note.created"
    assert event["data"]["appointment_id"] == DEMO_IDS["appointment_id"]


def test_note_uploaded_can_replace_note_created(make_app: Callable[..., Flask]) -> None:
    client = make_app(note_success_event="note.uploaded").test_client()
    event = settled_event(client, job_id=submit_note(client))
    assert event["event_type"] == "note.uploaded"


def test_note_for_an_unknown_appointment_ends_note_failed_with_reasons(
    client: FlaskClient,
) -> None:
    job_id = submit_note(
        client, {"appointment_id": DEMO_IDS["unknown_appointment_id"], "note": "x"}
    )
    event = settled_event(client, job_id=job_id)
    assert event["event_type"] == "note.failed"
    assert event["data"]["appointment_id"] == DEMO_IDS["unknown_appointment_id"]
    assert event["data"]["failure_reason"]
    assert event["data"]["reasons"][0]["code"] == "appointment_not_found"
    assert event["data"]["reasons"][0]["description"]


# --- telephone encounters -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"patient_mrn": None}, "Missing required field: patient_mrn"),
        ({"provider_id": ""}, "Missing required field: provider_id"),
        ({"location_id": None}, "Missing required field: location_id"),
        ({"assigned_to_id": None}, "Missing required field: assigned_to_id"),
        ({"reason": "r" * 51}, "Reason must be 50 characters or less"),
        ({"refill_medication_name": "L"}, "Medication name must be between 2 and 50 characters"),
        ({"refill_medication_name": "L" * 51}, "Medication name must be between 2 and 50"),
        ({"caller": "c" * 101}, "Caller must be 100 characters or less"),
        ({"is_high_priority": True}, "is_high_priority must be a string"),
        ({"is_high_priority": "yes"}, 'is_high_priority must be "true" or "false"'),
        # Counted as Cobalt's Node.js counts: each emoji is two UTF-16 code units.
        ({"reason": "😀" * 25 + "r"}, "Reason must be 50 characters or less"),
        ({"refill_medication_name": "😀" * 25 + "x"}, "Medication name must be between 2"),
        ({"caller": "😀" * 50 + "c"}, "Caller must be 100 characters or less"),
    ],
)
def test_invalid_encounter_is_400_and_not_accepted(
    client: FlaskClient, changes: dict[str, Any], message: str
) -> None:
    body = {k: v for k, v in (ENCOUNTER | changes).items() if v is not None}
    reply = client.post("/v1/telephone-encounters", json=body, headers=AUTH)
    assert reply.status_code == 400
    assert reply.json is not None
    assert reply.json["success"] is False
    assert reply.json["message"].startswith(message)
    assert submissions(client) == []


def test_lengths_at_cobalts_limits_in_utf16_units_are_accepted(client: FlaskClient) -> None:
    """25 emoji are 50 UTF-16 units: at the limit, not over it; one emoji is a 2-unit name."""
    submit_encounter(client, reason="😀" * 25, caller="😀" * 50)
    reply = client.post(
        "/v1/telephone-encounters", json=ENCOUNTER | {"refill_medication_name": "😀"}, headers=AUTH
    )
    assert reply.status_code == 200, reply.json


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"provider_id": "PRV-0000"}, "Provider not found"),
        ({"assigned_to_id": "STF-0000"}, "Staff member not found"),
        ({"location_id": "LOC-0000"}, "Location not found"),
        ({"pharmacy_ehr_id": "PHR-0000"}, "Pharmacy not found"),
        ({"patient_mrn": "MRN999999"}, "User not found"),
    ],
)
def test_an_id_the_emr_does_not_know_is_404_and_not_accepted(
    client: FlaskClient, changes: dict[str, Any], message: str
) -> None:
    reply = client.post("/v1/telephone-encounters", json=ENCOUNTER | changes, headers=AUTH)
    assert reply.status_code == 404
    assert reply.json is not None
    assert reply.json["success"] is False
    assert reply.json["message"].startswith(message)
    assert submissions(client) == []


def test_user_not_found_message_does_not_echo_the_mrn(client: FlaskClient) -> None:
    body = ENCOUNTER | {"patient_mrn": "MRN424242"}
    reply = client.post("/v1/telephone-encounters", json=body, headers=AUTH)
    assert "MRN424242" not in reply.get_data(as_text=True)


def test_encounter_reply_carries_its_id_and_an_integer_job_id(client: FlaskClient) -> None:
    reply = submit_encounter(client, reason="Refill", is_high_priority="true", caller="Self")
    assert reply["success"] is True
    assert reply["message"] == "Telephone encounter queued successfully"
    assert reply["telephone_encounter_id"].startswith("te_")
    assert isinstance(reply["job_id"], int)
    assert submissions(client)[0]["job_id"] == str(reply["job_id"])


def test_encounter_without_refill_is_created(client: FlaskClient) -> None:
    reply = submit_encounter(client)
    event = settled_event(client, job_id=str(reply["job_id"]))
    assert event["event_type"] == "telephone_encounter.created"
    assert event["data"]["telephone_encounter_id"] == reply["telephone_encounter_id"]
    assert "refill_medication_name" not in event["data"]


def test_refill_matched_partially_and_ignoring_case_is_created_with_the_medication(
    client: FlaskClient,
) -> None:
    reply = submit_encounter(
        client, refill_medication_name="LISINOPRIL 10", pharmacy_ehr_id=DEMO_IDS["pharmacy_ehr_id"]
    )
    event = settled_event(client, job_id=str(reply["job_id"]))
    assert event["event_type"] == "telephone_encounter.created"
    assert event["data"]["refill_medication_name"] == "Lisinopril 10 mg tablet"


def test_refill_at_the_failing_pharmacy_is_created_partial(client: FlaskClient) -> None:
    reply = submit_encounter(
        client,
        refill_medication_name=DEMO_IDS["refill_medication_name"],
        pharmacy_ehr_id=DEMO_IDS["failing_pharmacy_ehr_id"],
    )
    event = settled_event(client, job_id=str(reply["job_id"]))
    assert event["event_type"] == "telephone_encounter.created_partial"
    assert event["data"]["telephone_encounter_id"] == reply["telephone_encounter_id"]
    assert event["data"]["reasons"][0]["code"] == "pharmacy_step_failed"


def test_unknown_medication_fails_listing_the_available_medications(client: FlaskClient) -> None:
    reply = submit_encounter(client, refill_medication_name=DEMO_IDS["unknown_medication_name"])
    event = settled_event(client, job_id=str(reply["job_id"]))
    assert event["event_type"] == "telephone_encounter.failed"
    assert event["data"]["telephone_encounter_id"] == reply["telephone_encounter_id"]
    assert event["data"]["failure_reason"]
    assert event["data"]["reasons"][0]["code"] == "medication_not_found"
    # Only refillable medications are offered: the antibiotic is not.
    assert event["data"]["available_medications"] == [
        "Lisinopril 10 mg tablet",
        "Metformin 500 mg tablet",
    ]


def test_encounter_for_a_locked_chart_fails(client: FlaskClient) -> None:
    reply = submit_encounter(client, patient_mrn=DEMO_IDS["locked_chart_patient_mrn"])
    event = settled_event(client, job_id=str(reply["job_id"]))
    assert event["event_type"] == "telephone_encounter.failed"
    assert event["data"]["reasons"][0]["code"] == "chart_locked"
    assert "available_medications" not in event["data"]


# --- delivery -------------------------------------------------------------------------------


def test_delivery_is_compact_json_signed_with_the_webhook_secret(
    wired: FlaskClient, receiver: Receiver
) -> None:
    job_id = submit_note(wired)
    assert settled_event(wired, job_id=job_id)["delivery_status"] == "success"
    [delivery] = receiver.received()
    payload = delivery.payload
    assert delivery.body == compact_json(payload)
    assert delivery.headers["cobalt-verification"] == compute_signature(KNOWN_SECRET, delivery.body)
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["webhook-id"].startswith("msg_")
    assert delivery.headers["webhook-timestamp"] == payload["created"]
    assert delivery.headers["webhook-attempt"] == "1"
    assert datetime.fromisoformat(payload["created"]).tzinfo is not None
    assert set(payload) == {
        "id",
        "access_token_reference_id",
        "object",
        "created",
        "type",
        "job_id",
        "data",
    }
    assert payload["object"] == "event"
    assert payload["access_token_reference_id"] == "atr_sandbox_clinic"
    assert payload["job_id"] == job_id
    assert payload["type"] == "note.created"


@pytest.mark.parametrize("status", ["500", "503", "429"])
def test_receiver_answering_500_once_gets_exactly_one_retry(
    wired: FlaskClient, receiver: Receiver, status: str
) -> None:
    receiver.answer(status)
    event = settled_event(wired, job_id=submit_note(wired))
    first, second = receiver.received()
    assert [first.headers["webhook-attempt"], second.headers["webhook-attempt"]] == ["1", "2"]
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert event["delivery_status"] == "success"
    assert event["delivery_attempts"] == 2


def test_receiver_answering_500_twice_gets_exactly_two_attempts(
    wired: FlaskClient, receiver: Receiver
) -> None:
    receiver.answer("500", "500", "500")
    event = settled_event(wired, job_id=submit_note(wired))
    assert len(receiver.received()) == 2
    assert event["delivery_status"] == "failed"
    assert event["delivery_attempts"] == 2


def test_receiver_that_hangs_past_the_timeout_gets_no_retry(
    wired: FlaskClient, receiver: Receiver
) -> None:
    receiver.answer("hang")
    event = settled_event(wired, job_id=submit_note(wired))
    assert len(receiver.received()) == 1
    assert event["delivery_status"] == "failed"
    assert [d["error"] for d in deliveries(wired)] == ["timeout"]


def test_receiver_answering_400_gets_no_retry(wired: FlaskClient, receiver: Receiver) -> None:
    receiver.answer("400")
    event = settled_event(wired, job_id=submit_note(wired))
    assert len(receiver.received()) == 1
    assert event["delivery_status"] == "failed"
    assert event["delivery_attempts"] == 1


def test_unreachable_receiver_gets_exactly_one_retry(make_app: Callable[..., Flask]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    client = make_app(webhook_url=f"http://127.0.0.1:{closed_port}/hook").test_client()
    event = settled_event(client, job_id=submit_note(client))
    assert event["delivery_status"] == "failed"
    assert [(d["attempt"], d["error"]) for d in deliveries(client)] == [
        (1, "connection_error"),
        (2, "connection_error"),
    ]


def test_event_with_no_registered_webhook_is_listed_as_failed(client: FlaskClient) -> None:
    event = settled_event(client, job_id=submit_note(client))
    assert event["delivery_status"] == "failed"
    assert event["delivery_attempts"] == 0


def test_every_registered_url_receives_every_event(wired: FlaskClient) -> None:
    second = Receiver()
    try:
        reply = wired.post("/v1/webhook", json={"webhook_url": second.url}, headers=AUTH).json
        assert reply is not None
        settled_event(wired, job_id=submit_note(wired))
        [delivery] = second.received()
        assert delivery.headers["cobalt-verification"] == compute_signature(
            reply["secret"], delivery.body
        )
    finally:
        second.close()


# --- webhook registration -------------------------------------------------------------------


def test_webhooks_can_be_registered_listed_and_deleted(client: FlaskClient) -> None:
    url = "https://example.test/webhooks/cobalt"
    created = client.post("/v1/webhook", json={"webhook_url": url}, headers=AUTH).json
    assert created is not None
    assert created["success"] is True
    assert created["secret"].startswith("whsec_")
    assert created["webhook_id"]
    again = client.post("/v1/webhook", json={"webhook_url": url}, headers=AUTH).json
    assert again is not None
    assert again["webhook_id"] == created["webhook_id"]
    listed = (client.get("/v1/webhook", headers=AUTH).json or {})["webhooks"]
    assert [w["webhook_url"] for w in listed] == [url]
    deleted = client.delete("/v1/webhook", query_string={"webhook_url": url}, headers=AUTH)
    assert deleted.json == {"success": True, "deleted": 1}
    assert (client.get("/v1/webhook", headers=AUTH).json or {})["webhooks"] == []
    missing = client.delete("/v1/webhook", json={"webhook_url": url}, headers=AUTH)
    assert missing.status_code == 404


@pytest.mark.parametrize("body", [{}, {"webhook_url": "ftp://x"}, {"webhook_url": "nope"}])
def test_registering_a_non_http_url_is_400(client: FlaskClient, body: dict[str, str]) -> None:
    reply = client.post("/v1/webhook", json=body, headers=AUTH)
    assert reply.status_code == 400
    assert reply.json is not None
    assert reply.json["success"] is False


def test_rotated_secret_signs_deliveries_while_the_old_one_stays_valid(
    wired: FlaskClient, receiver: Receiver
) -> None:
    rotated = wired.post("/v1/webhook/rotate-secret", headers=AUTH).json
    assert rotated is not None
    assert rotated["success"] is True
    new_secret = rotated["secret"]
    assert new_secret.startswith("whsec_")
    assert new_secret != KNOWN_SECRET
    assert [s["secret"] for s in rotated["valid_secrets"]] == [new_secret, KNOWN_SECRET]
    old_expiry = datetime.fromisoformat(rotated["valid_secrets"][1]["expires_at"])
    assert old_expiry - datetime.now(UTC) > timedelta(hours=23)
    settled_event(wired, job_id=submit_note(wired))
    [delivery] = receiver.received()
    assert delivery.headers["cobalt-verification"] == compute_signature(new_secret, delivery.body)


def test_rotated_out_secret_stops_being_valid_after_the_grace_period(
    make_app: Callable[..., Flask], receiver: Receiver
) -> None:
    client = make_app(
        webhook_url=receiver.url, webhook_secret=KNOWN_SECRET, secret_grace_seconds=0
    ).test_client()
    rotated = client.post(
        "/v1/webhook/rotate-secret", json={"webhook_url": receiver.url}, headers=AUTH
    ).json
    assert rotated is not None
    assert [s["secret"] for s in rotated["valid_secrets"]] == [rotated["secret"]]


def test_rotating_with_several_webhooks_needs_a_selector(wired: FlaskClient) -> None:
    wired.post("/v1/webhook", json={"webhook_url": "https://other.test/hook"}, headers=AUTH)
    assert wired.post("/v1/webhook/rotate-secret", headers=AUTH).status_code == 400
    unknown = {"webhook_url": "https://unknown.test/"}
    assert wired.post("/v1/webhook/rotate-secret", json=unknown, headers=AUTH).status_code == 404


# --- webhook-events -------------------------------------------------------------------------


def test_webhook_events_filter_by_job_id_and_event_type(client: FlaskClient) -> None:
    note_job = submit_note(client)
    encounter_job = str(submit_encounter(client)["job_id"])
    settled_event(client, job_id=note_job)
    settled_event(client, job_id=encounter_job)
    by_type = events(client, event_type="telephone_encounter.created")["webhook_events"]
    assert [e["job_id"] for e in by_type] == [encounter_job]
    by_job = events(client, job_id=note_job)["webhook_events"]
    assert [e["event_type"] for e in by_job] == ["note.created"]
    first = by_job[0]
    expected = {"event_id", "event_type", "job_id", "data", "created_at", "delivery_status"}
    assert expected | {"delivery_attempts"} <= set(first)


def test_webhook_events_filter_by_delivery_status(wired: FlaskClient) -> None:
    delivered_job = submit_note(wired)
    settled_event(wired, job_id=delivered_job)
    wired.delete("/v1/webhook", headers=AUTH)
    undelivered_job = submit_note(wired)
    settled_event(wired, job_id=undelivered_job)
    succeeded = events(wired, delivery_status="success")["webhook_events"]
    failed = events(wired, delivery_status="failed")["webhook_events"]
    assert [e["job_id"] for e in succeeded] == [delivered_job]
    assert [e["job_id"] for e in failed] == [undelivered_job]


def test_webhook_events_filter_by_created_date_inclusively(
    make_app: Callable[..., Flask],
) -> None:
    now = [datetime(2024, 3, 1, 23, 59, tzinfo=UTC)]
    client = make_app(clock=lambda: now[0]).test_client()
    first = submit_note(client)
    settled_event(client, job_id=first)
    now[0] = datetime(2024, 3, 3, 0, 1, tzinfo=UTC)
    second = submit_note(client)
    settled_event(client, job_id=second)

    def jobs(**params: str) -> list[str]:
        return [e["job_id"] for e in events(client, sort="created_at", **params)["webhook_events"]]

    assert jobs(start_date="2024-03-01", end_date="2024-03-03") == [first, second]
    assert jobs(end_date="2024-03-01") == [first]
    assert jobs(start_date="2024-03-02") == [second]
    assert jobs(start_date="2024-03-02", end_date="2024-03-02") == []


def test_webhook_events_paginate_and_sort_by_creation(make_app: Callable[..., Flask]) -> None:
    now = [datetime(2024, 3, 1, 9, 0, tzinfo=UTC)]
    client = make_app(clock=lambda: now[0]).test_client()
    jobs = []
    for minute in range(5):
        now[0] = datetime(2024, 3, 1, 9, minute, tzinfo=UTC)
        jobs.append(submit_note(client))
        settled_event(client, job_id=jobs[-1])
    page = events(client, page_size=2, page=1, sort="created_at")
    assert page["pagination"] == {
        "current_page": 1,
        "total_pages": 3,
        "total_count": 5,
        "page_size": 2,
    }
    assert [e["job_id"] for e in page["webhook_events"]] == jobs[:2]
    last = events(client, page_size=2, page=3, sort="created_at")["webhook_events"]
    assert [e["job_id"] for e in last] == jobs[4:]
    newest_first = events(client, sort="-created_at")["webhook_events"]
    assert [e["job_id"] for e in newest_first] == jobs[::-1]
    assert events(client)["pagination"]["page_size"] == 20


@pytest.mark.parametrize(
    "params",
    [
        {"page_size": "101"},
        {"page_size": "0"},
        {"page": "0"},
        {"page": "two"},
        {"sort": "created"},
        {"delivery_status": "delivered"},
        {"start_date": "2024-3-1x"},
        {"start_date": "2024-03-02", "end_date": "2024-03-01"},
    ],
)
def test_bad_webhook_events_query_is_400(client: FlaskClient, params: dict[str, str]) -> None:
    reply = client.get("/v1/webhook-events", headers=AUTH, query_string=params)
    assert reply.status_code == 400
    assert reply.json is not None
    assert reply.json["success"] is False


def test_webhook_events_are_scoped_to_the_calling_clinic(make_app: Callable[..., Flask]) -> None:
    tokens = [
        AccessTokenConfig(access_token="sandbox-access-token", access_token_reference_id="atr_a"),
        AccessTokenConfig(access_token="other-clinic-token", access_token_reference_id="atr_b"),
    ]
    client = make_app(access_tokens=tokens).test_client()
    settled_event(client, job_id=submit_note(client))
    assert events(client, auth=OTHER_CLINIC_AUTH)["pagination"]["total_count"] == 0


# --- faults and control plane ---------------------------------------------------------------


def test_submit_error_rate_answers_500_and_accepts_nothing(make_app: Callable[..., Flask]) -> None:
    client = make_app(faults=FaultSettings(submit_error_rate=1.0)).test_client()
    note = client.post("/v1/notes", json=NOTE, headers=AUTH)
    encounter = client.post("/v1/telephone-encounters", json=ENCOUNTER, headers=AUTH)
    assert (note.status_code, encounter.status_code) == (500, 500)
    assert note.json is not None
    assert note.json["success"] is False
    assert submissions(client) == []
    assert get_sandbox(client.application).drain(timeout=2)
    assert events(client)["pagination"]["total_count"] == 0


def test_submit_hang_accepts_the_job_but_the_client_times_out(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(faults=FaultSettings(submit_hang_rate=1.0, hang_seconds=0.5))
    server, _ = start_sandbox_server(app)
    try:
        with pytest.raises(requests.Timeout):
            requests.post(
                f"http://127.0.0.1:{server.port}/v1/notes", json=NOTE, headers=AUTH, timeout=0.1
            )
        client = app.test_client()
        [accepted] = submissions(client)
        event = settled_event(client, job_id=accepted["job_id"])
        assert event["event_type"] == "note.created"
    finally:
        server.shutdown()
        server.server_close()


def test_drop_rate_delivers_nothing_and_lists_the_event_as_failed(
    make_app: Callable[..., Flask], receiver: Receiver
) -> None:
    app = make_app(webhook_url=receiver.url, faults=FaultSettings(drop_rate=1.0))
    client = app.test_client()
    event = settled_event(client, job_id=submit_note(client))
    assert get_sandbox(app).drain(timeout=2)
    assert event["delivery_status"] == "failed"
    assert receiver.received() == []


def test_duplicate_rate_delivers_the_same_webhook_id_twice(
    make_app: Callable[..., Flask], receiver: Receiver
) -> None:
    app = make_app(webhook_url=receiver.url, faults=FaultSettings(duplicate_rate=1.0))
    client = app.test_client()
    settled_event(client, job_id=submit_note(client))
    first, second = receiver.received()
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert [first.headers["webhook-attempt"], second.headers["webhook-attempt"]] == ["1", "2"]


def test_reorder_holds_an_event_back_so_a_later_one_arrives_first(
    wired: FlaskClient, receiver: Receiver
) -> None:
    wired.post("/_sandbox/faults", json={"reorder_rate": 1.0, "delay_seconds": 0.5})
    held = submit_note(wired)
    wait_for(lambda: events(wired, job_id=held)["webhook_events"])
    wired.post("/_sandbox/faults", json={"reorder_rate": 0.0})
    prompt = str(submit_encounter(wired)["job_id"])
    settled_event(wired, job_id=held)
    assert [r.payload["job_id"] for r in receiver.received()] == [prompt, held]


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_error_answers_html_and_accepts_nothing(
    make_app: Callable[..., Flask], status: int
) -> None:
    faults = FaultSettings(gateway_error_rate=1.0, gateway_status=status)
    client = make_app(faults=faults).test_client()
    note = client.post("/v1/notes", json=NOTE, headers=AUTH)
    encounter = client.post("/v1/telephone-encounters", json=ENCOUNTER, headers=AUTH)
    for reply in (note, encounter):
        assert reply.status_code == status
        assert reply.content_type.startswith("text/html")
        assert reply.get_json(silent=True) is None  # no Cobalt JSON to go by
    assert submissions(client) == []
    assert get_sandbox(client.application).drain(timeout=2)
    assert events(client)["pagination"]["total_count"] == 0


def test_the_demo_gateway_appointment_always_gets_a_504_and_nothing_is_queued(
    make_app: Callable[..., Flask],
) -> None:
    """The demo page's "needs attention" case, with no fault configured."""
    client = make_app().test_client()
    body = {**NOTE, "appointment_id": DEMO_IDS["gateway_timeout_appointment_id"]}
    reply = client.post("/v1/notes", json=body, headers=AUTH)
    assert reply.status_code == 504
    assert reply.content_type.startswith("text/html")
    assert submissions(client) == []
    assert client.post("/v1/notes", json=NOTE, headers=AUTH).status_code == 200


def test_gateway_error_after_queue_creates_the_job_and_sends_its_webhook(
    make_app: Callable[..., Flask], receiver: Receiver
) -> None:
    """The dangerous case: the answer says 502, yet the note is queued and written."""
    faults = FaultSettings(gateway_error_after_queue_rate=1.0)
    client = make_app(webhook_url=receiver.url, faults=faults).test_client()
    reply = client.post("/v1/notes", json=NOTE, headers=AUTH)
    assert reply.status_code == 502
    assert b"Bad Gateway" in reply.data
    [accepted] = submissions(client)
    event = settled_event(client, job_id=accepted["job_id"])
    assert event["event_type"] == "note.created"
    assert event["delivery_status"] == "success"
    assert [r.payload["job_id"] for r in receiver.received()] == [accepted["job_id"]]


def test_success_false_answers_200_and_accepts_nothing(make_app: Callable[..., Flask]) -> None:
    client = make_app(faults=FaultSettings(success_false_rate=1.0)).test_client()
    for path, body in (("/v1/notes", NOTE), ("/v1/telephone-encounters", ENCOUNTER)):
        reply = client.post(path, json=body, headers=AUTH)
        assert reply.status_code == 200
        assert reply.json is not None
        assert reply.json["success"] is False
        assert reply.json["message"]
    assert submissions(client) == []


def test_sync_medication_not_found_is_404_listing_the_available_medications(
    make_app: Callable[..., Flask],
) -> None:
    client = make_app(faults=FaultSettings(sync_medication_not_found_rate=1.0)).test_client()
    unknown = ENCOUNTER | {"refill_medication_name": DEMO_IDS["unknown_medication_name"]}
    reply = client.post("/v1/telephone-encounters", json=unknown, headers=AUTH)
    assert reply.status_code == 404
    assert reply.json == {
        "success": False,
        "message": "Medication not found in the patient's refillable medications.",
        "available_medications": ["Lisinopril 10 mg tablet", "Metformin 500 mg tablet"],
    }
    assert submissions(client) == []
    # A medication the patient can refill is still accepted.
    submit_encounter(client, refill_medication_name=DEMO_IDS["refill_medication_name"])


def test_unsupported_emr_refuses_encounters_with_422_but_takes_notes(
    make_app: Callable[..., Flask],
) -> None:
    token = AccessTokenConfig(
        access_token="sandbox-access-token",
        access_token_reference_id="atr_sandbox_clinic",
        unsupported_emr=True,
    )
    client = make_app(access_tokens=[token]).test_client()
    reply = client.post("/v1/telephone-encounters", json=ENCOUNTER, headers=AUTH)
    assert reply.status_code == 422
    assert reply.json is not None
    assert reply.json["success"] is False
    assert reply.json["message"].startswith("Unsupported EMR")
    assert submissions(client) == []
    submit_note(client)


def test_unsupported_emr_can_be_switched_at_run_time(client: FlaskClient) -> None:
    emr = "/_sandbox/tokens/sandbox-access-token/emr"
    assert client.post(emr, json={"supported": False}).status_code == 200
    reply = client.post("/v1/telephone-encounters", json=ENCOUNTER, headers=AUTH)
    assert reply.status_code == 422
    assert client.post(emr, json={"supported": True}).status_code == 200
    submit_encounter(client)
    assert client.post(emr, json={"supported": "no"}).status_code == 400
    assert client.post("/_sandbox/tokens/nope/emr", json={"supported": False}).status_code == 404


def test_foreign_event_rate_sends_an_appointment_event_sharing_the_notes_appointment(
    make_app: Callable[..., Flask], receiver: Receiver
) -> None:
    faults = FaultSettings(foreign_event_rate=1.0)
    client = make_app(webhook_url=receiver.url, faults=faults).test_client()
    note_job = submit_note(client)
    foreign = settled_event(client, event_type="appointment.failed")
    assert foreign["data"]["appointment_id"] == NOTE["appointment_id"]
    assert foreign["job_id"] != note_job
    assert foreign["delivery_status"] == "success"
    settled_event(client, job_id=note_job)
    delivered = {r.payload["type"]: r.payload for r in receiver.received()}
    assert sorted(delivered) == ["appointment.failed", "note.created"]
    assert {p["data"]["appointment_id"] for p in delivered.values()} == {NOTE["appointment_id"]}


def test_any_event_can_be_injected_signed_delivered_and_listed(
    wired: FlaskClient, receiver: Receiver
) -> None:
    body = {"type": "appointment.failed", "data": {"appointment_id": "728948"}, "job_id": "77"}
    reply = wired.post("/_sandbox/events", json=body)
    assert reply.status_code == 200
    event = settled_event(wired, job_id="77")
    assert event["event_id"] == (reply.json or {})["event_id"]
    assert event["event_type"] == "appointment.failed"
    [received] = wait_for(receiver.received)
    assert received.payload["data"] == {"appointment_id": "728948"}
    assert received.headers["cobalt-verification"] == compute_signature(KNOWN_SECRET, received.body)
    assert wired.post("/_sandbox/events", json={"data": {}}).status_code == 400
    unknown = body | {"access_token": "nope"}
    assert wired.post("/_sandbox/events", json=unknown).status_code == 404


def test_faults_can_be_read_and_changed_at_run_time(client: FlaskClient) -> None:
    assert (client.get("/_sandbox/faults").json or {})["faults"]["drop_rate"] == 0.0
    changed = client.post("/_sandbox/faults", json={"drop_rate": 0.25, "seed": 7}).json
    assert changed is not None
    assert changed["faults"]["drop_rate"] == 0.25
    assert (client.get("/_sandbox/faults").json or {})["faults"]["seed"] == 7
    assert client.post("/_sandbox/faults", json={"drop_rate": 2}).status_code == 400
    assert client.post("/_sandbox/faults", json={"no_such_knob": 1}).status_code == 400


def test_a_fault_seed_makes_the_draws_repeatable(make_app: Callable[..., Flask]) -> None:
    def pattern() -> list[int]:
        client = make_app(faults=FaultSettings(submit_error_rate=0.5, seed=42)).test_client()
        return [client.post("/v1/notes", json=NOTE, headers=AUTH).status_code for _ in range(20)]

    first = pattern()
    assert first == pattern()
    assert {200, 500} == set(first)


def test_submissions_list_exactly_one_entry_per_accepted_job(client: FlaskClient) -> None:
    note_job = submit_note(client)
    reply = submit_encounter(client)
    client.post("/v1/notes", json={"note": "rejected"}, headers=AUTH)
    listed = submissions(client)
    assert [(s["kind"], s["job_id"]) for s in listed] == [
        ("note", note_job),
        ("telephone_encounter", str(reply["job_id"])),
    ]
    assert listed[0]["body"] == NOTE
    assert listed[1]["telephone_encounter_id"] == reply["telephone_encounter_id"]
    assert {s["access_token_reference_id"] for s in listed} == {"atr_sandbox_clinic"}


def test_reset_forgets_everything_but_the_preregistered_webhook(
    wired: FlaskClient, receiver: Receiver
) -> None:
    settled_event(wired, job_id=submit_note(wired))
    wired.post("/v1/webhook", json={"webhook_url": "https://other.test/hook"}, headers=AUTH)
    wired.post("/_sandbox/faults", json={"drop_rate": 1.0})
    assert wired.post("/_sandbox/reset").status_code == 200
    assert submissions(wired) == []
    assert events(wired)["pagination"]["total_count"] == 0
    listed = (wired.get("/v1/webhook", headers=AUTH).json or {})["webhooks"]
    assert [(w["webhook_url"], w["secret"]) for w in listed] == [(receiver.url, KNOWN_SECRET)]
    assert (wired.get("/_sandbox/faults").json or {})["faults"]["drop_rate"] == 0.0


def test_unknown_paths_answer_json_404(client: FlaskClient) -> None:
    reply = client.get("/v1/nothing-here", headers=AUTH)
    assert reply.status_code == 404
    assert reply.json is not None
    assert reply.json["success"] is False


# --- CLI and logs ---------------------------------------------------------------------------


def test_cli_options_become_the_sandbox_config() -> None:
    args = [
        "--port=6000",
        "--processing-seconds=0.5",
        "--webhook-url=http://127.0.0.1:5000/webhooks/cobalt",
        "--webhook-secret=whsec_x",
        "--notes-return-job-id",
        "--access-token=tok-a=atr_a",
        "--access-token=tok-b",
        "--drop-rate=0.1",
        "--seed=3",
        "--gateway-error-after-queue-rate=0.2",
        "--gateway-status=504",
        "--success-false-rate=0.3",
        "--sync-medication-not-found-rate=1",
        "--foreign-event-rate=0.4",
        "--unsupported-emr=tok-b",
    ]
    context = sandbox_command.make_context("sandbox", args)
    config = config_from_options(context.params)
    assert context.params["port"] == 6000
    assert config.processing_seconds == 0.5
    assert config.webhook_secret == "whsec_x"
    assert config.notes_return_job_id is True
    assert [(t.access_token, t.access_token_reference_id) for t in config.access_tokens] == [
        ("tok-a", "atr_a"),
        ("tok-b", "atr_sandbox_clinic_2"),
    ]
    assert (config.faults.drop_rate, config.faults.seed) == (0.1, 3)
    assert config.faults.gateway_error_after_queue_rate == 0.2
    assert config.faults.gateway_status == 504
    assert config.faults.success_false_rate == 0.3
    assert config.faults.sync_medication_not_found_rate == 1.0
    assert config.faults.foreign_event_rate == 0.4
    assert [t.unsupported_emr for t in config.access_tokens] == [False, True]


def test_cli_port_defaults_to_5050_and_reads_sandbox_port(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sandbox_command.make_context("sandbox", []).params["port"] == 5050
    monkeypatch.setenv("SANDBOX_PORT", "6123")
    assert sandbox_command.make_context("sandbox", []).params["port"] == 6123


def test_sandbox_logs_carry_no_phi(
    wired: FlaskClient, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="webhook_service.sandbox")
    secret_text = "Patient reports chest pain"
    job_id = submit_note(wired, {"appointment_id": "728948", "note": secret_text})
    reply = submit_encounter(wired, refill_medication_name="Metformin", caller="Maria Moreno")
    settled_event(wired, job_id=job_id)
    settled_event(wired, job_id=str(reply["job_id"]))
    wired.post("/v1/telephone-encounters", json=ENCOUNTER | {"patient_mrn": "MRN555"}, headers=AUTH)
    lines = [JsonLineFormatter().format(record) for record in caplog.records]
    assert any(job_id in line for line in lines)
    for phi in (secret_text, DEMO_IDS["patient_mrn"], "MRN555", "Metformin", "Maria", "Alice"):
        assert not any(phi in line for line in lines), phi
