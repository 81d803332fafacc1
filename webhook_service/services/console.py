"""What the support console shows beyond the support API: a dashboard, a job's details and
audit trail, and what a retry would meet before anyone presses the button.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, case, func, or_, select, update
from sqlalchemy.orm import Session

from webhook_service.lifecycle import JobKind, JobStatus, kind_for_event
from webhook_service.models import ApiClient, AuditEvent, Clinic, Job, WebhookDelivery
from webhook_service.schemas import JobFilters, TimelineEntry
from webhook_service.services.attention import (
    HAS_ATTENTION,
    attention_condition,
    overdue_condition,
)
from webhook_service.services.jobs import get_job
from webhook_service.services.support import JobRow, Staff, audit_staff, find_jobs
from webhook_service.services.support_actions import EVIDENCE_EVENTS, NextSteps, retry_refusal
from webhook_service.services.support_inbox import INBOX_STATES

# --- Support console --------------------------------------------------------------------------

DASHBOARD_DAYS = 7
DASHBOARD_SAMPLE = 5  # flagged and overdue jobs listed on the dashboard
# A refused retry names the button and the checkbox on the job page, not the API's calls.
CONSOLE_STEPS = NextSteps(
    lookup="press Reconcile now on this page",
    confirm="tick \u201cI checked the chart\u201d and press Retry",
)


@dataclass(frozen=True)
class JobDetails:
    """A job's PHI, for a person who asked to see it: the request, the outcome, the error."""

    request: dict[str, Any] | None
    outcome: dict[str, Any] | None
    error_message: str | None
    purged_at: datetime | None


@dataclass(frozen=True)
class RetryOutlook:
    """What a retry would meet now: the refusal, and whether confirming the chart would help."""

    refusal: str | None
    needs_confirmation: bool


@dataclass(frozen=True)
class DayCounts:
    day: date
    by_status: dict[str, int]


@dataclass(frozen=True)
class Dashboard:
    today: dict[str, int]
    week: dict[str, int]
    days: list[DayCounts]  # oldest first, today last
    overdue: int
    flagged: int
    attention: int  # of the flagged: no outcome by the deadline, listed in the inbox too
    inbox: int  # webhook deliveries that need a person (`INBOX_STATES`), not jobs
    overdue_jobs: list[JobRow]
    flagged_jobs: list[JobRow]
    clinics_to_relink: list[Clinic]


def active_support_client(session: Session, client_id: int, generation: int) -> ApiClient | None:
    """The support client with this id if it may still act: not revoked, role `support`, and
    not signed out since the session began (its generation is still the client's).

    The console checks this on every request, so revoking or signing out ends it at once.
    """
    client = session.get(ApiClient, client_id)
    if client is None or client.revoked_at is not None or client.role != "support":
        return None
    if client.session_generation != generation:
        return None
    return client


def end_console_sessions(session: Session, client_id: int) -> None:
    """End every console session of this client, wherever its cookie is (sign-out)."""
    session.execute(
        update(ApiClient)
        .where(ApiClient.id == client_id)
        .values(session_generation=ApiClient.session_generation + 1)
    )


def read_job_details(session: Session, staff: Staff, job_id: str, now: datetime) -> JobDetails:
    """A job's request body, outcome and error message (PHI: the read is audited)."""
    job = get_job(session, job_id)
    audit_staff(session, staff, "job.read", now, job_id=job.id)
    return JobDetails(
        request=job.request_body,
        outcome=job.outcome,
        error_message=job.error_message,
        purged_at=job.purged_at,
    )


def retry_outlook(job: Job, events: list[TimelineEntry]) -> RetryOutlook:
    """Ask the retry rule, before anyone presses the button, what it would say now.

    Uses the timeline already read for the page (the same entries the retry itself weighs).
    """
    evidence = [(e.at, e.type, e.detail) for e in events if e.type in EVIDENCE_EVENTS]
    refusal = retry_refusal(job, evidence, confirmed=False, steps=CONSOLE_STEPS)
    confirmed = (
        retry_refusal(job, evidence, confirmed=True, steps=CONSOLE_STEPS) if refusal else None
    )
    return RetryOutlook(refusal, needs_confirmation=refusal is not None and confirmed != refusal)


@dataclass(frozen=True)
class LikelyJob:
    """The job a delivery no job took most likely belongs to: a suggestion for a person."""

    job_id: uuid.UUID
    kind: str
    status: str
    created_at: datetime
    by: str  # what links them, in words


def likely_jobs(session: Session, deliveries: Sequence[WebhookDelivery]) -> dict[int, LikelyJob]:
    """For each delivery without a job, the job it most likely belongs to, by delivery id.

    Mirrors webhook matching (`services.matching.match_job`) for display only; nothing here
    is ever applied. By the same Cobalt job id, else the same telephone encounter id, else,
    for note events only (`note.*`), the most recent note for the same appointment in the
    delivery's clinic that was created before the delivery arrived. One query per rule for a
    whole page of deliveries.
    """
    loose = [d for d in deliveries if d.job_id is None]
    found = _likely_by_ids(session, loose)
    notes = [
        d
        for d in loose
        if d.id not in found
        and d.appointment_hash
        and kind_for_event(d.event_type or "") == JobKind.NOTE
    ]
    return {**found, **_likely_by_appointment(session, notes)}


