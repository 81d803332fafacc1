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

from sqlalchemy import (
    String,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, defer

from webhook_service.cobalt import Accepted, CobaltAmbiguous, CobaltRejected, CobaltTransient
from webhook_service.lifecycle import COBALT_UNAVAILABLE, JobKind, JobStatus, Outcome, Submission
from webhook_service.models import DUE_PREDICATE, Clinic, Job, UTCDateTime
from webhook_service.services.jobs import INSERT_EVENT, JOBS, add_event, note_slot, settle
from webhook_service.services.parking import apply_parked_for

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
    if session.get_bind().dialect.name == "postgresql":
        claimed = _claim_in_one_statement(session, now=now, lease=lease)
        if claimed is not None:
            return claimed
    candidates = session.scalars(
        select(Job)
        .where(text(DUE_PREDICATE), Job.next_attempt_at <= now)
        .order_by(*_claim_order(session))
        .limit(5)
        .with_for_update(skip_locked=True)
        # Only the claimed job's request body is read (and decrypted), below.
        .options(defer(Job.request_body), defer(Job.outcome), defer(Job.error_message))
    ).all()
    for job in candidates:
        if not _take_note_slot(session, job, now):
            continue
        job.submission_state = Submission.SENDING
        job.submit_attempts += 1
        job.claimed_until = now + lease
        job.next_attempt_at = None
        job.updated_at = now
        return _claim(
            session, job.id, job.kind, job.submit_attempts, job.clinic_id, job.request_body
        )
    return None


def _claim_order(session: Session) -> list[Any]:
    """Due first; on SQLite, equally due jobs first come, first served.

    SQLite (no planner statistics) may read the due jobs through another index and sort
    them, and its sort leaves ties in no set order; its rowid is the arrival order.
    """
    if session.get_bind().dialect.name == "sqlite":
        return [Job.next_attempt_at, literal_column("jobs.rowid")]
    return [Job.next_attempt_at]


def _claim_in_one_statement(session: Session, *, now: datetime, lease: timedelta) -> Claim | None:
    """PostgreSQL: claim the next due job, and its note slot, with one UPDATE … RETURNING.

    Returns the claim, or None when the general path must decide: nothing was free to take
    here, or a note's slot turned out to be held by another note (the general path makes
    such a note wait its turn).

    A note whose slot is visibly held is never taken here: writing its slot would wait on
    the unique index for the holder's transaction, and if that transaction settles the
    holder and then wakes the waiting notes (whose row this claim has locked), the two
    would deadlock. The general path reads the holder instead of waiting for it.
    """
    try:
        with session.begin_nested():
            # On the session's connection: a Core statement, not the ORM's bulk-update path.
            row = (
                session.connection()
                .execute(_CLAIM_NEXT, {"now": now, "claimed_until": now + lease})
                .one_or_none()
            )
    except IntegrityError:  # the appointment's slot is held by another note
        return None
    if row is None:
        return None
    claim = Claim(
        job_id=row.id,
        kind=row.kind,
        attempt=row.submit_attempts,
        clinic_id=row.clinic_id,
        access_token=row.access_token,
        knows_reference_id=row.access_token_reference_id is not None,
        body=dict(row.request_body or {}),
    )
    return claim


def _claim_next_statement() -> Any:
    """The statement `_claim_in_one_statement` runs, built once: its two aliases of `jobs`
    cost more to build than the claim costs to run."""
    candidate, holder = aliased(Job), aliased(Job)
    slot_of = sa_cast(candidate.clinic_id, String) + ":" + candidate.appointment_hash
    slot_free = or_(
        candidate.kind != JobKind.NOTE,
        candidate.appointment_hash.is_(None),
        candidate.inflight_key.is_not(None),
        ~exists().where(holder.inflight_key == slot_of).correlate(candidate),
    )
    now = bindparam("now", type_=UTCDateTime())
    due = (
        select(candidate.id)
        .where(text(DUE_PREDICATE), candidate.next_attempt_at <= now, slot_free)
        .order_by(candidate.next_attempt_at)
        .limit(1)
        .with_for_update(skip_locked=True, of=candidate)
        .scalar_subquery()
    )
    slot = case(
        (
            and_(Job.kind == JobKind.NOTE, Job.appointment_hash.is_not(None)),
            sa_cast(Job.clinic_id, String) + ":" + Job.appointment_hash,
        ),
        else_=Job.inflight_key,
    )
    return (
        update(Job)
        .where(Job.id == due, Clinic.id == Job.clinic_id)  # UPDATE … FROM clinics
        .values(
            submission_state=Submission.SENDING,
            submit_attempts=Job.submit_attempts + 1,
            claimed_until=bindparam("claimed_until", type_=UTCDateTime()),
            next_attempt_at=None,
            updated_at=now,
            inflight_key=slot,
        )
        .returning(
            Job.id,
            Job.kind,
            Job.submit_attempts,
            Job.clinic_id,
            Job.request_body.label("request_body"),  # column names differ: *_enc
            Clinic.access_token.label("access_token"),
            Clinic.access_token_reference_id,
        )
    )


_CLAIM_NEXT = _claim_next_statement()


def _claim(
    session: Session,
    job_id: uuid.UUID,
    kind: str,
    attempt: int,
    clinic_id: int,
    body: dict[str, Any] | None,
) -> Claim:
    clinic = session.get(Clinic, clinic_id)
    assert clinic is not None  # foreign key
    return Claim(
        job_id=job_id,
        kind=kind,
        attempt=attempt,
        clinic_id=clinic.id,
        access_token=clinic.access_token,
        knows_reference_id=clinic.access_token_reference_id is not None,
        body=dict(body or {}),
    )


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
