"""`POST /webhooks/cobalt` end to end: signatures, dedup, correlation, terminal rules, and
hostile input. Every signed delivery is kept; no input produces a 500.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.orm import Session

from tests.conftest import COBALT, OLD_WEBHOOK_SECRET, WEBHOOK_SECRET, event, make_settings, sign
from webhook_service.db import SessionFactory
from webhook_service.http import create_app
from webhook_service.models import Clinic, Job, JobEvent, WebhookDelivery
from webhook_service.services.clinics import relink_clinic
from webhook_service.services.jobs import DEFAULT_CLINIC
from webhook_service.signatures import compact_json, compute_signature
from webhook_service.worker import Worker

NOTE = {
    "appointment_id": "728948",
    "note": {"subjective": "s", "objective": "o", "assessment": "a", "plan": "p"},
}
ENCOUNTER = {
    "patient_mrn": "MRN-1001",
    "provider_id": "prov_1",
    "location_id": "loc_1",
    "assigned_to_id": "staff_1",
    "reason": "Refill request",
}
URL = "/webhooks/cobalt"


# --- helpers ---------------------------------------------------------------------------------


def submit(client: FlaskClient, path: str, body: dict[str, Any]) -> str:
    response = client.post(path, json=body)
    assert response.status_code == 202, response.json
    return str(response.json["id"])


def accept_note(cobalt: responses.RequestsMock, **extra: Any) -> None:
    cobalt.add(responses.POST, f"{COBALT}/notes", json={"success": True, "message": "ok", **extra})


def accept_encounter(cobalt: responses.RequestsMock) -> None:
    cobalt.add(
        responses.POST,
        f"{COBALT}/telephone-encounters",
        json={"success": True, "telephone_encounter_id": "te_77", "job_id": 4242},
    )


def deliver(
    client: FlaskClient,
    payload: Any,
    *,
    secret: str = WEBHOOK_SECRET,
    signature: str | None = None,
    headers: dict[str, str] | None = None,
    omit: tuple[str, ...] = (),
) -> Any:
    """POST a payload (or exact bytes) like Cobalt, with full control over every header."""
    body = payload if isinstance(payload, bytes) else compact_json(payload)
    sent = {
        "content-type": "application/json",
        "cobalt-verification": compute_signature(secret, body) if signature is None else signature,
        "webhook-id": f"msg_{uuid.uuid4().hex}",
        "webhook-timestamp": "2026-11-23T12:00:05Z",
        "webhook-attempt": "1",
    }
    sent.update(headers or {})
    for name in omit:
        sent.pop(name)
    return client.post(URL, data=body, headers=sent)


def deliveries(sessions: SessionFactory) -> list[WebhookDelivery]:
    with sessions() as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def only_delivery(sessions: SessionFactory) -> WebhookDelivery:
    rows = deliveries(sessions)
    assert len(rows) == 1, [r.dedup_key for r in rows]
    return rows[0]


def load_job(sessions: SessionFactory, job_id: str) -> Job:
    with sessions() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job


def timeline(sessions: SessionFactory, job_id: str) -> list[JobEvent]:
    with sessions() as session:
        query = select(JobEvent).where(JobEvent.job_id == uuid.UUID(job_id)).order_by(JobEvent.id)
        return list(session.scalars(query))


def event_types(sessions: SessionFactory, job_id: str) -> list[str]:
    return [e.type for e in timeline(sessions, job_id)]


def assert_problem(response: Any, status: int) -> None:
    assert response.status_code == status, response.data
    assert response.mimetype == "application/problem+json"
    assert response.json["status"] == status
    assert {"type", "title", "detail"} <= response.json.keys()


@pytest.fixture
def encounter(client: FlaskClient, worker: Worker, cobalt: responses.RequestsMock) -> str:
    """A telephone encounter Cobalt accepted as job 4242, encounter te_77."""
    accept_encounter(cobalt)
    job_id = submit(client, "/v1/telephone-encounters", ENCOUNTER)
    assert worker.run_once()
    return job_id


@pytest.fixture
def note(client: FlaskClient, worker: Worker, cobalt: responses.RequestsMock) -> str:
    """A note in flight at Cobalt with no Cobalt job id (the documented reply)."""
    accept_note(cobalt)
    job_id = submit(client, "/v1/notes", NOTE)
    assert worker.run_once()
    return job_id


def encounter_created() -> dict[str, Any]:
    return event("telephone_encounter.created", job_id="4242", telephone_encounter_id="te_77")


# --- 1. signatures at the HTTP edge ----------------------------------------------------------


def test_valid_signature_is_acknowledged_and_stored(client, sessions):
    payload = event("appointment.created")
    body = compact_json(payload)
    response = deliver(client, body, headers={"webhook-id": "msg_valid"})
    assert response.status_code == 200
    assert response.json == {"received": True}
    row = only_delivery(sessions)
    assert row.signature_match == "raw:secret[0]"
    assert row.raw_body == body
    assert row.webhook_id == "msg_valid"
    assert row.event_id == payload["id"]
    assert row.attempt == 1
    assert row.event_timestamp == datetime(2026, 11, 23, 12, 0, 5, tzinfo=UTC)


def test_previous_secret_still_accepted_during_rotation(client, sessions):
    body = compact_json(event("appointment.created"))
    response = deliver(client, body, secret=OLD_WEBHOOK_SECRET)
    assert response.status_code == 200
    assert only_delivery(sessions).signature_match == "raw:secret[1]"


@pytest.mark.parametrize(("secret", "index"), [(WEBHOOK_SECRET, 0), (OLD_WEBHOOK_SECRET, 1)])
def test_reserialised_body_verifies_against_compact_json(client, sessions, secret, index):
    payload = event("appointment.created", patient_name="Zoë Ångström", city="Köln")
    signature = compute_signature(secret, compact_json(payload))
    # A proxy re-encoded it: spaces after separators, non-ASCII escaped.
    reencoded = json.dumps(payload, ensure_ascii=True).encode()
    assert reencoded != compact_json(payload)
    response = deliver(client, reencoded, signature=signature)
    assert response.status_code == 200
    row = only_delivery(sessions)
    assert row.signature_match == f"compact:secret[{index}]"
    assert row.raw_body == reencoded


SIGNED = compact_json(event("appointment.created"))
GOOD = compute_signature(WEBHOOK_SECRET, SIGNED)
REFUSED: dict[str, dict[str, Any]] = {
    "wrong-secret": {"secret": "whsec_attacker"},
    "tampered-body": {"body": SIGNED.replace(b"created", b"deleted"), "signature": GOOD},
    "missing-header": {"omit": ("cobalt-verification",)},
    "short-garbage": {"signature": "zz"},
    "64-non-hex": {"signature": "g" * 64},
    "empty": {"signature": ""},
    "truncated": {"signature": GOOD[:63]},
}


@pytest.mark.parametrize("case", REFUSED)
def test_unverifiable_delivery_is_refused_and_not_stored(client, count_rows, case):
    options = dict(REFUSED[case])
    response = deliver(client, options.pop("body", SIGNED), **options)
    assert_problem(response, 401)
    assert count_rows("webhook_deliveries") == 0


def test_webhooks_refused_when_no_secret_is_configured(database_url, sessions, count_rows):
    app = create_app(make_settings(database_url, COBALT_WEBHOOK_SECRETS=""))
    app.config["TESTING"] = True
    try:
        body = compact_json(event("appointment.created"))
        response = deliver(app.test_client(), body)
        assert_problem(response, 503)
        assert count_rows("webhook_deliveries") == 0
    finally:
        app.extensions["webhook_service"]["engine"].dispose()


# --- 2. dedup --------------------------------------------------------------------------------


@pytest.mark.parametrize("second_attempt", ["1", "2"])
def test_same_webhook_id_is_stored_and_applied_once(
    client, encounter, sessions, count_rows, clock, second_attempt
):
    body = compact_json(encounter_created())
    first = deliver(client, body, headers={"webhook-id": "msg_once"})
    assert first.status_code == 200
    settled = load_job(sessions, encounter)
    events_after_first = count_rows("job_events")
    clock.advance(seconds=1)
    again = deliver(
        client, body, headers={"webhook-id": "msg_once", "webhook-attempt": second_attempt}
    )
    assert again.status_code == 200
    assert again.json == {"received": True}
    assert count_rows("webhook_deliveries") == 1
    assert count_rows("job_events") == events_after_first
    job = load_job(sessions, encounter)
    assert (job.status, job.outcome) == ("completed", settled.outcome)
    assert job.updated_at == settled.updated_at
    assert only_delivery(sessions).attempt == 1
    assert event_types(sessions, encounter).count("webhook_applied") == 1


@pytest.mark.parametrize(
    "resent", [{"headers": {"webhook-id": "msg_b"}}, {"omit": ("webhook-id",)}], ids=["new", "none"]
)
def test_signed_body_resent_with_a_new_or_no_webhook_id_is_a_repeat(
    client, encounter, sessions, count_rows, resent
):
    """The headers are not signed: the signed event id decides what was already received."""
    body = compact_json(encounter_created())
    assert deliver(client, body, headers={"webhook-id": "msg_a"}).status_code == 200
    events_after_first = count_rows("job_events")
    again = deliver(client, body, **resent)
    assert (again.status_code, again.json) == (200, {"received": True})
    row = only_delivery(sessions)
    assert (row.webhook_id, row.state) == ("msg_a", "applied")
    assert row.dedup_key == "event-id:" + json.loads(body)["id"]
    assert count_rows("job_events") == events_after_first


def test_missing_webhook_id_dedups_on_payload_id(client, sessions):
    payload = event("appointment.created")
    body = compact_json(payload)
    assert deliver(client, body, omit=("webhook-id",)).status_code == 200
    assert deliver(client, body, omit=("webhook-id",)).status_code == 200
    row = only_delivery(sessions)
    assert row.webhook_id is None
    assert row.dedup_key == "event-id:" + payload["id"]


@pytest.mark.parametrize(
    "webhook_id",
    [
        pytest.param("m" * 201, id="overlong"),
        pytest.param("msg\t1", id="tab"),
        pytest.param("msg\x851", id="c1-control"),
        pytest.param("   ", id="blank"),
    ],
)
def test_odd_webhook_id_is_kept_keyed_on_payload_id(client, sessions, webhook_id):
    payload = event("appointment.created")
    body = compact_json(payload)
    assert deliver(client, body, headers={"webhook-id": webhook_id}).status_code == 200
    assert deliver(client, body, headers={"webhook-id": webhook_id}).status_code == 200
    row = only_delivery(sessions)
    assert row.dedup_key == "event-id:" + payload["id"]
    assert row.webhook_id is None


@pytest.mark.parametrize(
    ("timestamp", "attempt"),
    [
        ("yesterday", "two"),
        ("2026-13-45T99:00:00Z", ""),
        ("", "-1"),
        ("2026-11-23T12:00:05+99:00", "1e3"),
        ("\t", "9" * 5000),
    ],
)
def test_unparsable_timestamp_and_attempt_are_kept_as_null(client, sessions, timestamp, attempt):
    body = compact_json(event("appointment.created"))
    headers = {"webhook-timestamp": timestamp, "webhook-attempt": attempt}
    assert deliver(client, body, headers=headers).status_code == 200
    row = only_delivery(sessions)
    assert (row.event_timestamp, row.attempt) == (None, None)


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_timestamp_outside_utc_range_is_still_kept(client, sessions, timestamp):
    body = compact_json(event("appointment.created"))
    response = deliver(client, body, headers={"webhook-timestamp": timestamp})
    assert response.status_code == 200
    assert only_delivery(sessions).event_timestamp is None


def test_concurrent_identical_deliveries_are_stored_and_applied_once(
    app: Flask, encounter, sessions, count_rows, is_postgres
):
    # On PostgreSQL the unique dedup key is the guard; SQLite serialises writers. Both pass.
    body, signature = sign(encounter_created())
    headers = {"cobalt-verification": signature, "webhook-id": "msg_race", "webhook-attempt": "1"}
    barrier = threading.Barrier(8)
    statuses: list[int] = []
    errors: list[BaseException] = []

    def race() -> None:
        own_client = app.test_client()
        barrier.wait(timeout=10)
        try:
            statuses.append(own_client.post(URL, data=body, headers=headers).status_code)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, (is_postgres, errors)
    assert statuses == [200] * 8
    assert count_rows("webhook_deliveries") == 1
    assert load_job(sessions, encounter).status == "completed"
    assert event_types(sessions, encounter).count("webhook_applied") == 1


# --- 3. correlation and parking --------------------------------------------------------------


def test_encounter_webhook_beating_the_submit_reply_is_parked_then_applied(
    client, worker, cobalt, sessions
):
    accept_encounter(cobalt)
    job_id = submit(client, "/v1/telephone-encounters", ENCOUNTER)
    assert deliver(client, encounter_created()).status_code == 200
    assert only_delivery(sessions).state == "parked"
    assert load_job(sessions, job_id).status == "processing"

    assert worker.run_once()
    job = load_job(sessions, job_id)
    assert job.status == "completed"
    assert job.cobalt_job_id == "4242"
    row = only_delivery(sessions)
    assert (row.state, row.job_id) == ("applied", job.id)
    assert event_types(sessions, job_id)[-2:] == ["submission_accepted", "webhook_applied"]


@pytest.mark.parametrize(
    ("reference", "matched"),
    [("atr_clinic_1", True), (None, True), ("atr_some_other_clinic", False)],
)
def test_note_webhook_without_job_id_matches_appointment_within_clinic(
    client, note, sessions, reference, matched
):
    payload = event("note.created", reference=reference, appointment_id="728948")
    assert deliver(client, payload).status_code == 200
    job = load_job(sessions, note)
    row = only_delivery(sessions)
    if matched:
        assert (job.status, row.state, row.job_id) == ("completed", "applied", job.id)
    else:
        assert (job.status, row.state, row.job_id) == ("processing", "parked", None)


def test_webhook_without_job_id_matches_telephone_encounter_id(client, encounter, sessions):
    payload = event("telephone_encounter.created_partial", telephone_encounter_id="te_77")
    assert deliver(client, payload).status_code == 200
    assert load_job(sessions, encounter).status == "partial"
    assert only_delivery(sessions).state == "applied"


def test_event_for_unknown_job_id_stays_parked(client, worker, encounter, sessions, clock):
    payload = event("telephone_encounter.created", job_id="9999", telephone_encounter_id="te_x")
    assert deliver(client, payload).status_code == 200
    clock.advance(minutes=1)
    worker.housekeeping()  # the parked sweep runs and finds nothing for it
    assert only_delivery(sessions).state == "parked"
    assert load_job(sessions, encounter).status == "processing"


def test_unknown_event_type_is_stored_and_changes_nothing(client, note, sessions, count_rows):
    events_before = count_rows("job_events")
    payload = event("appointment.created", appointment_id="728948")
    response = deliver(client, payload)
    assert response.status_code == 200
    assert response.json == {"received": True}
    row = only_delivery(sessions)
    assert (row.state, row.event_type, row.job_id) == ("unknown_type", "appointment.created", None)
    assert load_job(sessions, note).status == "processing"
    assert count_rows("job_events") == events_before


def test_login_required_without_job_id_flags_the_clinic_and_is_not_parked(client, note, sessions):
    """A clinic event: the clinic must be re-linked; no job is its outcome, none waits."""
    with sessions() as session:
        clinic = session.scalars(select(Clinic)).one()
        assert (clinic.access_token_reference_id, clinic.needs_relink) == ("atr_clinic_1", False)
    assert deliver(client, event("login_required")).status_code == 200
    with sessions() as session:
        assert session.scalars(select(Clinic)).one().needs_relink is True
    row = only_delivery(sessions)
    assert (row.event_type, row.state, row.job_id) == ("login_required", "clinic_event", None)
    assert row.state_detail == f"clinic {DEFAULT_CLINIC!r} flagged: it must be re-linked in Cobalt"
    assert load_job(sessions, note).status == "processing"


def test_replayed_login_required_does_not_flag_a_clinic_relinked_since(
    client, note, sessions, clock
):
    payload = event("login_required")  # created 12:00:04
    clock.advance(minutes=10)
    with sessions.begin() as session:
        relink_clinic(session, name=DEFAULT_CLINIC, access_token="tok_new", now=clock.now)
        # The worker learns the (same) login's reference id again on its next call.
        session.scalars(select(Clinic)).one().access_token_reference_id = "atr_clinic_1"
    assert deliver(client, payload).status_code == 200
    with sessions() as session:
        assert session.scalars(select(Clinic)).one().needs_relink is False
    row = only_delivery(sessions)
    assert row.state == "clinic_event"
    assert "re-linked after this event" in (row.state_detail or "")


# --- 3b. what may settle what: other resources, replays, old events ----------------------


@pytest.mark.parametrize("shared", ["appointment", "job-id"])
def test_an_event_of_another_resource_never_settles_or_binds_a_note(
    client, worker, cobalt, sessions, shared
):
    """An `appointment.failed` from another Cobalt operation on the account shares the
    note's appointment (or even its Cobalt job id): it is not the note's outcome, and the
    note's own `note.created` then settles it."""
    accept_note(cobalt, **({"job_id": "cj_note"} if shared == "job-id" else {}))
    job_id = submit(client, "/v1/notes", NOTE)
    assert worker.run_once()
    foreign_job = "cj_note" if shared == "job-id" else "cj_appointment_op"
    foreign = event("appointment.failed", job_id=foreign_job, appointment_id="728948")
    assert deliver(client, foreign).status_code == 200
    job = load_job(sessions, job_id)
    assert (job.status, job.cobalt_job_id) == (
        "processing",
        "cj_note" if shared == "job-id" else None,
    )
    assert (deliveries(sessions)[-1].state, deliveries(sessions)[-1].job_id) == (
        "unknown_type",
        None,
    )
    own = event("note.created", job_id=job.cobalt_job_id, appointment_id="728948")
    assert deliver(client, own).status_code == 200
    job = load_job(sessions, job_id)
    assert (job.status, job.error_code) == ("completed", None)
    assert deliveries(sessions)[-1].state == "applied"


