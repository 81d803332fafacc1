"""The job resource front ends poll: the columns it is rendered from, a poll's one query, its
ETag, and its fields.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Connection, LargeBinary, bindparam, select, type_coerce

from webhook_service import phi
from webhook_service.errors import NotFound
from webhook_service.lifecycle import attention_message
from webhook_service.models import ApiClient, Job
from webhook_service.schemas import JobOut
from webhook_service.services.jobs import _DUE_STATES, JOBS

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
