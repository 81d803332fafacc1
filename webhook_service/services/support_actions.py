"""Support staff's actions: retry a failed job, reconcile it now, replay a stored delivery,
record what the chart shows.

Each carries a reason, is audited, and is written on the job's timeline. A retry never risks a
second copy of a note in a chart without a person's explicit, audited confirmation.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from webhook_service.errors import Conflict, NotFound
from webhook_service.lifecycle import (
    NOT_IN_CHART,
    JobKind,
    JobStatus,
    Outcome,
    Submission,
    is_overdue,
    status_for_event,
)
from webhook_service.models import ApiClient, Clinic, Job, JobEvent
from webhook_service.schemas import NoteRequest, ReplayOut, TelephoneEncounterRequest
from webhook_service.services.applying import _apply_safely
from webhook_service.services.deliveries import DeliveryState, _parse
from webhook_service.services.jobs import add_event, get_job, settle, submit_job
from webhook_service.services.matching import match_job
from webhook_service.services.reconcile import Lookup, record_lookup
from webhook_service.services.support import Staff, audit_staff, get_delivery

# Submissions that certainly put nothing in a chart: Cobalt refused them (4xx), or they never
# reached Cobalt (transient failures only, or failed before being sent).
NEVER_REACHED = frozenset(
    {
        Submission.REJECTED,
        Submission.GAVE_UP,
        Submission.PENDING,
        Submission.WAITING,
        Submission.RETRYING,
    }
)
# Timeline entries that say what Cobalt did with the first try.
EVIDENCE_EVENTS = ("reconcile_lookup", "outcome_conflict")
_SETTLED_ONCE = (DeliveryState.APPLIED, DeliveryState.REPEAT)


# --- Retry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NextSteps:
    """How a refusal names the next step: the API names its calls, the console its buttons.

    The rule (`retry_refusal`) is one; only the words for what to do next differ.
    """

    lookup: str  # `{job_id}` is filled in
    confirm: str


API_STEPS = NextSteps(
    lookup="run a reconcile lookup (POST /v1/jobs/{job_id}/reconcile)",
    confirm="retry with confirm_not_in_emr: true",
)


def retry_refusal(
    job: Job,
    evidence: Sequence[tuple[datetime, str, dict[str, Any]]],
    confirmed: bool,
    steps: NextSteps = API_STEPS,
) -> str | None:
    """Why a job may not be resubmitted now, or None when it may (pure: job and timeline).

    Proof that the first try is not in the chart is one of: the submission never reached
    Cobalt or Cobalt refused it; Cobalt reported the failure itself (a `*.failed` or
    `login_required` outcome, by webhook or found in its log by a reconcile lookup); support
    looked in the chart and recorded that it is not there (`not_in_chart`). Without
    proof a person must confirm the chart was checked, and only after a reconcile lookup made
    since the job failed has found nothing. Any success Cobalt reported refuses the retry.
    """
    if job.status != JobStatus.FAILED:
        return f"Only failed jobs can be retried; this one is {job.status}."
    if job.request_body is None:
        return "The request was purged after the retention period: resubmit it from the front end."
    statuses = _reported_statuses(evidence)
    if statuses & {JobStatus.COMPLETED, JobStatus.PARTIAL}:
        return "Cobalt reported a success for this job: it is in the EMR; do not resubmit it."
    if job.submission_state in NEVER_REACHED or job.error_code == NOT_IN_CHART:
        return None
    outcome_event = str((job.outcome or {}).get("event", ""))
    if status_for_event(outcome_event) == JobStatus.FAILED or JobStatus.FAILED in statuses:
        return None
    lookup_hint = steps.lookup.format(job_id=job.id)
    if not confirmed:
        why = (
            "Cobalt accepted it and never reported an outcome"
            if job.submission_state == Submission.ACCEPTED
            else "Cobalt's answer to it never came back"
        )
        return (
            f"The first try may have reached Cobalt ({why}), so a retry could put it in the "
            f"chart twice. Check the chart; if it is not there, {lookup_hint}, then "
            f"{steps.confirm}."
        )
    failed_at = job.finished_at or job.updated_at
    if not any(kind == "reconcile_lookup" and at > failed_at for at, kind, _ in evidence):
        return f"Before confirming, {lookup_hint}: Cobalt's log may still hold the outcome."
    return None


def _reported_statuses(evidence: Sequence[tuple[datetime, str, dict[str, Any]]]) -> set[str]:
    """Outcomes Cobalt reported for the job that the job itself does not show."""
    statuses = set()
    for _, kind, detail in evidence:
        if kind == "outcome_conflict":
            statuses.add(str(detail.get("status")))
        elif detail.get("found"):
            statuses.add(str(status_for_event(str(detail.get("event_type")))))
    return statuses


def retry_job(
    session: Session,
    staff: Staff,
    job_id: str,
    *,
    reason: str,
    confirm_not_in_emr: bool,
    now: datetime,
    steps: NextSteps = API_STEPS,
) -> Job:
    """Resubmit a failed job as a new job with the same request; link the two timelines.

    A refusal (Conflict) names the next step in the caller's words (`steps`).
    """
    job = _job_for_update(session, job_id)
    earlier = session.scalar(select(Job.id).where(Job.retry_of == job.id))
    if earlier is not None:
        raise Conflict(f"This job was already retried as {earlier}.")
    evidence = session.execute(
        select(JobEvent.at, JobEvent.type, JobEvent.detail).where(
            JobEvent.job_id == job.id, JobEvent.type.in_(EVIDENCE_EVENTS)
        )
    ).all()
    refusal = retry_refusal(job, [tuple(row) for row in evidence], confirm_not_in_emr, steps)
    if refusal is not None:
        raise Conflict(refusal)
    request = _stored_request(job)
    clinic = session.get(Clinic, job.clinic_id)
    assert clinic is not None  # foreign key
    client = session.get(ApiClient, job.client_id) if job.client_id is not None else None
    try:
        with session.begin_nested():
            # The new job keeps the front end that sent the first, so it can poll it.
            new, _ = submit_job(
                session,
                request=request,
                clinic=clinic,
                client=client,
                idempotency_key=None,
                now=now,
            )
            new.retry_of = job.id
            session.flush()
            # The old job tells its front end where its retry went (a new ETag).
            job.retried_as = new.id
            job.updated_at = now
            session.flush()
    except IntegrityError:  # the unique retry_of: someone else retried it a moment ago
        raise Conflict("This job was retried by someone else just now.") from None
    add_event(
        session,
        new,
        "retry_of",
        now,
        job_id=str(job.id),
        by=staff.name,
        confirmed_not_in_emr=confirm_not_in_emr,
    )
    add_event(session, job, "retried_as", now, job_id=str(new.id), by=staff.name)
    audit_staff(
        session,
        staff,
        "job.retry",
        now,
        job_id=job.id,
        reason=reason,
        new_job_id=str(new.id),
        confirm_not_in_emr=confirm_not_in_emr,
    )
    return new


def _job_for_update(session: Session, job_id: str) -> Job:
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        raise NotFound(f"No job with id {job_id!r}.") from None
    job = session.scalar(select(Job).where(Job.id == key).with_for_update())
    if job is None:
        raise NotFound(f"No job with id {job_id!r}.")
    return job


def _stored_request(job: Job) -> NoteRequest | TelephoneEncounterRequest:
    model = NoteRequest if job.kind == JobKind.NOTE else TelephoneEncounterRequest
    try:
        return model.model_validate(job.request_body)
    except ValidationError:
        raise Conflict(
            "The stored request no longer passes validation: resubmit it from the front end."
        ) from None


# --- What the chart shows --------------------------------------------------------------------


def chart_outcome_refusal(job: Job, now: datetime, expected: timedelta) -> str | None:
    """Why support may not record what the chart shows for this job now, or None (pure).

    Only a processing job past its expected time: before then Cobalt is most likely still at
    work, and a chart checked too early says nothing. Not while a worker is sending it: its
    request may land after the chart was read.
    """
    if job.status != JobStatus.PROCESSING:
        return f"Only a processing job can be settled from the chart; this one is {job.status}."
    if job.attention_code is None and not is_overdue(job.status, job.created_at, expected, now):
        return (
            "Cobalt may still be working on this job (it is not past its expected time): "
            "wait for its outcome before checking the chart."
        )
    if job.submission_state == Submission.SENDING and (
        job.claimed_until is not None and job.claimed_until > now
    ):
        return "The job is being sent to Cobalt right now: wait a minute, then check the chart."
    return None


def chart_outcome(found_in_chart: bool) -> Outcome:
    """The outcome a job takes from what support saw in the chart."""
    if found_in_chart:
        message = "Support found it in the chart."
        return Outcome(
            status=JobStatus.COMPLETED,
            event="chart_confirmed",
            detail={"event": "chart_confirmed", "message": message},
            error=None,
        )
    message = "Support checked the chart: it is not there. It can be submitted again."
    return Outcome(
        status=JobStatus.FAILED,
        event="chart_not_found",
        detail={"event": "chart_not_found", "message": message},
        error={"code": NOT_IN_CHART, "message": message},
    )


def record_chart_outcome(
    session: Session,
    staff: Staff,
    job_id: str,
    *,
    found_in_chart: bool,
    reason: str,
    now: datetime,
    expected: dict[str, timedelta],
) -> Job:
    """Settle a job from what support saw in the chart: found → completed, not found → failed.

    Settles like every other path (`settle`); an outcome Cobalt reports later is judged
    against it, and recorded and flagged if it differs.
    """
    job = _job_for_update(session, job_id)
    refusal = chart_outcome_refusal(job, now, expected[job.kind])
    if refusal is not None:
        raise Conflict(refusal)
    attention = job.attention_code
    settle(session, job, chart_outcome(found_in_chart), now)
    add_event(
        session, job, "chart_outcome_recorded", now, found_in_chart=found_in_chart, by=staff.name
    )
    audit_staff(
        session,
        staff,
        "job.chart_outcome",
        now,
        job_id=job.id,
        reason=reason,
        found_in_chart=found_in_chart,
        attention=attention,
    )
    return job


# --- Reconcile now ----------------------------------------------------------------------------


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


# --- Replay -----------------------------------------------------------------------------------


def can_apply_replay(state: str) -> bool:
    """Whether a delivery in this state may be replayed for real (a dry run always may):
    one already settled once is never applied again."""
    return state not in _SETTLED_ONCE


def replay_delivery(
    session: Session, staff: Staff, delivery_id: str, *, reason: str, dry_run: bool, now: datetime
) -> ReplayOut:
    """Apply a stored delivery again through today's code; a dry run reports and rolls back."""
    delivery = get_delivery(session, delivery_id, lock=True)
    if delivery.raw_body is None:
        raise Conflict("The delivery's body was purged after the retention period.")
    if not dry_run and not can_apply_replay(delivery.state):
        raise Conflict(f"The delivery is {delivery.state} already: there is nothing to replay.")
    payload = _parse(delivery.raw_body)
    state_before = delivery.state
    # The job it would settle, found as applying finds it (`match_job`: the same rules).
    job = _job_of(session, delivery.job_id) or match_job(session, delivery)
    status_before = job.status if job is not None else None
    savepoint = session.begin_nested()
    try:
        _apply_safely(session, delivery, payload, now)
        session.flush()
        job = _job_of(session, delivery.job_id) or job
        result = ReplayOut(
            delivery_id=delivery.id,
            dry_run=dry_run,
            state_before=state_before,
            state_after=delivery.state,
            state_detail=delivery.state_detail,
            job_id=job.id if job is not None else None,
            job_status_before=status_before,
            job_status_after=job.status if job is not None else None,
        )
    except BaseException:
        savepoint.rollback()
        raise
    if dry_run:
        savepoint.rollback()  # expires what the replay touched: later reads see the database
    else:
        savepoint.commit()
        if job is not None:
            add_event(
                session,
                job,
                "webhook_replayed",
                now,
                delivery_id=delivery.id,
                state=result.state_after,
                by=staff.name,
            )
    audit_staff(
        session,
        staff,
        "delivery.replay",
        now,
        job_id=result.job_id,
        delivery_id=result.delivery_id,
        reason=reason,
        dry_run=dry_run,
        state_before=state_before,
        state_after=result.state_after,
    )
    return result


def _job_of(session: Session, job_id: uuid.UUID | None) -> Job | None:
    return session.get(Job, job_id) if job_id is not None else None