def test_an_encounter_event_carrying_a_notes_job_id_does_not_settle_it(
    client, worker, cobalt, sessions
):
    accept_note(cobalt, job_id="cj_shared")
    job_id = submit(client, "/v1/notes", NOTE)
    assert worker.run_once()
    payload = event("telephone_encounter.failed", job_id="cj_shared", failure_reason="x")
    assert deliver(client, payload).status_code == 200
    assert load_job(sessions, job_id).status == "processing"
    assert only_delivery(sessions).state == "parked"


def test_a_replayed_note_outcome_does_not_settle_the_next_note_for_the_appointment(
    client, worker, cobalt, sessions, clock
):
    """The issue's demonstration: a note outcome without a job id, re-sent with a new
    `webhook-id` once the next note for the appointment is at Cobalt, must not settle it."""
    accept_note(cobalt)
    first = submit(client, "/v1/notes", NOTE)
    assert worker.run_once()
    body = compact_json(event("note.created", appointment_id="728948"))
    assert deliver(client, body, headers={"webhook-id": "msg_original"}).status_code == 200
    assert load_job(sessions, first).status == "completed"
    clock.advance(seconds=30)
    second = submit(client, "/v1/notes", NOTE)
    assert worker.run_once()
    assert load_job(sessions, second).inflight_key is not None  # at Cobalt now
    replay = deliver(client, body, headers={"webhook-id": "msg_replayed"})
    assert (replay.status_code, replay.json) == (200, {"received": True})
    assert load_job(sessions, second).status == "processing"
    assert [r.webhook_id for r in deliveries(sessions)] == ["msg_original"]


