"""Sending jobs to Cobalt: claim a due job (`claims`), then record what Cobalt said (here).

A claim is a lease (`claimed_until`), not a lock held across the HTTP call: if the worker
dies mid-call, the lease runs out and the job becomes `unknown`, because the request may
have reached Cobalt. It is then reconciled, never resent blindly.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    String,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.orm import Session, defer

from webhook_service.cobalt import Accepted, CobaltAmbiguous, CobaltRejected, CobaltTransient
from webhook_service.lifecycle import COBALT_UNAVAILABLE, JobStatus, Outcome, Submission
from webhook_service.models import Clinic, Job, UTCDateTime
from webhook_service.services.claims import Claim
from webhook_service.services.jobs import INSERT_EVENT, JOBS, add_event, settle
from webhook_service.services.parking import apply_parked_for


def _locked_job(session: Session, job_id: uuid.UUID) -> Job:
    # Recording an answer never reads the request body: leave it encrypted and unread.
    query = select(Job).where(Job.id == job_id).with_for_update().options(defer(Job.request_body))
    return session.scalars(query).one()


def record_accepted(session: Session, claim: Claim, reply: Accepted, now: datetime) -> None:
    """Cobalt took the request: keep its ids and apply any webhook that arrived first."""
    # One UPDATE … RETURNING and one INSERT (Core): the row lock is the UPDATE's own, and no
    # ORM object is loaded or flushed. Ids already learned (from an early webhook) are kept.
    connection = session.connection()
    row = connection.execute(
        _ACCEPTED,
        {
            "job": claim.job_id,
            "reply_job_id": reply.job_id,
            "reply_encounter_id": reply.telephone_encounter_id,
            "now": now,
        },
    ).one()
    connection.execute(
        INSERT_EVENT,
        {
            "job_id": claim.job_id,
            "at": now,
            "type": "submission_accepted",
            "detail": {
                "attempt": claim.attempt,
                "status_code": reply.status_code,
                "cobalt_job_id": reply.job_id,
                "telephone_encounter_id": reply.telephone_encounter_id,
            },
        },
    )
    # Only the ids are read from the job here (to find parked deliveries for it).
    ids = Job(
        id=claim.job_id,
        cobalt_job_id=row.cobalt_job_id,
        cobalt_telephone_encounter_id=row.cobalt_telephone_encounter_id,
    )
    apply_parked_for(session, ids, now)


_ACCEPTED = (
    update(JOBS)
    .where(JOBS.c.id == bindparam("job"))
    .values(
        submission_state=Submission.ACCEPTED,
        claimed_until=None,
        cobalt_job_id=func.coalesce(JOBS.c.cobalt_job_id, bindparam("reply_job_id", type_=String)),
        cobalt_telephone_encounter_id=func.coalesce(
            JOBS.c.cobalt_telephone_encounter_id,
            bindparam("reply_encounter_id", type_=String),
        ),
        updated_at=bindparam("now", type_=UTCDateTime()),
    )
    .returning(JOBS.c.cobalt_job_id, JOBS.c.cobalt_telephone_encounter_id)
)


def record_rejected(session: Session, claim: Claim, error: CobaltRejected, now: datetime) -> None:
    """Cobalt refused the request: the job fails with Cobalt's message and the code (and
    request field) recognised from its answer."""
    job = _locked_job(session, claim.job_id)
    job.submission_state = Submission.REJECTED
    job.claimed_until = None
    job.updated_at = now
    rejection = error.rejection
    add_event(
        session,
        job,
        "submission_rejected",
        now,
        attempt=claim.attempt,
        status_code=error.status_code,
        code=rejection.code,
    )
    if error.login_required:
        _flag_clinic(session, job, now)
    if job.status == JobStatus.PROCESSING:
        detail: dict[str, Any] = {
            "event": "submission_rejected",
            "message": error.message,
            "status_code": error.status_code,
        }
        if rejection.available_medications is not None:
            # As the webhook form of "medication not found" does: what could be refilled.
            detail["available_medications"] = rejection.available_medications
        failure = {"code": rejection.code, "message": error.message}
        if rejection.field is not None:
            failure["field"] = rejection.field
        settle(
            session,
            job,
            Outcome(
                status=JobStatus.FAILED,
                event="submission_rejected",
                detail=detail,
                error=failure,
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
                    error={"code": COBALT_UNAVAILABLE, "message": message},
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
    add_event(
        session,
        job,
        "submission_unknown",
        now,
        attempt=claim.attempt,
        status_code=error.status_code,
        error=error.reason,
    )


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
