"""Claiming a due job for the worker to send: one at a time, in claim order, with a lease
(`claimed_until`), and one note per (clinic, appointment) at Cobalt at once.
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
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, defer

from webhook_service.lifecycle import JobKind, Submission
from webhook_service.models import DUE_PREDICATE, Clinic, Job, UTCDateTime
from webhook_service.services.jobs import add_event, note_slot

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