def test_an_old_note_outcome_without_event_id_is_held_not_given_to_a_later_note(
    client, worker, cobalt, sessions, clock, support
):
    """Without an event id to deduplicate on, the signed `created` still tells: an event
    older than the note in flight is an earlier note's, held for a person."""
    clock.advance(minutes=5)
    accept_note(cobalt)
    job_id = submit(client, "/v1/notes", NOTE)
    assert worker.run_once()
    payload = event("note.created", appointment_id="728948")  # created 12:00:04
    del payload["id"]
    assert deliver(client, payload).status_code == 200
    job = load_job(sessions, job_id)
    assert (job.status, job.cobalt_job_id, job.flagged) == ("processing", None, False)
    row = only_delivery(sessions)
    assert (row.state, row.job_id) == ("held", None)
    assert "before the job it would settle was submitted" in (row.state_detail or "")
    inbox = support.get("/v1/inbox?state=held").json["deliveries"]
    assert [d["id"] for d in inbox] == [row.id]


def test_an_event_created_over_a_day_before_it_arrived_is_held_for_support(
    client, encounter, sessions, clock, support, count_rows
):
    events_before = count_rows("job_events")
    before = load_job(sessions, encounter)
    clock.advance(days=1, minutes=1)
    payload = encounter_created()  # created 12:00:04 the day before
    assert deliver(client, payload).status_code == 200
    job = load_job(sessions, encounter)
    assert (job.status, job.updated_at, job.flagged) == ("processing", before.updated_at, False)
    assert count_rows("job_events") == events_before
    row = only_delivery(sessions)
    assert (row.state, row.job_id) == ("held", None)
    assert "more than a day before it reached us" in (row.state_detail or "")
    inbox = support.get("/v1/inbox").json["deliveries"]
    assert [(d["id"], d["state"]) for d in inbox] == [(row.id, "held")]


