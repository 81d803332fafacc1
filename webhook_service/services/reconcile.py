"""Reconciliation: find an overdue job's outcome in Cobalt's webhook-events log.

Cobalt delivers each webhook at most twice and never after a timeout, so a job can be left
`processing` with its outcome sitting in Cobalt's log. A found outcome is stored and applied
exactly as a webhook would be. Past the deadline, a job whose request may be at Cobalt stays
`processing` with `attention` and is looked up less often; one that never reached Cobalt fails.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from webhook_service.cobalt import CobaltClient
from webhook_service.lifecycle import (
    NO_OUTCOME,
    JobKind,
    JobStatus,
    Outcome,
    Submission,
    kind_for_event,
    status_for_event,
)
from webhook_service.models import Clinic, Job, WebhookDelivery
from webhook_service.phi import search_hash
from webhook_service.services.jobs import add_event, settle
from webhook_service.services.webhooks import DeliveryState, _apply_safely, _clean_id
from webhook_service.signatures import compact_json

# Submissions whose outcome may be waiting in Cobalt's log: the request may be at Cobalt.
LOOKUP_STATES = (Submission.ACCEPTED, Submission.UNKNOWN, Submission.SENDING)
LOOKUP_EVERY = timedelta(seconds=60)
# A job past its deadline with no news (`attention`) is still looked up, less often: every
# ten minutes for a day (a dropped webhook's outcome usually sits in Cobalt's log by then),
# then hourly until the truth arrives or support records what the chart shows. Never given up
# on: the only alternative to knowing is a person checking the chart.
LATE_LOOKUP_EVERY = timedelta(minutes=10)
LATE_LOOKUP_FOR = timedelta(days=1)
LATER_LOOKUP_EVERY = timedelta(hours=1)
# Codes of a job failed at its deadline because its request certainly never reached Cobalt.
NOT_SENT_CODES = {
    Submission.PENDING: "cobalt_unavailable",
    Submission.RETRYING: "cobalt_unavailable",
    # Waiting behind an earlier note for the same appointment whose outcome is not known.
    Submission.WAITING: "appointment_busy",
}


@dataclass(frozen=True)
class Lookup:
    """What a worker needs to search Cobalt's log for one job."""

    job_id: uuid.UUID
    kind: str
    access_token: str
    cobalt_job_id: str | None
    appointment_hash: str | None
    since: datetime


def due_lookups(
    session: Session, *, now: datetime, expected: dict[str, timedelta], limit: int = 20
) -> list[Lookup]:
    """Claim jobs due for a lookup: overdue processing jobs (at most once a minute), and those
    past the deadline with `attention` (every ten minutes for a day, then hourly)."""
    oldest_expected = min(expected.values())
    overdue = and_(
        Job.attention_code.is_(None),
        Job.created_at < now - oldest_expected,
        _not_looked_up_since(now - LOOKUP_EVERY),
    )
    # `attention_code IS NOT NULL`: the partial index ix_jobs_attention's predicate.
    attention = Job.attention_code.is_not(None)
    recent_attention = and_(
        attention,
        Job.attention_since > now - LATE_LOOKUP_FOR,
        _not_looked_up_since(now - LATE_LOOKUP_EVERY),
    )
    old_attention = and_(
        attention,
        Job.attention_since <= now - LATE_LOOKUP_FOR,
        _not_looked_up_since(now - LATER_LOOKUP_EVERY),
    )
    jobs: list[Job] = []
    # Jobs not yet past their deadline first: a front end is still waiting on them, while a
    # job with attention has told its user to check the chart (and there may be many).
    for due in (overdue, or_(recent_attention, old_attention)):
        jobs += session.scalars(
            select(Job)
            .where(
                Job.status == JobStatus.PROCESSING,
                Job.submission_state.in_(LOOKUP_STATES),
                due,
            )
            .order_by(Job.created_at)
            .limit(limit - len(jobs))
            .with_for_update(skip_locked=True)
        ).all()
        if len(jobs) >= limit:
            break
    lookups = []
    for job in jobs:
        if job.created_at >= now - expected[job.kind]:
            continue
        if job.submission_state == Submission.SENDING and (
            job.claimed_until is not None and job.claimed_until > now
        ):
            continue  # a live worker is still waiting for Cobalt's reply
        clinic = session.get(Clinic, job.clinic_id)
        assert clinic is not None
        job.reconciled_at = now
        lookups.append(
            Lookup(
                job_id=job.id,
                kind=job.kind,
                access_token=clinic.access_token,
                cobalt_job_id=job.cobalt_job_id,
                appointment_hash=job.appointment_hash,
                since=job.created_at,
            )
        )
    return lookups


