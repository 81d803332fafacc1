"""Jobs: create one from a front end's request, find it, settle it, write its timeline (the
resource a poll reads and renders is `job_views`')."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from webhook_service.errors import IdempotencyKeyReused, NotFound
from webhook_service.lifecycle import JobKind, JobStatus, Outcome, Submission
from webhook_service.models import ApiClient, Clinic, Job, JobEvent, UTCDateTime
from webhook_service.phi import idempotency_key_hash, search_hash
from webhook_service.schemas import NoteRequest, TelephoneEncounterRequest
from webhook_service.settings import Settings

DEFAULT_CLINIC = "default"


def default_clinic(session: Session, settings: Settings, now: datetime) -> Clinic:
    """Return the clinic behind `COBALT_ACCESS_TOKEN`, creating it on first use."""
    clinic = session.scalar(select(Clinic).where(Clinic.name == DEFAULT_CLINIC))
    if clinic is not None:
        if settings.cobalt_access_token and clinic.access_token != settings.cobalt_access_token:
            # A new token may be a different EMR login: learn its reference id again.
            clinic.access_token = settings.cobalt_access_token
            clinic.access_token_reference_id = None
            clinic.needs_relink = False
            clinic.linked_at = now
            clinic.updated_at = now
        return clinic
    clinic = Clinic(
        name=DEFAULT_CLINIC,
        access_token=settings.cobalt_access_token,
        needs_relink=False,
        linked_at=now,
        created_at=now,
        updated_at=now,
    )
    try:
        with session.begin_nested():
            session.add(clinic)
    except IntegrityError:  # another process created it first
        return session.scalars(select(Clinic).where(Clinic.name == DEFAULT_CLINIC)).one()
    return clinic


def clinic_for(session: Session, client: ApiClient, settings: Settings, now: datetime) -> Clinic:
    """The clinic a front end submits for: its own, or the default clinic."""
    if client.clinic_id is not None:
        clinic = session.get(Clinic, client.clinic_id)
        if clinic is not None:
            return clinic
    return default_clinic(session, settings, now)


def submit_job(
    session: Session,
    *,
    request: NoteRequest | TelephoneEncounterRequest,
    clinic: Clinic,
    client: ApiClient | None,
    idempotency_key: str | None,
    now: datetime,
) -> tuple[Job, bool]:
    """Store a validated request as a job waiting to be sent; return it and whether it is new.

    With an idempotency key, the same key and body return the first job; the same key with a
    different body is refused. The unique constraint, not the lookup, is the guard.
    """
    values = _new_job_values(request, clinic.id, client, idempotency_key, now)
    client_id = values["client_id"]
    if idempotency_key is not None:
        existing = _job_for_key(session, client_id, idempotency_key)
        if existing is not None:
            return _replay(existing, values["request_hash"]), False
    job = Job(**values)
    try:
        with session.begin_nested():
            session.add(job)
            add_event(session, job, "created", now, kind=job.kind)
    except IntegrityError:
        if idempotency_key is None:
            raise
        existing = _job_for_key(session, client_id, idempotency_key)
        if existing is None:
            raise
        return _replay(existing, values["request_hash"]), False
    return job, True


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job `accept_job` has just written, as its 202 renders it: the resource's columns as
    inserted, and the ones a new job leaves empty. (A transient `Job` did the same through
    the ORM's attribute instrumentation, on every submission.)"""

    id: uuid.UUID
    client_id: int
    kind: str
    status: str
    created_at: datetime
    updated_at: datetime
    submission_state: str
    submit_attempts: int
    next_attempt_at: datetime
    finished_at: None = None
    cobalt_job_id: None = None
    cobalt_telephone_encounter_id: None = None
    outcome: None = None
    error_code: None = None
    error_message: None = None
    error_field: None = None
    attention_code: None = None
    attention_since: None = None
    retried_as: None = None
    purged_at: None = None


def accept_job(
    connection: Connection,
    *,
    request: NoteRequest | TelephoneEncounterRequest,
    clinic_id: int,
    client: ApiClient,
    now: datetime,
) -> NewJob:
    """A front end's submission without an `Idempotency-Key`: `submit_job` in two INSERTs.

    With no key there is no unique violation to catch, so no savepoint, no ORM session and
    no unit-of-work flush: the job and its `created` line are written with Core statements,
    and what is returned is a `NewJob` (for the answer only).
    """
    values = _new_job_values(request, clinic_id, client, None, now)
    # Statements built once, parameters per call: no per-request statement construction,
    # and SQLAlchemy's compiled cache is hit by the same object every time.
    connection.execute(_INSERT_JOB, {_COLUMN_OF.get(k, k): v for k, v in values.items()})
    connection.execute(
        INSERT_EVENT,
        {"job_id": values["id"], "at": now, "type": "created", "detail": {"kind": values["kind"]}},
    )
    # Every column from the values just inserted, so the answer cannot drift from the row.
    return NewJob(
        id=values["id"],
        client_id=values["client_id"],
        kind=values["kind"],
        status=values["status"],
        created_at=values["created_at"],
        updated_at=values["updated_at"],
        submission_state=values["submission_state"],
        submit_attempts=values["submit_attempts"],
        next_attempt_at=values["next_attempt_at"],
    )


_COLUMN_OF = {"request_body": "request_body_enc"}  # attribute → column, where they differ
# The jobs table for Core statements (the services' prebuilt UPDATEs and INSERTs share it).
JOBS = cast(Table, Job.__table__)
_JOB_EVENTS = cast(Table, JobEvent.__table__)
_INSERT_JOB = insert(JOBS)
# `inline()`: no `RETURNING job_events.id`. Nothing reads a timeline line's id back, and
# the returned row cost every submission, webhook and claim a result set to process.
INSERT_EVENT = insert(_JOB_EVENTS).inline()