def test_the_unsigned_timestamp_header_never_decides(client, encounter, sessions):
    headers = {"webhook-timestamp": "2020-01-01T00:00:00Z"}
    assert deliver(client, encounter_created(), headers=headers).status_code == 200
    assert load_job(sessions, encounter).status == "completed"


# --- 4. terminal rules -----------------------------------------------------------------------


@pytest.fixture
def completed_note(client, worker, cobalt, sessions) -> str:
    accept_note(cobalt, job_id="cj_1")
    job_id = submit(client, "/v1/notes", NOTE)
    assert worker.run_once()
    payload = event("note.created", job_id="cj_1", appointment_id="728948")
    assert deliver(client, payload).status_code == 200
    assert load_job(sessions, job_id).status == "completed"
    return job_id


def test_contradicting_outcome_is_recorded_and_flagged_never_applied(
    client, completed_note, sessions, clock
):
    before = load_job(sessions, completed_note)
    clock.advance(seconds=30)
    payload = event("note.failed", job_id="cj_1", appointment_id="728948", failure_reason="x")
    response = deliver(client, payload, headers={"webhook-id": "msg_contradiction"})
    assert response.status_code == 200
    job = load_job(sessions, completed_note)
    assert (job.status, job.outcome, job.error_code) == ("completed", before.outcome, None)
    assert job.finished_at == before.finished_at
    assert (job.flagged, job.updated_at) == (True, clock.now)
    conflict = timeline(sessions, completed_note)[-1]
    assert conflict.type == "outcome_conflict"
    assert conflict.detail["kept"] == "completed"
    assert deliveries(sessions)[-1].state == "conflict"


