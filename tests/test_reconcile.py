"""Reconciliation: outcomes Cobalt produced but never delivered (the deadline: test_deadline)."""

from __future__ import annotations

import json
import uuid

import requests
import responses
from sqlalchemy import select

from tests.conftest import COBALT, FakeClock, event
from tests.test_lifecycle_http import ENCOUNTER, NOTE, accept_encounter, accept_note, poll, submit
from webhook_service.models import JobEvent, WebhookDelivery


def events_log(cobalt, *items):
    cobalt.add(
        responses.GET,
        f"{COBALT}/webhook-events",
        json={
            "success": True,
            "webhook_events": list(items),
            "pagination": {"current_page": 1, "total_pages": 1, "total_count": len(items)},
        },
    )


def logged(event_type, job_id=None, **data):
    return {
        "event_id": f"evt_{uuid.uuid4().hex[:8]}",
        "event_type": event_type,
        "job_id": job_id,
        "data": data,
        "created_at": "2026-11-23T12:00:30Z",
        "delivery_status": "failed",
    }


def timeline(sessions, job_id):
    with sessions() as session:
        return list(
            session.scalars(
                select(JobEvent.type)
                .where(JobEvent.job_id == uuid.UUID(job_id))
                .order_by(JobEvent.id)
            )
        )


def test_dropped_encounter_webhook_is_found_by_job_id(
    client, worker, cobalt, clock: FakeClock, sessions
):
    accept_encounter(cobalt)
    job = submit(client, "/v1/telephone-encounters", ENCOUNTER)
    worker.run_once()
    events_log(
        cobalt,
        logged("telephone_encounter.created", "4242", telephone_encounter_id="te_77"),
    )
    clock.advance(minutes=1)
    worker.run_once()
    assert poll(client, job["id"])["status"] == "processing", "not overdue yet"
    assert not [c for c in cobalt.calls if "/webhook-events" in c.request.url]

    clock.advance(minutes=2)
    worker.run_once()
    settled = poll(client, job["id"])
    assert settled["status"] == "completed"
    lookup = next(c for c in cobalt.calls if "/webhook-events" in c.request.url)
    assert "job_id=4242" in lookup.request.url
    assert timeline(sessions, job["id"])[-2:] == ["webhook_applied", "reconciled"]