def _new_job_values(
    request: NoteRequest | TelephoneEncounterRequest,
    clinic_id: int,
    client: ApiClient | None,
    idempotency_key: str | None,
    now: datetime,
) -> dict[str, Any]:
    body = request.model_dump(mode="json", exclude_none=True)
    kind = JobKind.NOTE if isinstance(request, NoteRequest) else JobKind.TELEPHONE_ENCOUNTER
    return {
        "id": uuid.uuid4(),
        "kind": str(kind),
        "status": str(JobStatus.PROCESSING),
        "clinic_id": clinic_id,
        "request_body": body,
        "request_hash": _hash_body(body),
        "idempotency_key": None
        if idempotency_key is None
        else idempotency_key_hash(idempotency_key),
        "client_id": client.id if client is not None else None,
        "appointment_hash": search_hash(
            request.appointment_id if isinstance(request, NoteRequest) else None
        ),
        "patient_mrn_hash": search_hash(
            request.patient_mrn if isinstance(request, TelephoneEncounterRequest) else None
        ),
        "submission_state": str(Submission.PENDING),
        "submit_attempts": 0,
        "next_attempt_at": now,
        "flagged": False,
        "created_at": now,
        "updated_at": now,
    }


def _job_for_key(session: Session, client_id: int | None, key: str) -> Job | None:
    # The plain key too: a row the previous release wrote while this one was deploying.
    stored = (idempotency_key_hash(key), key)
    return session.scalar(
        select(Job).where(Job.client_id == client_id, Job.idempotency_key.in_(stored)).limit(1)
    )


def _replay(job: Job, body_hash: str) -> Job:
    if job.request_hash != body_hash:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was already used with a different request body. "
            "Use a new key for a new request."
        )
    return job


def _hash_body(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def get_job(session: Session, job_id: str, client: ApiClient | None = None) -> Job:
    """Return the job with this id, or raise NotFound (also for ids that are not UUIDs).

    A front-end client sees only the jobs it created: any other id is "not found", so a
    client cannot learn that another client's job exists.
    """
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        raise NotFound(f"No job with id {job_id!r}.") from None
    job = session.get(Job, key)
    if job is None or (client is not None and not can_see(client, job)):
        raise NotFound(f"No job with id {job_id!r}.")
    return job


def can_see(client: ApiClient, job: Job) -> bool:
    return client.role == "support" or job.client_id == client.id


_DUE_STATES = {Submission.PENDING, Submission.WAITING, Submission.RETRYING}


def add_event(session: Session, job: Job, type_: str, now: datetime, **detail: Any) -> None:
    """Append one line to the job's timeline (ids and statuses only, never PHI)."""
    session.add(JobEvent(job_id=job.id, at=now, type=type_, detail=detail))


def settle(session: Session, job: Job, outcome: Outcome, now: datetime) -> None:
    """Move a job to its terminal status and let a waiting note for its appointment go."""
    for key, value in settled_values(outcome, now, job.submission_state).items():
        setattr(job, key, value)
    release_appointment(session, job, now)


def settled_values(outcome: Outcome, now: datetime, submission_state: str) -> dict[str, Any]:
    """What settling writes to a job (by attribute), whether through the ORM or one UPDATE."""
    values: dict[str, Any] = {
        "status": outcome.status,
        "outcome": outcome.detail,
        "error_code": outcome.error["code"] if outcome.error else None,
        "error_message": outcome.error["message"] if outcome.error else None,
        "error_field": outcome.error.get("field") if outcome.error else None,
        "finished_at": now,
        "updated_at": now,
        "next_attempt_at": None,
        "claimed_until": None,
        # A settled job no longer needs a person to find out what happened.
        "attention_code": None,
        "attention_since": None,
        # The outcome just written is PHI, to be purged `retention` after `finished_at` like
        # any other: a job purged before it settled (one migration 0010 reopened) is due again.
        "purged_at": None,
    }
    if submission_state in _DUE_STATES:
        # Settled before it was ever sent (e.g. by staff): nothing will be sent now.
        values["submission_state"] = Submission.REJECTED
    return values


def release_appointment(session: Session, job: Job, now: datetime) -> None:
    """Free the (clinic, appointment) slot this note held, and wake the next note waiting."""
    if job.inflight_key is None:
        return
    job.inflight_key = None
    session.flush()
    wake_waiting_notes(session.connection(), job.clinic_id, job.appointment_hash, now)


def wake_waiting_notes(
    connection: Connection, clinic_id: int, appointment_hash: str | None, now: datetime
) -> None:
    """Make the notes waiting behind a settled note for (clinic, appointment) due now."""
    connection.execute(
        _WAKE_WAITING, {"clinic": clinic_id, "appointment": appointment_hash, "now": now}
    )


_WAKE_WAITING = (
    update(JOBS)
    .where(
        JOBS.c.submission_state == Submission.WAITING,
        # (A bound parameter may not be named after a column of the table it updates.)
        JOBS.c.clinic_id == bindparam("clinic"),
        JOBS.c.appointment_hash == bindparam("appointment"),
    )
    .values(next_attempt_at=bindparam("now", type_=UTCDateTime()))
)


def note_slot(job: Job) -> str | None:
    """The key that allows one note per (clinic, appointment) at Cobalt at a time."""
    if job.kind != JobKind.NOTE or job.appointment_hash is None:
        return None
    return f"{job.clinic_id}:{job.appointment_hash}"
