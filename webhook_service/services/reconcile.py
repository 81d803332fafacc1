"""Reconciliation: find an overdue job's outcome in Cobalt's webhook-events log.

Cobalt delivers each webhook at most twice and never after a timeout, so a job can be left
`processing` with its outcome sitting in Cobalt's log. A found outcome is stored and applied
exactly as a webhook would be. Past the deadline, a job whose request may be at Cobalt stays
`processing` with `attention` and is looked up less often; one that never reached Cobalt fails.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from webhook_service import metrics
from webhook_service.cobalt import CobaltClient, CobaltError
from webhook_service.lifecycle import (
    DOCUMENTED_OUTCOMES,
    JobKind,
    JobStatus,
    Submission,
    held_reason,
    learned_ids,
    matches_by_appointment,
    open_to_outcome,
    settles,
)
from webhook_service.models import Clinic, Job, WebhookDelivery
from webhook_service.services.applying import _apply_safely
from webhook_service.services.deliveries import (
    RECONCILE_MATCH,
    DeliveryState,
    _clean_id,
    dedup_key,
    delivery_fields,
)
from webhook_service.services.jobs import add_event
from webhook_service.services.metrics import on_commit
from webhook_service.signatures import compact_json

log = logging.getLogger(__name__)

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


def lookup_params(lookup: Lookup) -> list[dict[str, str | int]]:
    """The queries of `GET /v1/webhook-events` that can find this job's events (each read
    to its last page).

    By Cobalt job id when the job has one: a job's events are few. A note without one is
    found by its appointment among the note outcomes since it was submitted: one query per
    documented outcome type, since Cobalt's `event_type` takes one type and, on a busy
    account, the log is mostly other resources' events (appointments, patients, tasks), so
    reading it unfiltered could mean thousands of pages per lookup. An undocumented failure
    type would not be found: the job then stays `processing` with attention, never wrong.
    The range starts a day before the job's date and has no end: Cobalt does not say in
    which time zone its dates are, and "today" in ours could cut off its newest events.
    """
    common: dict[str, str | int] = {"page_size": 100, "sort": "created_at"}
    if lookup.cobalt_job_id:
        return [{**common, "job_id": lookup.cobalt_job_id}]
    if lookup.kind == JobKind.NOTE and lookup.appointment_hash:
        start = (lookup.since - timedelta(days=1)).date().isoformat()
        return [
            {**common, "event_type": event_type, "start_date": start}
            for event_type in DOCUMENTED_OUTCOMES[JobKind.NOTE]
        ]
    return []  # an encounter without a Cobalt job id: nothing in the log names it


def read_cobalt_log(cobalt: CobaltClient, lookup: Lookup) -> list[dict[str, Any]]:
    """Every event in Cobalt's log that could be this job's (every page; raises CobaltError).

    Called with no transaction open: Cobalt may take seconds to answer.
    """
    found: dict[object, dict[str, Any]] = {}
    for params in lookup_params(lookup):
        try:
            read = cobalt.webhook_events(lookup.access_token, params)
        except CobaltError:
            metrics.reconcile_lookup("failed")
            raise
        if read.stopped is not None:
            log.warning(
                "cobalt log read stopped early",
                extra={"job_id": str(lookup.job_id), "pages": read.pages, "why": read.stopped},
            )
        for item in read.events:
            found.setdefault(_clean_id(item.get("event_id")) or id(item), item)
    return list(found.values())


def candidate_outcomes(lookup: Lookup, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The outcome events in Cobalt's log that may belong to this job, earliest first.

    The rules are the ones every delivery is matched by (`matching.find_job`): only events
    that settle the job's kind, by its Cobalt job id, or for a note by its appointment; and
    never one created before the job (`lifecycle.held_reason`).
    """
    mine = []
    for item in events:
        fields = delivery_fields(_as_payload(item))
        event_type = fields["event_type"]
        if event_type is None or not settles(lookup.kind, event_type):
            continue
        if lookup.cobalt_job_id:
            if fields["cobalt_job_id"] != lookup.cobalt_job_id:
                continue
        elif not (
            matches_by_appointment(lookup.kind)
            and fields["appointment_hash"] is not None
            and fields["appointment_hash"] == lookup.appointment_hash
        ):
            continue
        created = fields["event_created_at"]
        if held_reason(created, received_at=None, job_created_at=lookup.since) is not None:
            continue
        mine.append(item)
    mine.sort(key=lambda item: str(item.get("created_at", "")))
    return mine


def _as_payload(item: dict[str, Any]) -> dict[str, Any]:
    """An event of Cobalt's log in the shape of a webhook's body (what a delivery stores)."""
    return {
        "id": item.get("event_id"),
        "object": "event",
        "created": item.get("created_at"),
        "type": item.get("event_type"),
        "job_id": item.get("job_id"),
        "data": item.get("data") if isinstance(item.get("data"), dict) else {},
    }


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
    """Write the lookup on the timeline and apply the outcome found, like a webhook would
    (`_record_lookup`); counted in the metrics once it commits."""
    applied = _record_lookup(session, lookup, events, now)
    result = "applied" if applied else "nothing_applied"
    on_commit(session, lambda: metrics.reconcile_lookup(result))
    return applied


def _record_lookup(
    session: Session, lookup: Lookup, events: list[dict[str, Any]], now: datetime
) -> bool:
    """Write the lookup on the timeline and apply the outcome found, like a webhook would.

    The job is locked and read afresh: a webhook for it may have committed while Cobalt
    was being asked, and its outcome must not be applied a second time. The event is stored
    under the key its webhook is (`deliveries.dedup_key`): one event is one delivery, whichever
    way it reached us, and a stored one still waiting (parked) is applied, not copied.
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
    if found is None or not open_to_outcome(job.status):
        return False
    payload = _as_payload(found)
    fields = delivery_fields(payload)
    payload["job_id"] = fields["cobalt_job_id"]
    raw_body = compact_json(payload)
    key = dedup_key(fields["event_id"], None, raw_body)
    delivery = session.scalar(
        select(WebhookDelivery).where(WebhookDelivery.dedup_key == key).with_for_update()
    )
    if delivery is None:
        delivery = WebhookDelivery(
            dedup_key=key,
            webhook_id=None,
            attempt=None,
            event_timestamp=None,
            headers={},
            raw_body=raw_body,
            signature_match=RECONCILE_MATCH,
            received_at=now,
            state=DeliveryState.RECEIVED,
            **fields,
        )
        try:
            with session.begin_nested():
                session.add(delivery)
        except IntegrityError:
            return False  # stored by a webhook that committed meanwhile: it was applied there
    elif delivery.state != DeliveryState.PARKED:
        return False  # already applied, or held for a person: never applied twice
    # Bind the job to the event found for it, so matching cannot pick another job.
    job.cobalt_job_id, job.cobalt_telephone_encounter_id = learned_ids(
        (job.cobalt_job_id, job.cobalt_telephone_encounter_id),
        (delivery.cobalt_job_id, delivery.telephone_encounter_id),
    )
    _apply_safely(session, delivery, payload, now)
    if delivery.state == DeliveryState.APPLIED:
        add_event(session, job, "reconciled", now, delivery_id=delivery.id)
        return True
    return False
