"""The deadline: a job with no news says what is known (attention), never a guessed failure."""

from __future__ import annotations

import uuid
from datetime import timedelta

import responses
from sqlalchemy import select

from tests.conftest import COBALT, FakeClock, event
from tests.test_lifecycle_http import ENCOUNTER, NOTE, accept_encounter, accept_note, poll, submit
from tests.test_reconcile import events_log, logged, timeline
from webhook_service.db import transaction
from webhook_service.models import Job, JobEvent
from webhook_service.services import due_lookups


def lookups_made(cobalt) -> int:
    return len([c for c in cobalt.calls if "/webhook-events" in c.request.url])


def past_the_deadline(client, worker, cobalt, clock: FakeClock, *, encounter=False):
    """A job accepted by Cobalt whose outcome never arrives, 31 minutes on."""
    if encounter:
        accept_encounter(cobalt)
        job = submit(client, "/v1/telephone-encounters", ENCOUNTER)
    else:
        accept_note(cobalt)
        job = submit(client, "/v1/notes", NOTE)
    worker.run_once()
    events_log(cobalt)
    clock.advance(minutes=31)
    worker.run_once()
    return job


def test_an_accepted_job_past_its_deadline_stays_processing_with_attention(
    client, worker, cobalt, clock: FakeClock, sessions
):
    accept_note(cobalt)
    job = submit(client, "/v1/notes", NOTE)
    worker.run_once()
    events_log(cobalt)
    clock.advance(minutes=20)
    worker.run_once()
    before = client.get(f"/v1/jobs/{job['id']}")
    clock.advance(minutes=11)
    worker.run_once()

    again = client.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": before.headers["ETag"]})
    assert again.status_code == 200, "a poller must learn of the attention"
    late = again.json
    assert late["status"] == "processing"
    assert late["finished_at"] is None
    assert late["error"] is None
    assert late["attention"]["code"] == "no_outcome"
    assert "check the chart before resubmitting" in late["attention"]["message"]
    assert late["attention"]["since"] == "2026-11-23T12:31:00Z"
    assert "Retry-After" in again.headers, "still processing: keep polling"
    with sessions() as session:
        line = session.scalars(
            select(JobEvent).where(
                JobEvent.job_id == uuid.UUID(job["id"]), JobEvent.type == "deadline_passed"
            )
        ).one()
    assert line.detail == {"submission": "accepted"}


def test_a_late_webhook_settles_an_attention_note_by_its_appointment(
    client, worker, cobalt, clock: FakeClock, post_webhook
):
    """The note kept its appointment slot past the deadline: the outcome has one note to
    match, and settling clears the attention."""
    job = past_the_deadline(client, worker, cobalt, clock)
    post_webhook(event("note.created", appointment_id="728948"))
    settled = poll(client, job["id"])
    assert settled["status"] == "completed"
    assert settled["attention"] is None
    assert settled["error"] is None


def test_a_second_note_for_the_appointment_waits_behind_an_attention_note(
    client, worker, cobalt, clock: FakeClock, post_webhook
):
    first = past_the_deadline(client, worker, cobalt, clock)
    second = submit(client, "/v1/notes", {**NOTE, "note": "Addendum"})
    worker.run_once()
    assert poll(client, second["id"])["submission"]["state"] == "waiting"
    assert len([c for c in cobalt.calls if c.request.url.endswith("/notes")]) == 1

    post_webhook(event("note.created", appointment_id="728948"))
    assert poll(client, first["id"])["status"] == "completed"
    assert poll(client, second["id"])["status"] == "processing"
    worker.run_once()
    assert len([c for c in cobalt.calls if c.request.url.endswith("/notes")]) == 2


