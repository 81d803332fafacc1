"""Sending jobs to Cobalt: claim a due job, then record what Cobalt said.

A claim is a lease (`claimed_until`), not a lock held across the HTTP call: if the worker
dies mid-call, the lease runs out and the job becomes `unknown`, because the request may
have reached Cobalt. It is then reconciled, never resent blindly.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from webhook_service.cobalt import Accepted, CobaltAmbiguous, CobaltRejected, CobaltTransient
from webhook_service.lifecycle import LOGIN_REQUIRED, JobStatus, Outcome, Submission
from webhook_service.models import Clinic, Job
from webhook_service.services.jobs import add_event, note_slot, settle
from webhook_service.services.webhooks import apply_parked_for

WAIT_FOR_SIBLING = timedelta(seconds=5)


@dataclass(frozen=True)
class Claim:
    """What a worker needs to make the call, copied out before the transaction ends."""

    job_id: uuid.UUID
    kind: str
    attempt: int
    clinic_id: int
    access_token: str
    knows_reference_id: bool
    body: dict[str, Any]


def claim_due_job(session: Session, *, now: datetime, lease: timedelta) -> Claim | None:
    """Take the next job whose submission is due, or None when nothing is due.

    `FOR UPDATE SKIP LOCKED` lets several workers claim different rows at once on
    PostgreSQL; on SQLite the transaction itself is exclusive (BEGIN IMMEDIATE).
    """
    candidates = session.scalars(
        select(Job)
        .where(
            Job.submission_state.in_([Submission.PENDING, Submission.WAITING, Submission.RETRYING]),
            Job.next_attempt_at <= now,
            Job.status == JobStatus.PROCESSING,
        )
        .order_by(Job.next_attempt_at)
        .limit(5)
        .with_for_update(skip_locked=True)
    ).all()
    for job in candidates:
        if not _take_note_slot(session, job, now):
            continue
        clinic = session.get(Clinic, job.clinic_id)
        assert clinic is not None  # foreign key
        job.submission_state = Submission.SENDING
        job.submit_attempts += 1
        job.claimed_until = now + lease
        job.next_attempt_at = None
        job.updated_at = now
        return Claim(
            job_id=job.id,
            kind=job.kind,
            attempt=job.submit_attempts,
            clinic_id=clinic.id,
            access_token=clinic.access_token,
            knows_reference_id=clinic.access_token_reference_id is not None,
            body=dict(job.request_body or {}),
        )
    return None


def _take_note_slot(session: Session, job: Job, now: datetime) -> bool:
    """Hold the note's (clinic, appointment) slot; if another note has it, wait our turn."""
    slot = note_slot(job)
    if slot is None or job.inflight_key == slot:
        return True
    holder = session.scalar(select(Job.id).where(Job.inflight_key == slot))
    if holder is None:
        try:
            with session.begin_nested():
                job.inflight_key = slot
                session.flush()
            return True
        except IntegrityError:  # another worker took the slot between our read and write
            holder = session.scalar(select(Job.id).where(Job.inflight_key == slot))
    if job.submission_state != Submission.WAITING:
        add_event(session, job, "submission_waiting", now, behind_job=str(holder))
        job.submission_state = Submission.WAITING
    job.next_attempt_at = now + WAIT_FOR_SIBLING
    return False


def _locked_job(session: Session, job_id: uuid.UUID) -> Job:
    return session.scalars(select(Job).where(Job.id == job_id).with_for_update()).one()


def record_accepted(session: Session, claim: Claim, reply: Accepted, now: datetime) -> None:
    """Cobalt took the request: keep its ids and apply any webhook that arrived first."""
    job = _locked_job(session, claim.job_id)
    job.submission_state = Submission.ACCEPTED
    job.claimed_until = None
    job.cobalt_job_id = job.cobalt_job_id or reply.job_id
    job.cobalt_telephone_encounter_id = (
        job.cobalt_telephone_encounter_id or reply.telephone_encounter_id
    )
    job.updated_at = now
    add_event(
        session,
        job,
        "submission_accepted",
        now,
        attempt=claim.attempt,
        status_code=reply.status_code,
        cobalt_job_id=reply.job_id,
        telephone_encounter_id=reply.telephone_encounter_id,
    )
    apply_parked_for(session, job, now)


