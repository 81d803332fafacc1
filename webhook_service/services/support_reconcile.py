"""Support staff's "reconcile now": look a job up in Cobalt's log at once, as the worker
would, and say in plain words what was found and what changed. Audited, on the timeline.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from webhook_service.lifecycle import JobStatus
from webhook_service.models import Clinic, Job, JobEvent
from webhook_service.services.jobs import add_event, get_job
from webhook_service.services.reconcile import Lookup, record_lookup
from webhook_service.services.support import Staff, audit_staff
from webhook_service.services.support_actions import _job_for_update


def begin_reconcile(
    session: Session, staff: Staff, job_id: str, *, reason: str, now: datetime
) -> Lookup:
    """Record a staff-requested lookup and return what the caller needs to ask Cobalt.

    The caller commits before calling Cobalt: no transaction is held across the call.
    """
    job = get_job(session, job_id)
    clinic = session.get(Clinic, job.clinic_id)
    assert clinic is not None  # foreign key
    job.reconciled_at = now  # the worker need not look again this minute
    add_event(session, job, "reconcile_requested", now, by=staff.name)
    audit_staff(session, staff, "job.reconcile", now, job_id=job.id, reason=reason)
    return Lookup(
        job_id=job.id,
        kind=job.kind,
        access_token=clinic.access_token,
        cobalt_job_id=job.cobalt_job_id,
        appointment_hash=job.appointment_hash,
        since=job.created_at,
    )


@dataclass(frozen=True)
class ReconcileResult:
    """What a staff-requested lookup found in Cobalt's log, and what it did to the job."""

    job_id: uuid.UUID
    events_searched: int  # events Cobalt's log answered with (this job's or not)
    found: bool  # an outcome event for this job was among them
    event_type: str | None  # the outcome found, e.g. `note.created`
    applied: bool  # the job took that outcome now
    status_before: str
    status_after: str

    @property
    def summary(self) -> str:
        """The result in plain words (API and console say the same)."""
        if not self.found:
            searched = f"searched {self.events_searched} event{_plural(self.events_searched)}"
            return (
                f"Cobalt's log has no outcome for this job yet ({searched}); "
                f"the job is still {self.status_after}: nothing changed."
            )
        if self.applied:
            return f"Found {self.event_type} in Cobalt's log: the job is now {self.status_after}."
        if self.status_before == JobStatus.PROCESSING:
            return (
                f"Found {self.event_type} in Cobalt's log, but it could not be applied: the job "
                "is still processing. The timeline and the inbox say why."
            )
        return (
            f"Found {self.event_type} in Cobalt's log, but the job already showed "
            f"{self.status_before}: nothing changed."
        )


def _plural(count: int) -> str:
    return "" if count == 1 else "s"


def finish_reconcile(
    session: Session, lookup: Lookup, events: list[dict[str, Any]], now: datetime
) -> ReconcileResult:
    """Write the lookup on the timeline and apply what it found, as the worker does; say
    what it found (read back from the timeline line the lookup writes) and what changed."""
    job = _job_for_update(session, str(lookup.job_id))
    status_before = str(job.status)
    # Only the line this lookup writes, not an earlier lookup's.
    earlier = session.scalar(
        select(func.max(JobEvent.id)).where(
            JobEvent.job_id == job.id, JobEvent.type == "reconcile_lookup"
        )
    )
    applied = record_lookup(session, lookup, events, now)
    written = session.scalar(
        select(JobEvent.detail)
        .where(
            JobEvent.job_id == job.id,
            JobEvent.type == "reconcile_lookup",
            JobEvent.id > (earlier or 0),
        )
        .order_by(JobEvent.id.desc())
        .limit(1)
    )
    detail = written or {}
    event_type = detail.get("event_type")
    return ReconcileResult(
        job_id=job.id,
        events_searched=len(events),
        found=bool(detail.get("found")),
        event_type=str(event_type) if event_type else None,
        applied=applied,
        status_before=status_before,
        # Read from the database: applying may have written the job with a plain UPDATE.
        status_after=str(session.scalar(select(Job.status).where(Job.id == job.id))),
    )