def test_same_outcome_again_is_a_repeat_and_changes_nothing(
    client, completed_note, sessions, clock
):
    before = load_job(sessions, completed_note)
    clock.advance(seconds=30)
    payload = event("note.uploaded", job_id="cj_1", appointment_id="728948")
    assert deliver(client, payload).status_code == 200
    job = load_job(sessions, completed_note)
    assert (job.status, job.outcome) == ("completed", before.outcome)
    assert job.finished_at == before.finished_at
    assert (job.flagged, job.updated_at) == (False, clock.now)
    assert deliveries(sessions)[-1].state == "repeat"
    assert event_types(sessions, completed_note)[-2:] == ["webhook_applied", "webhook_repeat"]


@pytest.mark.parametrize(
    ("cobalt_job_id", "state"), [("cj_9", "conflict"), (None, "parked")], ids=["job-id", "appt"]
)
def test_a_failed_job_is_never_settled_by_a_later_outcome(
    client, worker, cobalt, sessions, clock, cobalt_job_id, state
):
    """Terminal is terminal, with no exception: not even for a job failed as `no_outcome`
    (rows left by the old deadline rule). The later outcome is recorded, never applied."""
    accept_note(cobalt, **({"job_id": cobalt_job_id} if cobalt_job_id else {}))
    job_id = submit(client, "/v1/notes", NOTE)
    assert worker.run_once()
    clock.advance(minutes=31)
    with sessions.begin() as session:  # what the old deadline sweep left behind
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(job_id))
            .values(status="failed", error_code="no_outcome", error_message="No outcome.")
            .values(inflight_key=None, finished_at=clock.now, updated_at=clock.now)
        )
    failed_at = clock.now
    clock.advance(minutes=5)
    payload = event("note.created", job_id=cobalt_job_id, appointment_id="728948")
    assert deliver(client, payload).status_code == 200
    job = load_job(sessions, job_id)
    assert (job.status, job.error_code, job.finished_at) == ("failed", "no_outcome", failed_at)
    assert only_delivery(sessions).state == state
    assert job.flagged is (state == "conflict")