def _likely_by_ids(session: Session, deliveries: Sequence[WebhookDelivery]) -> dict[int, LikelyJob]:
    job_ids = {d.cobalt_job_id for d in deliveries if d.cobalt_job_id}
    encounter_ids = {d.telephone_encounter_id for d in deliveries if d.telephone_encounter_id}
    if not job_ids and not encounter_ids:
        return {}
    rows = session.execute(
        select(
            Job.id,
            Job.kind,
            Job.status,
            Job.created_at,
            Job.cobalt_job_id,
            Job.cobalt_telephone_encounter_id,
        ).where(
            or_(
                Job.cobalt_job_id.in_(job_ids),
                Job.cobalt_telephone_encounter_id.in_(encounter_ids),
            )
        )
    ).all()
    by_job_id = {row.cobalt_job_id: row for row in rows if row.cobalt_job_id}
    by_encounter = {
        row.cobalt_telephone_encounter_id: row for row in rows if row.cobalt_telephone_encounter_id
    }
    found = {}
    for d in deliveries:
        if d.cobalt_job_id in by_job_id:
            found[d.id] = _likely(by_job_id[d.cobalt_job_id], "the same Cobalt job id")
        elif d.telephone_encounter_id in by_encounter:
            found[d.id] = _likely(
                by_encounter[d.telephone_encounter_id], "the same telephone encounter id"
            )
    return found


def _likely_by_appointment(
    session: Session, deliveries: Sequence[WebhookDelivery]
) -> dict[int, LikelyJob]:
    if not deliveries:
        return {}
    notes = session.execute(
        select(Job.id, Job.kind, Job.status, Job.created_at, Job.clinic_id, Job.appointment_hash)
        .where(
            Job.kind == JobKind.NOTE,
            Job.appointment_hash.in_({d.appointment_hash for d in deliveries}),
        )
        .order_by(Job.created_at.desc(), Job.id.desc())
    ).all()
    clinics = _clinic_references(session)
    found = {}
    for d in deliveries:
        allowed = _clinics_of(clinics, d.access_token_reference_id)
        for note in notes:  # most recent first
            if (
                note.appointment_hash == d.appointment_hash
                and (allowed is None or note.clinic_id in allowed)
                and note.created_at <= d.received_at
            ):
                found[d.id] = _likely(note, "a note for the same appointment, same clinic")
                break
    return found


def _likely(row: Row[*tuple[Any, ...]], by: str) -> LikelyJob:
    return LikelyJob(
        job_id=row.id, kind=row.kind, status=row.status, created_at=row.created_at, by=by
    )


def _clinic_references(session: Session) -> dict[int, str | None]:
    return {
        clinic_id: reference
        for clinic_id, reference in session.execute(
            select(Clinic.id, Clinic.access_token_reference_id)
        )
    }


def _clinics_of(clinics: dict[int, str | None], reference_id: str | None) -> set[int] | None:
    """The clinics a delivery may come from; None when it does not say. As webhook matching
    reads it: the clinic with its reference id, else those whose id is not learned yet."""
    if reference_id is None:
        return None
    known = {c for c, ref in clinics.items() if ref == reference_id}
    return known or {c for c, ref in clinics.items() if ref is None}


def job_audit(
    session: Session, job_id: uuid.UUID, *, skip: Sequence[str] = (), limit: int = 50
) -> list[AuditEvent]:
    """Who read or acted on a job, newest first; `skip` leaves out actions by name."""
    query = select(AuditEvent).where(AuditEvent.job_id == job_id)
    if skip:
        query = query.where(AuditEvent.action.not_in(skip))
    return list(
        session.scalars(query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit))
    )


def dashboard(session: Session, *, now: datetime, expected: dict[str, timedelta]) -> Dashboard:
    """Counts by status for today and the last seven days (UTC), and what needs a person."""
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    starts = [midnight - timedelta(days=n) for n in range(DASHBOARD_DAYS - 1, -1, -1)]
    # One grouped query: each job falls in the latest day that starts before it was created.
    bucket = case(
        *((Job.created_at >= start, index) for index, start in reversed(list(enumerate(starts))))
    )
    # Grouped outside a subquery: PostgreSQL would not see two bound CASEs as one expression.
    recent = (
        select(bucket.label("day"), Job.status.label("status"))
        .where(Job.created_at >= starts[0])
        .subquery()
    )
    counts = session.execute(
        select(recent.c.day, recent.c.status, func.count()).group_by(recent.c.day, recent.c.status)
    ).all()
    days = [DayCounts(start.date(), {str(s): 0 for s in JobStatus}) for start in starts]
    for index, status, count in counts:
        days[int(index)].by_status[str(status)] += int(count)
    week = {str(s): sum(d.by_status[str(s)] for d in days) for s in JobStatus}
    flagged_only, overdue_only = JobFilters(flagged=True), JobFilters(overdue=True)
    return Dashboard(
        today=days[-1].by_status,
        week=week,
        days=days,
        overdue=_count(session, overdue_condition(now, expected)),
        flagged=_count(session, attention_condition()),
        attention=_count(session, HAS_ATTENTION),
        inbox=int(
            session.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(WebhookDelivery.state.in_(INBOX_STATES))
            )
            or 0
        ),
        overdue_jobs=_sample(session, overdue_only, now, expected),
        flagged_jobs=_sample(session, flagged_only, now, expected),
        clinics_to_relink=list(
            session.scalars(select(Clinic).where(Clinic.needs_relink.is_(True)).order_by(Clinic.id))
        ),
    )


def _count(session: Session, condition: ColumnElement[bool]) -> int:
    return int(session.scalar(select(func.count()).select_from(Job).where(condition)) or 0)


def _sample(
    session: Session, filters: JobFilters, now: datetime, expected: dict[str, timedelta]
) -> list[JobRow]:
    page = find_jobs(
        session, filters, now=now, expected=expected, limit=DASHBOARD_SAMPLE, with_phi=False
    )
    return page.rows
