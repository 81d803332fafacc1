"""Jobs: create one from a front end's request, read it back, settle it, write its timeline."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from sqlalchemy import (
    Connection,
    LargeBinary,
    Table,
    bindparam,
    insert,
    select,
    type_coerce,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from webhook_service import phi
from webhook_service.errors import IdempotencyKeyReused, NotFound
from webhook_service.lifecycle import JobKind, JobStatus, Outcome, Submission, attention_message
from webhook_service.models import ApiClient, Clinic, Job, JobEvent, UTCDateTime
from webhook_service.phi import idempotency_key_hash, search_hash
from webhook_service.schemas import JobOut, NoteRequest, TelephoneEncounterRequest
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


# What a poll renders: every column of the job resource, nothing else (no request body).
# The two encrypted ones are read as stored and decrypted only for a 200.
RESOURCE_COLUMNS = (
    Job.id,
    Job.client_id,
    Job.kind,
    Job.status,
    Job.created_at,
    Job.updated_at,
    Job.finished_at,
    Job.cobalt_job_id,
    Job.cobalt_telephone_encounter_id,
    Job.error_code,
    Job.submission_state,
    Job.submit_attempts,
    Job.next_attempt_at,
    Job.purged_at,
    Job.error_field,
    Job.attention_code,
    Job.attention_since,
    Job.retried_as,
)
_RAW_OUTCOME = type_coerce(JOBS.c.outcome_enc, LargeBinary).label("outcome_raw")
_RAW_ERROR = type_coerce(JOBS.c.error_message_enc, LargeBinary).label("error_raw")
# Built once: a poll runs it on the session's connection (Core), with only the id bound.
_POLL_QUERY = select(*RESOURCE_COLUMNS, _RAW_OUTCOME, _RAW_ERROR).where(Job.id == bindparam("id"))
# What changes a job's ETag, and what is a change pushed to front ends (a row of
# `job_changes`, written by migration 0017's triggers when one of these differs): its status
# and outcome (`finished_at` and `error_code` move with every settling, the outcome with them
# or with `purged_at`), whether it needs a person, whether support retried it. The submission's
# progress (state, attempts, next attempt, Cobalt ids) and `updated_at` are in the resource but
# do not change the ETag: a front end does nothing with them, and a long poll woken by each
# of them would cost requests (README, "Push").
CHANGE_COLUMNS = (
    Job.status,
    Job.finished_at,
    Job.error_code,
    Job.attention_code,
    Job.retried_as,
    Job.purged_at,
)
_CHANGE_KEYS = tuple(column.key for column in CHANGE_COLUMNS)
_ETAG_VERSION = "3"  # bump when the job resource's shape or CHANGE_COLUMNS change


@dataclass(frozen=True)
class Polled:
    """A job as a poll reads it: its ETag, and what a 200 needs to render it."""

    etag: str
    status: str
    row: Any  # a Row of RESOURCE_COLUMNS, outcome_raw, error_raw

    def view(self) -> JobOut:
        """The job resource (decrypts the outcome and error here, for a 200 only)."""
        return JobOut.model_validate(job_fields(_PolledColumns(self.row)))


class _PolledColumns:
    """A poll's row as `JobColumns`: its plain columns as read, the encrypted two decrypted.

    (A transient `Job` built from the row cost a tenth of a poll's CPU in instrumentation.)
    """

    __slots__ = ("_row", "error_message", "outcome")

    def __init__(self, row: Any) -> None:
        self._row = row
        outcome, error = row.outcome_raw, row.error_raw
        self.outcome = None if outcome is None else json.loads(phi.decrypt(outcome))
        self.error_message = None if error is None else phi.decrypt(error).decode("utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name)


def poll_job(connection: Connection, job_id: str, client: ApiClient) -> Polled:
    """Read a job for a poll in one indexed query, without decrypting anything yet.

    Same visibility as `get_job`: another front end's job is "not found".
    """
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        raise NotFound(f"No job with id {job_id!r}.") from None
    row = connection.execute(_POLL_QUERY, {"id": key}).one_or_none()
    if row is None or (client.role != "support" and row.client_id != client.id):
        raise NotFound(f"No job with id {job_id!r}.")
    return polled(row)


def polled(row: Any) -> Polled:
    """A row of the resource's columns (and the raw outcome and error) as a poll renders it:
    the job's row, or one of its changes (`services/changes.py`)."""
    etag = job_etag(*(getattr(row, key) for key in _CHANGE_KEYS))
    return Polled(etag=etag, status=row.status, row=row)


def etag_of(job: JobColumns) -> str:
    """The ETag of a job resource; the same as `poll_job` gives for the stored job."""
    return job_etag(*(getattr(job, key) for key in _CHANGE_KEYS))


def job_etag(*values: object) -> str:
    """A (weak) ETag from the job's CHANGE_COLUMNS, in order.

    The encrypted columns (outcome, error message) change only with `finished_at` or
    `purged_at`, so equal change columns mean the same job for a front end: a 304 needs
    neither decryption nor rendering. Weak: the submission's progress may differ.
    """
    text = "|".join([_ETAG_VERSION, *(_etag_part(value) for value in values)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _etag_part(value: object) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return "" if value is None else str(value)


def can_see(client: ApiClient, job: Job) -> bool:
    return client.role == "support" or job.client_id == client.id


def job_view(job: JobColumns) -> JobOut:
    """The job resource front ends poll."""
    return JobOut.model_validate(job_fields(job))


class JobColumns(Protocol):
    """The columns the job resource is rendered from (read only): a `Job`, a row that
    selected them, or a `NewJob`."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def client_id(self) -> int | None: ...
    @property
    def kind(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...
    @property
    def finished_at(self) -> datetime | None: ...
    @property
    def cobalt_job_id(self) -> str | None: ...
    @property
    def cobalt_telephone_encounter_id(self) -> str | None: ...
    @property
    def outcome(self) -> dict[str, Any] | None: ...
    @property
    def error_code(self) -> str | None: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def submission_state(self) -> str: ...
    @property
    def submit_attempts(self) -> int: ...
    @property
    def next_attempt_at(self) -> datetime | None: ...
    @property
    def purged_at(self) -> datetime | None: ...
    @property
    def error_field(self) -> str | None: ...
    @property
    def attention_code(self) -> str | None: ...
    @property
    def attention_since(self) -> datetime | None: ...
    @property
    def retried_as(self) -> uuid.UUID | None: ...


def job_fields(job: JobColumns) -> dict[str, Any]:
    """The job resource's fields, for `JobOut` and the resources that extend it.

    Plain values, nested objects as dicts: the resource is validated once, in one call
    (a page of 50 jobs is one validation, not 200 model constructors).
    """
    error = None
    if job.error_code is not None:
        error = {
            "code": job.error_code,
            "message": job.error_message or "",
            "field": job.error_field,
        }
    attention = None
    if job.attention_code is not None:
        attention = {
            "code": job.attention_code,
            "message": attention_message(job.attention_code),
            "since": job.attention_since,
        }
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "finished_at": job.finished_at,
        "cobalt": {
            "job_id": job.cobalt_job_id,
            "telephone_encounter_id": job.cobalt_telephone_encounter_id,
        },
        "outcome": job.outcome,
        "error": error,
        "submission": {
            "state": job.submission_state,
            "attempts": job.submit_attempts,
            "next_attempt_at": job.next_attempt_at if job.submission_state in _DUE_STATES else None,
        },
        "attention": attention,
        "retried_as": job.retried_as,
        "purged_at": job.purged_at,
    }


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