def record_rejected(session: Session, claim: Claim, error: CobaltRejected, now: datetime) -> None:
    """Cobalt refused the request (4xx): the job fails with Cobalt's message."""
    job = _locked_job(session, claim.job_id)
    job.submission_state = Submission.REJECTED
    job.claimed_until = None
    job.updated_at = now
    add_event(
        session,
        job,
        "submission_rejected",
        now,
        attempt=claim.attempt,
        status_code=error.status_code,
        code=error.code,
    )
    if error.login_required:
        _flag_clinic(session, job, now)
    if job.status == JobStatus.PROCESSING:
        code = LOGIN_REQUIRED if error.login_required else "cobalt_rejected"
        settle(
            session,
            job,
            Outcome(
                status=JobStatus.FAILED,
                event="submission_rejected",
                detail={
                    "event": "submission_rejected",
                    "message": error.message,
                    "status_code": error.status_code,
                },
                error={"code": code, "message": error.message},
            ),
            now,
        )


def record_transient(
    session: Session,
    claim: Claim,
    error: CobaltTransient,
    now: datetime,
    *,
    retry_in: timedelta,
    max_attempts: int,
) -> None:
    """Cobalt certainly did not take it: retry later, or give up past the attempt limit."""
    job = _locked_job(session, claim.job_id)
    job.claimed_until = None
    job.updated_at = now
    detail: dict[str, Any] = {
        "attempt": claim.attempt,
        "status_code": error.status_code,
        "error": error.reason,
    }
    if claim.attempt >= max_attempts:
        job.submission_state = Submission.GAVE_UP
        add_event(session, job, "submission_gave_up", now, **detail)
        if job.status == JobStatus.PROCESSING:
            message = f"Cobalt could not be reached after {claim.attempt} attempts."
            settle(
                session,
                job,
                Outcome(
                    status=JobStatus.FAILED,
                    event="submission_gave_up",
                    detail={"event": "submission_gave_up", "message": message},
                    error={"code": "cobalt_unavailable", "message": message},
                ),
                now,
            )
        return
    job.submission_state = Submission.RETRYING
    job.next_attempt_at = now + retry_in
    add_event(
        session, job, "submission_retrying", now, retry_at=job.next_attempt_at.isoformat(), **detail
    )


def record_ambiguous(session: Session, claim: Claim, error: CobaltAmbiguous, now: datetime) -> None:
    """The request may have reached Cobalt: mark it unknown; it is never resent blindly."""
    job = _locked_job(session, claim.job_id)
    job.claimed_until = None
    job.updated_at = now
    if job.submission_state == Submission.SENDING:
        job.submission_state = Submission.UNKNOWN
    add_event(session, job, "submission_unknown", now, attempt=claim.attempt, error=error.reason)


def expire_claims(session: Session, now: datetime) -> int:
    """Jobs whose worker vanished mid-call become `unknown`: Cobalt may have them."""
    jobs = session.scalars(
        select(Job)
        .where(Job.submission_state == Submission.SENDING, Job.claimed_until < now)
        .with_for_update(skip_locked=True)
    ).all()
    for job in jobs:
        job.submission_state = Submission.UNKNOWN
        job.claimed_until = None
        job.updated_at = now
        add_event(session, job, "claim_expired", now, attempt=job.submit_attempts)
    return len(jobs)


def _flag_clinic(session: Session, job: Job, now: datetime) -> None:
    clinic = session.get(Clinic, job.clinic_id)
    if clinic is not None and not clinic.needs_relink:
        clinic.needs_relink = True
        clinic.updated_at = now
    add_event(session, job, "clinic_login_required", now, clinic_id=job.clinic_id)


def learn_reference_id(session: Session, clinic_id: int, reference_id: str, now: datetime) -> None:
    """Remember which `access_token_reference_id` a clinic's webhooks will carry."""
    clinic = session.get(Clinic, clinic_id)
    if clinic is None or clinic.access_token_reference_id == reference_id:
        return
    taken = session.scalar(
        select(Clinic.id).where(Clinic.access_token_reference_id == reference_id)
    )
    if taken is None:
        clinic.access_token_reference_id = reference_id
        clinic.updated_at = now
