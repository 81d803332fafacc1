"""What may settle a job, checked on every path that applies an outcome.

The rules live once (`lifecycle.settles`, `lifecycle.held_reason`, `matching.find_job`);
this walks each path a Cobalt event can take to a job (a webhook as it arrives, a parked
one applied when the job learns its ids, a reconcile lookup of Cobalt's log, support's
replay of a stored delivery) and checks each path obeys them, and still applies the
job's own outcome (so a path that applied nothing at all would fail too).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import responses
from flask.testing import FlaskClient
from sqlalchemy import select, update

from tests.conftest import COBALT, FakeClock, event
from tests.test_lifecycle_http import ENCOUNTER, accept_encounter, poll, submit
from webhook_service.db import SessionFactory
from webhook_service.lifecycle import kind_for_event
from webhook_service.models import Job, JobEvent, WebhookDelivery
from webhook_service.services.parking import EVENT_KIND, match_parked
from webhook_service.worker import Worker

# (event type, its signed `created`) for an encounter created at 12:00:00 (the fake clock).
EVENTS = {
    # The job's own outcome: applied on every path.
    "own-outcome": ("telephone_encounter.failed", "2026-11-23T12:00:04Z"),
    # Another resource's event carrying the job's Cobalt ids: never its outcome.
    "other-resource": ("appointment.failed", "2026-11-23T12:00:04Z"),
    # The job's kind, but created before the job: an earlier job's outcome, replayed.
    "older-than-job": ("telephone_encounter.failed", "2026-11-23T11:59:00Z"),
}


def _payload(name: str) -> dict[str, Any]:
    event_type, created = EVENTS[name]
    payload = event(event_type, job_id="4242", telephone_encounter_id="te_77", message="x")
    payload["created"] = created
    return payload


class Paths:
    """Each way an event reaches a telephone encounter accepted as Cobalt job 4242."""

    def __init__(
        self,
        client: FlaskClient,
        support: FlaskClient,
        worker: Worker,
        cobalt: responses.RequestsMock,
        clock: FakeClock,
        sessions: SessionFactory,
        post_webhook: Callable[..., Any],
    ) -> None:
        self.client, self.support, self.worker = client, support, worker
        self.cobalt, self.clock, self.sessions = cobalt, clock, sessions
        self.post_webhook = post_webhook

    def submit(self) -> str:
        accept_encounter(self.cobalt)
        return str(submit(self.client, "/v1/telephone-encounters", ENCOUNTER)["id"])

    def webhook(self, payload: dict[str, Any]) -> str:
        job_id = self.submit()
        assert self.worker.run_once()
        assert self.post_webhook(payload).status_code == 200
        return job_id

    def parked_sweep(self, payload: dict[str, Any]) -> str:
        job_id = self.submit()
        assert self.post_webhook(payload).status_code == 200  # before the job has its ids
        assert self.worker.run_once()  # learns 4242 and applies what was parked for it
        self.clock.advance(seconds=10)
        self.worker.housekeeping()  # and the sweep, for what the worker's own pass missed
        return job_id

    def reconcile(self, payload: dict[str, Any]) -> str:
        job_id = self.submit()
        assert self.worker.run_once()
        logged = {
            "event_id": payload["id"],
            "event_type": payload["type"],
            "job_id": payload["job_id"],
            "data": payload["data"],
            "created_at": payload["created"],
            "delivery_status": "failed",
        }
        self.cobalt.add(
            responses.GET,
            f"{COBALT}/webhook-events",
            json={"success": True, "webhook_events": [logged], "pagination": {"total_pages": 1}},
        )
        self.clock.advance(minutes=3)
        self.worker.run_once()
        return job_id

    def support_replay(self, payload: dict[str, Any]) -> str:
        job_id = self.submit()
        assert self.post_webhook(payload).status_code == 200  # stored; no job knows 4242
        with self.sessions.begin() as session:  # the job learns its ids, nothing applied
            session.execute(
                update(Job)
                .where(Job.id == uuid.UUID(job_id))
                .values(cobalt_job_id="4242", cobalt_telephone_encounter_id="te_77")
            )
            delivery_id = session.scalars(select(WebhookDelivery.id)).one()
        replay = self.support.post(
            f"/v1/deliveries/{delivery_id}/replay", json={"reason": "check", "dry_run": False}
        )
        assert replay.status_code == 200, replay.json
        return job_id


PATHS = ["webhook", "parked_sweep", "reconcile", "support_replay"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(EVENTS))
def test_every_path_settles_a_job_only_with_its_own_outcome(
    client, support, worker, cobalt, clock, sessions, post_webhook, path, name
):
    paths = Paths(client, support, worker, cobalt, clock, sessions, post_webhook)
    job_id = getattr(paths, path)(_payload(name))
    job = poll(client, job_id)
    with sessions() as session:
        applied = session.scalars(
            select(JobEvent.type).where(
                JobEvent.job_id == uuid.UUID(job_id), JobEvent.type == "webhook_applied"
            )
        ).all()
    if name == "own-outcome":
        assert (job["status"], len(applied)) == ("failed", 1)
    else:
        assert (job["status"], applied) == ("processing", [])
    assert job["cobalt"] == {"job_id": "4242", "telephone_encounter_id": "te_77"}


EVENT_TYPES = [
    "note.created",
    "note.upload_failed",
    "telephone_encounter.created_partial",
    "telephoneXencounter.created",  # `_` is a LIKE wildcard: it must match only itself
    "appointment.failed",
    "login_required",
    "notes.created",
    "note",
    "",
]


def test_the_parked_sweeps_sql_kind_of_an_event_is_lifecycles(sessions):
    """The parked sweep filters in SQL on `EVENT_KIND`, the SQL form of
    `lifecycle.kind_for_event`: both must say the same of every event type."""
    with sessions.begin() as session:
        for number, event_type in enumerate(EVENT_TYPES):
            session.add(
                WebhookDelivery(
                    dedup_key=f"k{number}",
                    event_type=event_type,
                    headers={},
                    signature_match="raw:secret[0]",
                    received_at=datetime(2026, 11, 23, tzinfo=UTC),
                    state="parked",
                )
            )
    with sessions() as session:
        rows = session.execute(select(WebhookDelivery.event_type, EVENT_KIND)).all()
    assert {event_type: kind for event_type, kind in rows} == {
        event_type: kind_for_event(event_type) for event_type in EVENT_TYPES
    }


def test_the_parked_sweep_is_not_held_up_by_an_event_of_another_kind(
    client, worker, cobalt, clock, sessions, post_webhook
):
    """An encounter event carrying a note's Cobalt job id is parked for good (no job of its
    kind has that id); the sweep must not take it up, again and again, ahead of the rest."""
    accept_note = {"success": True, "message": "ok", "job_id": "cj_shared"}
    cobalt.add(responses.POST, f"{COBALT}/notes", json=accept_note)
    submit(client, "/v1/notes", {"appointment_id": "728948", "note": "Doing well."})
    stray = event("telephone_encounter.failed", job_id="cj_shared", failure_reason="x")
    assert post_webhook(stray).status_code == 200
    assert worker.run_once()  # the note learns cj_shared: the stray event stays parked
    encounter = Paths(client, client, worker, cobalt, clock, sessions, post_webhook).submit()
    clock.advance(seconds=1)
    assert post_webhook(_payload("own-outcome")).status_code == 200  # parked: no id yet
    with sessions.begin() as session:  # the ids recorded in the same instant, as in a race
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(encounter))
            .values(cobalt_job_id="4242", cobalt_telephone_encounter_id="te_77")
        )
    with sessions.begin() as session:
        assert match_parked(session, clock.now, limit=1) == 1
    assert poll(client, encounter)["status"] == "failed"
    with sessions() as session:
        states = session.scalars(select(WebhookDelivery.state).order_by(WebhookDelivery.id))
        assert list(states) == ["parked", "applied"]
