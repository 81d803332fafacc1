"""Retention: PHI that reaches a job after its purge is purged in its turn."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.conftest import FakeClock, event
from tests.test_lifecycle_http import ENCOUNTER, accept_encounter, poll, submit
from tests.test_reconcile import events_log, logged
from webhook_service.db import transaction
from webhook_service.models import Job, JobEvent
from webhook_service.services import purge_expired_phi

RETENTION = timedelta(days=30)
MEDS = ["Metformin 500 mg"]


@pytest.mark.parametrize("arrives_by", ["webhook", "lookup"])
def test_an_outcome_written_after_the_purge_is_purged_in_its_turn(
    client, worker, cobalt, clock: FakeClock, post_webhook, sessions, arrives_by
):
    """A job purged while it had no outcome (as migration 0010 reopens an old `no_outcome`
    failure) takes its real outcome later, by either path; that outcome is PHI too."""
    accept_encounter(cobalt)
    job = submit(client, "/v1/telephone-encounters", ENCOUNTER)
    worker.run_once()
    with transaction(sessions) as session:  # attention since long ago, its PHI purged
        row = session.get(Job, uuid.UUID(job["id"]))
        row.request_body = None
        row.attention_code, row.attention_since = "no_outcome", clock()
        row.purged_at = clock() + timedelta(days=31)
    clock.advance(days=40)

    if arrives_by == "webhook":
        payload = event("telephone_encounter.failed", job_id="4242", available_medications=MEDS)
        post_webhook(payload | {"created": clock().isoformat().replace("+00:00", "Z")})
    else:
        found = logged("telephone_encounter.failed", "4242", available_medications=MEDS)
        events_log(cobalt, found | {"created_at": clock().isoformat().replace("+00:00", "Z")})
        worker.run_once()
    settled = poll(client, job["id"])
    assert settled["status"] == "failed"
    assert settled["outcome"]["available_medications"] == MEDS
    assert settled["purged_at"] is None

    clock.advance(days=29)
    with transaction(sessions) as session:
        assert purge_expired_phi(session, now=clock(), retention=RETENTION) == 0
    clock.advance(days=2)
    with transaction(sessions) as session:
        assert purge_expired_phi(session, now=clock(), retention=RETENTION) == 1
    purged = poll(client, job["id"])
    assert purged["outcome"] == {"event": "telephone_encounter.failed"}
    assert purged["purged_at"] is not None
    assert purged["error"]["code"] == "medication_not_found"
    with sessions() as session:
        lines = session.scalars(
            select(JobEvent.type).where(JobEvent.job_id == uuid.UUID(job["id"]))
        ).all()
    assert lines.count("phi_purged") == 1