def test_note_without_job_id_is_found_by_appointment(client, worker, cobalt, clock: FakeClock):
    accept_note(cobalt)
    job = submit(client, "/v1/notes", NOTE)
    worker.run_once()
    events_log(
        cobalt,
        logged("note.created", "cj_other", appointment_id="111111"),
        logged("note.failed", "cj_9", appointment_id="728948", failure_reason="Chart locked"),
    )
    clock.advance(minutes=4)
    worker.run_once()
    failed = poll(client, job["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["message"] == "Chart locked"
    assert failed["cobalt"]["job_id"] == "cj_9"


def test_unknown_submission_is_settled_by_what_cobalt_logged(
    client, worker, cobalt, clock: FakeClock
):
    cobalt.add(responses.POST, f"{COBALT}/notes", body=requests.ReadTimeout("slow"))
    job = submit(client, "/v1/notes", NOTE)
    worker.run_once()
    assert poll(client, job["id"])["submission"]["state"] == "unknown"
    events_log(cobalt, logged("note.created", "cj_5", appointment_id="728948"))
    clock.advance(minutes=4)
    worker.run_once()
    assert poll(client, job["id"])["status"] == "completed"
    assert len([c for c in cobalt.calls if c.request.url.endswith("/notes")]) == 1


def test_nothing_found_is_recorded_and_looked_up_again_later(
    client, worker, cobalt, clock: FakeClock, sessions
):
    accept_note(cobalt)
    job = submit(client, "/v1/notes", NOTE)
    worker.run_once()
    events_log(cobalt)
    clock.advance(minutes=4)
    worker.run_once()
    clock.advance(seconds=10)
    worker.run_once()
    assert timeline(sessions, job["id"]).count("reconcile_lookup") == 1, "at most once a minute"
    clock.advance(minutes=2)
    worker.run_once()
    assert timeline(sessions, job["id"]).count("reconcile_lookup") == 2
    assert poll(client, job["id"])["status"] == "processing"


def test_reconciled_outcome_then_real_webhook_changes_nothing(
    client, worker, cobalt, clock: FakeClock, post_webhook, sessions
):
    accept_encounter(cobalt)
    job = submit(client, "/v1/telephone-encounters", ENCOUNTER)
    worker.run_once()
    events_log(cobalt, logged("telephone_encounter.created_partial", "4242"))
    clock.advance(minutes=3)
    worker.run_once()
    assert poll(client, job["id"])["status"] == "partial"
    post_webhook(event("telephone_encounter.created_partial", job_id="4242"))
    assert poll(client, job["id"])["status"] == "partial"
    with sessions() as session:
        states = sorted(session.scalars(select(WebhookDelivery.state)))
    assert states == ["applied", "repeat"]


def test_a_second_note_for_an_appointment_is_not_given_the_first_notes_outcome(
    client, worker, cobalt, clock: FakeClock, post_webhook
):
    """Cobalt's log still holds the first note's event for the appointment: the second
    note's lookup must pass over it (it is bound to the first job) and take its own."""
    accept_note(cobalt)
    first = submit(client, "/v1/notes", NOTE)
    worker.run_once()
    first_event = event("note.created", job_id="cj_1", appointment_id="728948")
    post_webhook(first_event)
    assert poll(client, first["id"])["status"] == "completed"

    second = submit(client, "/v1/notes", {**NOTE, "note": "Second visit."})
    worker.run_once()
    events_log(
        cobalt,
        logged("note.created", "cj_1", appointment_id="728948") | {"event_id": first_event["id"]},
        logged("note.failed", "cj_2", appointment_id="728948", failure_reason="Chart locked")
        | {"created_at": "2026-11-23T12:05:00Z"},
    )
    clock.advance(minutes=4)
    worker.run_once()
    settled = poll(client, second["id"])
    assert settled["status"] == "failed"
    assert settled["error"]["message"] == "Chart locked"
    assert settled["cobalt"]["job_id"] == "cj_2"
    assert poll(client, first["id"])["status"] == "completed"


def test_a_note_lookup_asks_for_note_outcomes_since_the_job_and_reads_every_page(
    client, worker, cobalt, clock: FakeClock
):
    """On a busy account the note's outcome is pages deep: the lookup filters by event type
    and date and reads every page, not a fixed number of them."""
    accept_note(cobalt)
    job = submit(client, "/v1/notes", NOTE)
    worker.run_once()
    busy = [logged("note.created", f"cj_{n}", appointment_id="111111") for n in range(2500)]
    busy.append(logged("note.created", "cj_mine", appointment_id="728948"))
    asked = []

    def webhook_events(request):
        params = dict(request.params)
        asked.append(params)
        items = busy if params["event_type"] == "note.created" else []
        page, size = int(params["page"]), int(params["page_size"])
        body = {
            "success": True,
            "webhook_events": items[(page - 1) * size : page * size],
            "pagination": {"current_page": page, "total_pages": -(-len(items) // size)},
        }
        return 200, {}, json.dumps(body)

    cobalt.add_callback(responses.GET, f"{COBALT}/webhook-events", callback=webhook_events)
    clock.advance(minutes=4)
    worker.run_once()
    settled = poll(client, job["id"])
    assert (settled["status"], settled["cobalt"]["job_id"]) == ("completed", "cj_mine")
    assert {p["event_type"] for p in asked} == {"note.created", "note.uploaded", "note.failed"}
    assert {p["start_date"] for p in asked} == {"2026-11-22"}  # a day early: Cobalt's zone
    assert all("job_id" not in p for p in asked)
    assert len([p for p in asked if p["event_type"] == "note.created"]) == 26


def test_a_broken_pagination_stops_the_read_and_is_logged(
    client, worker, cobalt, clock: FakeClock, caplog
):
    accept_encounter(cobalt)
    job = submit(client, "/v1/telephone-encounters", ENCOUNTER)
    worker.run_once()
    same_page = {
        "success": True,
        "webhook_events": [logged("telephone_encounter.created", "9999")],
        "pagination": {"current_page": 1, "total_pages": 1000},
    }
    cobalt.add(responses.GET, f"{COBALT}/webhook-events", json=same_page)
    clock.advance(minutes=3)
    worker.run_once()
    assert len([c for c in cobalt.calls if "/webhook-events" in c.request.url]) == 2
    [stopped] = [r for r in caplog.records if r.getMessage() == "cobalt log read stopped early"]
    assert (stopped.job_id, stopped.why) == (job["id"], "page 2 repeated page 1")
    assert poll(client, job["id"])["status"] == "processing"