def test_a_waiting_note_fails_at_its_deadline_as_appointment_busy(
    client, worker, cobalt, clock: FakeClock
):
    first = past_the_deadline(client, worker, cobalt, clock)
    second = submit(client, "/v1/notes", {**NOTE, "note": "Addendum"})
    worker.run_once()
    clock.advance(minutes=31)
    worker.run_once()
    failed = poll(client, second["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "appointment_busy"
    assert "earlier note for this appointment" in failed["error"]["message"]
    assert poll(client, first["id"])["attention"]["code"] == "no_outcome"
    assert len([c for c in cobalt.calls if c.request.url.endswith("/notes")]) == 1


def test_a_job_that_never_reached_cobalt_fails_at_its_deadline_as_cobalt_unavailable(
    client, worker, cobalt, clock: FakeClock, sessions
):
    cobalt.add(responses.POST, f"{COBALT}/telephone-encounters", status=429)
    job = submit(client, "/v1/telephone-encounters", ENCOUNTER)
    worker.run_once()
    assert poll(client, job["id"])["submission"]["state"] == "retrying"
    clock.advance(minutes=31)
    worker.housekeeping()
    failed = poll(client, job["id"])
    assert failed["status"] == "failed"
    assert failed["attention"] is None
    assert failed["error"]["code"] == "cobalt_unavailable"
    assert "never reached" in failed["error"]["message"]
    assert "deadline_passed" in timeline(sessions, job["id"])


def test_attention_jobs_are_looked_up_every_ten_minutes_for_a_day_then_hourly(
    client, worker, cobalt, clock: FakeClock
):
    past_the_deadline(client, worker, cobalt, clock, encounter=True)
    made = lookups_made(cobalt)
    clock.advance(minutes=5)
    worker.run_once()
    assert lookups_made(cobalt) == made, "not every minute any more"
    clock.advance(minutes=6)
    worker.run_once()
    assert lookups_made(cobalt) == made + 1
    clock.advance(days=1)
    worker.run_once()
    made = lookups_made(cobalt)
    clock.advance(minutes=30)
    worker.run_once()
    assert lookups_made(cobalt) == made, "after a day, hourly"
    clock.advance(minutes=31)
    worker.run_once()
    assert lookups_made(cobalt) == made + 1


def test_an_outcome_logged_after_the_deadline_settles_the_attention_job(
    client, worker, cobalt, clock: FakeClock, sessions
):
    job = past_the_deadline(client, worker, cobalt, clock, encounter=True)
    assert poll(client, job["id"])["attention"]["code"] == "no_outcome"

    cobalt.replace(
        responses.GET,
        f"{COBALT}/webhook-events",
        json={"success": True, "webhook_events": [logged("telephone_encounter.created", "4242")]},
    )
    clock.advance(minutes=11)
    worker.run_once()
    settled = poll(client, job["id"])
    assert settled["status"] == "completed"
    assert settled["attention"] is None
    made = lookups_made(cobalt)
    clock.advance(days=2)
    worker.run_once()
    assert lookups_made(cobalt) == made, "a settled job is not looked up again"
    assert timeline(sessions, job["id"]).count("reconciled") == 1


def test_a_legacy_failed_no_outcome_job_is_not_looked_up(
    client, worker, cobalt, clock: FakeClock, sessions
):
    """Terminal is terminal: a job failed for lack of news (before the rule changed) is
    never selected for a lookup that could flip it."""
    accept_encounter(cobalt)
    job = submit(client, "/v1/telephone-encounters", ENCOUNTER)
    worker.run_once()
    with transaction(sessions) as session:
        row = session.get(Job, uuid.UUID(job["id"]))
        row.status, row.error_code, row.finished_at = "failed", "no_outcome", clock()
    clock.advance(minutes=10)
    expected = {"note": timedelta(minutes=3), "telephone_encounter": timedelta(minutes=2)}
    with transaction(sessions) as session:
        assert due_lookups(session, now=clock(), expected=expected) == []


def test_a_job_not_yet_past_its_deadline_is_looked_up_before_attention_jobs(
    client, worker, cobalt, clock: FakeClock, sessions
):
    """However many jobs wait with attention, one whose front end still waits goes first."""
    waiting = past_the_deadline(client, worker, cobalt, clock, encounter=True)
    accept_note(cobalt)
    fresh = submit(client, "/v1/notes", NOTE)
    worker.run_once()
    clock.advance(minutes=11)  # both due: the attention job older, and first by age
    expected = {"note": timedelta(minutes=3), "telephone_encounter": timedelta(minutes=2)}
    with transaction(sessions) as session:
        [first] = due_lookups(session, now=clock(), expected=expected, limit=1)
        [second] = due_lookups(session, now=clock(), expected=expected, limit=1)
    assert (str(first.job_id), str(second.job_id)) == (fresh["id"], waiting["id"])
