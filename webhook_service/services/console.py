"""What the support console shows beyond the support API: a dashboard, a job's details and
audit trail, and what a retry would meet before anyone presses the button.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from webhook_service.lifecycle import JobStatus
from webhook_service.models import ApiClient, AuditEvent, Clinic, Job, WebhookDelivery
from webhook_service.schemas import JobFilters, TimelineEntry
from webhook_service.services.jobs import get_job
from webhook_service.services.support import (
    INBOX_STATES,
    JobRow,
    Staff,
    attention_condition,
    audit_staff,
    find_jobs,
    overdue_condition,
)
from webhook_service.services.support_actions import EVIDENCE_EVENTS, NextSteps, retry_refusal

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
    inbox: int  # webhook deliveries that need a person (`INBOX_STATES`), not jobs
    overdue_jobs: list[JobRow]
    flagged_jobs: list[JobRow]
    clinics_to_relink: list[Clinic]


def active_support_client(session: Session, client_id: int) -> ApiClient | None:
    """The support client with this id if it may still act: not revoked, role `support`.

    The console checks this on every request, so a revoked token loses access at once.
    """
    client = session.get(ApiClient, client_id)
    if client is None or client.revoked_at is not None or client.role != "support":
        return None
    return client


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