# --- 5. never a 500, never lost --------------------------------------------------------------

HOSTILE_BODIES = {
    "not-json": b"this is not json",
    "empty": b"",
    "json-array": b"[1,2,3]",
    "json-string": b'"hello"',
    "empty-object": b"{}",
    "type-is-int": b'{"type": 5}',
    "data-is-string": b'{"data": "x"}',
    "nested-appointment": b'{"type":"note.created","data":{"appointment_id":{"nested":1}}}',
    "job-id-list": b'{"job_id":["x"]}',
    "deep-array": b"[" * 10_000 + b"]" * 10_000,
    "deep-in-data": b'{"type":"note.created","data":' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001,
    "int-past-digit-limit": b'{"id": 1' + b"0" * 5000 + b"}",
    "huge-ints": b'{"id":1%s,"type":"note.created","job_id":1%s,"data":{"appointment_id":1%s}}'
    % (b"0" * 300, b"0" * 150, b"0" * 4000),
    "nul-in-strings": b'{"id":"e\\u0000","type":"note.failed","job_id":"c\\u0000",'
    b'"data":{"appointment_id":"728948","failure_reason":"bad\\u0000reason"}}',
    "lone-surrogate": b'{"type":"note.failed","data":{"appointment_id":"728948",'
    b'"failure_reason":"\\ud800"}}',
    "invalid-utf8": b'{"type":"note.created","data":{"appointment_id":"728948",'
    b'"x":"\xc3\x28\xff"}}',
    "bom-utf16": "\ufeff{}".encode("utf-16"),
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_hostile_signed_body_is_acknowledged_and_kept(client, note, sessions, body):
    response = deliver(client, body)
    assert response.status_code == 200, response.data
    assert response.json == {"received": True}
    row = only_delivery(sessions)
    assert row.raw_body == body
    assert row.state in {"unknown_type", "parked", "applied", "failed"}


HEADER_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E),
        st.characters(min_codepoint=0x80, max_codepoint=0xFF),  # obs-text, as WSGI decodes it
        st.just("\t"),
    ),
    max_size=260,
)
ISO_TIMES = st.builds(
    lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(),
    st.datetimes(),
    st.integers(-1439, 1439),
)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON_VALUES = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids),
    max_leaves=12,
)
EVENT_TYPES = st.sampled_from(
    ["note.created", "note.failed", "telephone_encounter.created_partial", "login_required", "x.y"]
)
DATA_KEYS = ["appointment_id", "telephone_encounter_id", "failure_reason", "reasons", "message"]
EVENTISH = st.fixed_dictionaries(
    {"type": EVENT_TYPES | JSON_VALUES},
    optional={
        "id": st.text(max_size=210) | st.integers() | JSON_VALUES,
        "job_id": st.sampled_from(["4242", "cj_1"]) | JSON_VALUES,
        "access_token_reference_id": st.just("atr_clinic_1") | JSON_VALUES,
        "data": st.dictionaries(st.sampled_from(DATA_KEYS), JSON_VALUES) | JSON_VALUES,
    },
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=EVENTISH | JSON_VALUES,
    webhook_id=st.none() | HEADER_TEXT,
    attempt=st.none() | HEADER_TEXT | st.integers().map(str),
    timestamp=st.none() | HEADER_TEXT | ISO_TIMES,
)
@example(payload={"type": "x.y"}, webhook_id=None, attempt="1", timestamp="0001-01-01T00:00+01:00")
def test_any_signed_delivery_is_never_a_5xx_and_a_200_is_stored(
    client, engine: Engine, payload, webhook_id, attempt, timestamp
):
    with engine.begin() as conn:  # each example starts from no deliveries
        conn.execute(delete(WebhookDelivery))
    body = compact_json(payload)
    headers = {"webhook-id": webhook_id, "webhook-attempt": attempt, "webhook-timestamp": timestamp}
    omit = tuple(name for name, value in headers.items() if value is None)
    sent = {name: value for name, value in headers.items() if value is not None}
    response = deliver(client, body, headers=sent, omit=omit)
    assert response.status_code < 500, response.data
    if response.status_code == 200:
        with engine.connect() as conn:
            stored = conn.execute(select(WebhookDelivery.raw_body)).scalars().all()
        assert stored == [body]