def _not_looked_up_since(since: datetime) -> ColumnElement[bool]:
    return or_(Job.reconciled_at.is_(None), Job.reconciled_at < since)


def lookup_params(lookup: Lookup) -> dict[str, str | int]:
    """Query parameters for `GET /v1/webhook-events` that can find this job's events."""
    params: dict[str, str | int] = {"page_size": 100, "sort": "-created_at"}
    if lookup.cobalt_job_id:
        params["job_id"] = lookup.cobalt_job_id
    else:
        # Notes may have no job id: search the days since submission, match the appointment.
        params["start_date"] = lookup.since.date().isoformat()
    return params


def read_cobalt_log(cobalt: CobaltClient, lookup: Lookup) -> list[dict[str, Any]]:
    """Every event in Cobalt's log that could be this job's (all pages; raises CobaltError).

    Called with no transaction open: Cobalt may take seconds to answer.
    """
    return cobalt.webhook_events(lookup.access_token, lookup_params(lookup))


def candidate_outcomes(lookup: Lookup, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The outcome events in Cobalt's log that may belong to this job, earliest first."""
    mine = []
    for item in events:
        if not isinstance(item, dict):
            continue
        event_type = item.get("event_type")
        if not isinstance(event_type, str) or status_for_event(event_type) is None:
            continue
        data = item.get("data") if isinstance(item.get("data"), dict) else {}
        assert isinstance(data, dict)
        if lookup.cobalt_job_id:
            if _clean_id(item.get("job_id")) != lookup.cobalt_job_id:
                continue
        elif lookup.kind == JobKind.NOTE:
            if kind_for_event(event_type) != JobKind.NOTE:
                continue
            if search_hash(_clean_id(data.get("appointment_id"))) != lookup.appointment_hash:
                continue
        else:
            continue
        mine.append(item)
    mine.sort(key=lambda item: str(item.get("created_at", "")))
    return mine


def _first_unclaimed(
    session: Session, job: Job, candidates: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The earliest candidate that no other job has already taken.

    A note found by its appointment could otherwise take the outcome of an earlier note for
    the same appointment: that event's Cobalt job id is bound to the earlier job, or its
    event id was applied to it.
    """
    job_ids = {i for i in (_clean_id(c.get("job_id")) for c in candidates) if i}
    event_ids = {i for i in (_clean_id(c.get("event_id")) for c in candidates) if i}
    bound = set(
        session.scalars(
            select(Job.cobalt_job_id).where(Job.cobalt_job_id.in_(job_ids), Job.id != job.id)
        )
    )
    applied = set(
        session.scalars(
            select(WebhookDelivery.event_id).where(
                WebhookDelivery.event_id.in_(event_ids),
                WebhookDelivery.job_id.is_not(None),
                WebhookDelivery.job_id != job.id,
            )
        )
    )
    for candidate in candidates:
        if _clean_id(candidate.get("job_id")) in bound:
            continue
        if _clean_id(candidate.get("event_id")) in applied:
            continue
        return candidate
    return None


def record_lookup(
    session: Session, lookup: Lookup, events: list[dict[str, Any]], now: datetime
) -> bool:
    """Write the lookup on the timeline and apply the outcome found, like a webhook would.

    The job is locked and read afresh: a webhook for it may have committed while Cobalt
    was being asked, and its outcome must not be applied a second time.
    """
    job = session.get(Job, lookup.job_id, with_for_update=True, populate_existing=True)
    if job is None:
        return False
    candidates = candidate_outcomes(lookup, events)
    found = _first_unclaimed(session, job, candidates) if candidates else None
    add_event(
        session,
        job,
        "reconcile_lookup",
        now,
        found=found is not None,
        event_type=found.get("event_type") if found else None,
    )
    open_to_outcome = job.status == JobStatus.PROCESSING or (
        job.status == JobStatus.FAILED and job.error_code == NO_OUTCOME
    )
    if found is None or not open_to_outcome:
        return False
    event_id = _clean_id(found.get("event_id")) or uuid.uuid4().hex
    raw_data = found.get("data")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    payload: dict[str, Any] = {
        "id": event_id,
        "object": "event",
        "created": found.get("created_at"),
        "type": found.get("event_type"),
        "job_id": _clean_id(found.get("job_id")),
        "data": data,
    }
    delivery = WebhookDelivery(
        dedup_key=f"reconcile:{event_id}",
        webhook_id=None,
        attempt=None,
        event_timestamp=None,
        event_id=event_id,
        event_type=_clean_id(found.get("event_type")),
        cobalt_job_id=payload["job_id"],
        telephone_encounter_id=_clean_id(data.get("telephone_encounter_id")),
        appointment_hash=search_hash(_clean_id(data.get("appointment_id"))),
        access_token_reference_id=None,
        headers={},
        raw_body=compact_json(payload),
        signature_match="reconcile",
        received_at=now,
        state=DeliveryState.RECEIVED,
    )
    try:
        with session.begin_nested():
            session.add(delivery)
    except IntegrityError:
        return False  # already found by an earlier lookup
    if job.cobalt_job_id is None and delivery.cobalt_job_id:
        # Bind the job to the event found for it, so matching cannot pick another job.
        job.cobalt_job_id = delivery.cobalt_job_id
    _apply_safely(session, delivery, payload, now)
    if delivery.state == DeliveryState.APPLIED:
        add_event(session, job, "reconciled", now, delivery_id=delivery.id)
        return True
    return False


@dataclass(frozen=True)
class PastDeadline:
    """What `mark_past_deadline` did: jobs given `attention`, jobs failed as never sent."""

    attention: int
    failed: int


def mark_past_deadline(session: Session, *, now: datetime, deadline: timedelta) -> PastDeadline:
    """Processing jobs with no outcome past the deadline: say what is known, and no more.

    A job whose request may be at Cobalt (accepted, unknown, or being sent: a `sending` job
    may be mid-call) stays `processing` with `attention: no_outcome` and is looked up less
    often; a note keeps its appointment slot, so an outcome for the appointment still has
    exactly one note to match. A job whose request certainly never reached Cobalt fails.
    """
    jobs = session.scalars(
        select(Job)
        .where(
            Job.status == JobStatus.PROCESSING,
            Job.attention_code.is_(None),
            Job.created_at < now - deadline,
        )
        .limit(100)
        .with_for_update(skip_locked=True)
    ).all()
    attention = 0
    minutes = int(deadline.total_seconds() // 60)
    for job in jobs:
        state = job.submission_state
        add_event(session, job, "deadline_passed", now, submission=state)
        if state in LOOKUP_STATES:
            job.attention_code = NO_OUTCOME
            job.attention_since = now
            job.updated_at = now
            attention += 1
        else:
            settle(session, job, _not_sent(state, minutes), now)
    return PastDeadline(attention=attention, failed=len(jobs) - attention)


def _not_sent(state: str, minutes: int) -> Outcome:
    """The failure of a job whose request never reached Cobalt by the deadline."""
    code = NOT_SENT_CODES.get(Submission(state), "cobalt_unavailable")
    if code == "appointment_busy":
        message = (
            f"Not sent to Cobalt within {minutes} minutes: an earlier note for this "
            "appointment has no outcome yet, and Cobalt cannot tell two notes for one "
            "appointment apart. Nothing of this note was written to the chart; check the chart "
            "for the earlier note before submitting again."
        )
    else:
        message = (
            f"Cobalt could not be reached within {minutes} minutes: the request never reached "
            "it, so nothing was written to the chart. It is safe to submit again."
        )
    return Outcome(
        status=JobStatus.FAILED,
        event="deadline_passed",
        detail={"event": "deadline_passed", "message": message},
        error={"code": code, "message": message},
    )
