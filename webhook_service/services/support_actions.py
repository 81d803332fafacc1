"""Support staff's actions: retry a failed job, record what the chart shows (reconcile now
and replay are `support_reconcile`'s and `support_replay`'s).

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
from sqlalchemy import select
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
from webhook_service.schemas import NoteRequest, TelephoneEncounterRequest
from webhook_service.services.jobs import add_event, settle, submit_job
from webhook_service.services.support import Staff, audit_staff

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