def test_oversize_body_is_413_problem_and_not_stored(client, app, count_rows):
    limit = app.extensions["webhook_service"]["settings"].max_body_bytes
    body = compact_json(event("appointment.created", blob="x" * (limit + 1)))
    assert len(body) > limit
    assert_problem(deliver(client, body), 413)
    assert count_rows("webhook_deliveries") == 0


# --- 6. a failure while applying never loses the delivery -----------------------------------


def _raise_python_error(session: Session, delivery: WebhookDelivery, kind: str) -> Job | None:
    raise RuntimeError("bug while matching")


def _raise_database_error(session: Session, delivery: WebhookDelivery, kind: str) -> Job | None:
    session.execute(text("SELECT * FROM no_such_table"))
    return None


@pytest.mark.parametrize(
    "boom", [_raise_python_error, _raise_database_error], ids=["python", "database"]
)
def test_apply_failure_keeps_the_delivery_marked_failed(
    client, encounter, sessions, count_rows, monkeypatch, boom: Callable[..., Job | None]
):
    before = load_job(sessions, encounter)
    events_before = count_rows("job_events")
    # The one lookup both ways of applying (plain row, ORM job) match through.
    monkeypatch.setattr("webhook_service.services.applying.find_job", boom)
    response = deliver(client, encounter_created())
    assert response.status_code == 200
    assert response.json == {"received": True}
    row = only_delivery(sessions)
    assert (row.state, row.job_id) == ("failed", None)
    assert "raised" in (row.state_detail or "")
    job = load_job(sessions, encounter)
    assert (job.status, job.outcome, job.updated_at) == ("processing", None, before.updated_at)
    assert count_rows("job_events") == events_before


def test_apply_failing_after_it_wrote_leaves_the_job_as_it_was(
    client, encounter, sessions, count_rows, monkeypatch, caplog
):
    """Applying fails after the job's row is settled: that write is undone with the rest,
    and the delivery is still kept, marked failed, for support to replay."""
    before = load_job(sessions, encounter)
    events_before = count_rows("job_events")
    monkeypatch.setattr(
        "webhook_service.services.applying.INSERT_EVENT",
        text("INSERT INTO no_such_table (job_id) VALUES (:job_id)"),
    )
    response = deliver(client, encounter_created(), headers={"webhook-id": "msg_broken"})
    # Logged by type, place and webhook id: a driver's message, which may quote PHI, is not.
    [failure] = [r for r in caplog.records if r.getMessage() == "webhook apply failed"]
    assert (failure.levelname, failure.webhook_id) == ("ERROR", "msg_broken")
    assert failure.error_type in ("ProgrammingError", "OperationalError")  # PostgreSQL, SQLite
    assert "no_such_table" not in json.dumps(failure.__dict__, default=str)
    assert (response.status_code, response.json) == (200, {"received": True})
    row = only_delivery(sessions)
    assert (row.state, row.job_id) == ("failed", None)
    assert row.event_type == "telephone_encounter.created"
    job = load_job(sessions, encounter)
    assert (job.status, job.finished_at, job.updated_at) == ("processing", None, before.updated_at)
    assert count_rows("job_events") == events_before


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_losing_the_database_while_applying_is_a_503_and_the_retry_applies(
    client, encounter, sessions, postgres_url, monkeypatch
):
    """The connection dies mid-apply (a failover): nothing is stored, Cobalt gets a 503,
    and its retry of the same delivery is applied as if it were the first."""
    from webhook_service.services import applying as service

    find_job = service.find_job

    def drop_the_connection_then_match(session: Session, delivery: Any, kind: str) -> Any:
        pid = session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        return find_job(session, delivery, kind)

    monkeypatch.setattr(service, "find_job", drop_the_connection_then_match)
    body = compact_json(encounter_created())
    attempt = {"webhook-id": "msg_failover"}
    assert_problem(deliver(client, body, headers=attempt), 503)
    assert deliveries(sessions) == []
    monkeypatch.undo()
    assert deliver(client, body, headers={**attempt, "webhook-attempt": "2"}).status_code == 200
    assert only_delivery(sessions).state == "applied"
    assert load_job(sessions, encounter).status == "completed"


def test_database_down_is_a_quick_503_so_cobalt_retries():
    """With the database unreachable, a signed delivery gets 503 + Retry-After, not a hang."""
    app = create_app(make_settings("postgresql://nobody@127.0.0.1:9/none"))
    body, signature = sign(event("note.created", job_id="x"))
    response = app.test_client().post(
        "/webhooks/cobalt",
        data=body,
        headers={"cobalt-verification": signature, "webhook-id": "msg_down"},
    )
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert response.headers["Retry-After"] == "1"
    app.extensions["webhook_service"]["engine"].dispose()


# --- 7. what Cobalt says reaches the front end ----------------------------------------------


def test_a_partials_reason_under_an_unknown_key_reaches_the_polled_outcome(client, encounter):
    payload = event(
        "telephone_encounter.created_partial",
        job_id="4242",
        telephone_encounter_id="te_77",
        refill_medication_name="Lisinopril 10 mg",
        refill_failure_reason="The pharmacy does not take e-prescriptions.",
    )
    payload["data"]["job_id"] = "4242"  # envelope bookkeeping repeated inside data
    assert deliver(client, payload).status_code == 200

    job = client.get(f"/v1/jobs/{encounter}").json
    assert job["status"] == "partial"
    assert job["error"]["code"] == "refill_not_added"
    outcome = job["outcome"]
    assert outcome["refill_failure_reason"] == "The pharmacy does not take e-prescriptions."
    assert outcome["refill_medication_name"] == "Lisinopril 10 mg"
    assert "job_id" not in outcome


def test_an_outcome_too_deep_to_serve_is_cut_and_the_job_still_polls(client, encounter):
    deep: list[Any] = []
    for _ in range(300):
        deep = [deep]
    payload = event("telephone_encounter.failed", job_id="4242", trace=deep, step="refill")
    assert deliver(client, payload).status_code == 200

    polled = client.get(f"/v1/jobs/{encounter}")
    assert polled.status_code == 200
    assert polled.json["outcome"]["step"] == "refill"
    assert polled.json["outcome"]["omitted_keys"] == ["trace"]


def test_a_burst_of_rejected_signatures_is_logged_once_a_minute(
    client: FlaskClient, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def forged() -> int:
        headers = {"content-type": "application/json", "cobalt-verification": "0" * 64}
        answer = client.post("/webhooks/cobalt", data=b'{"id":"evt_x"}', headers=headers)
        assert answer.status_code == 401
        return len(answer.data)

    def logged() -> list[int]:
        return [
            record.__dict__["rejected"]
            for record in caplog.records
            if record.getMessage() == "webhook signatures rejected"
        ]

    for _ in range(5):
        forged()
        clock.advance(seconds=10)
    assert logged() == [1]  # the first at once, then quiet for a minute
    forged()  # 50 s after the first
    clock.advance(seconds=10)
    forged()  # a minute after the first: one line for the six since
    assert logged() == [1, 6]
