"""The front ends' API: submit notes and telephone encounters, poll jobs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection

from webhook_service import services
from webhook_service.errors import (
    FieldError,
    MalformedJSON,
    UnsupportedMediaType,
    ValidationFailed,
)
from webhook_service.http import push
from webhook_service.http.auth import current_client, require
from webhook_service.http.context import (
    read_body,
    read_connection,
    request_transaction,
    settings,
    utcnow,
    write_connection,
)
from webhook_service.http.openapi import build_spec
from webhook_service.http.poll_cache import Entry, PollCache, Ticket
from webhook_service.http.reference import check_submission, with_preflight
from webhook_service.lifecycle import TERMINAL, JobStatus
from webhook_service.models import ApiClient
from webhook_service.schemas import NoteRequest, TelephoneEncounterRequest, field_errors
from webhook_service.services.job_views import JobColumns

bp = Blueprint("api", __name__)

MAX_IDEMPOTENCY_KEY = 255
BACKLOG_COUNT_TTL = timedelta(seconds=1)
BACKLOG_RETRY_AFTER = 10
_spec: dict[str, Any] | None = None


@bp.post("/v1/notes")
@require("frontend")
def submit_note() -> Response:
    """Accept a note for the EMR and answer with its job."""
    return _submit(NoteRequest)


@bp.post("/v1/telephone-encounters")
@require("frontend")
def submit_telephone_encounter() -> Response:
    """Accept a telephone encounter for the EMR and answer with its job."""
    return _submit(TelephoneEncounterRequest)


def _submit(model: type[NoteRequest] | type[TelephoneEncounterRequest]) -> Response:
    body = _json_body()
    key, errors = _idempotency_key()
    validated: BaseModel | None = None
    try:
        validated = model.model_validate(body)
    except ValidationError as exc:
        errors = field_errors(exc) + errors
    if errors:
        raise ValidationFailed("The request has invalid fields; see `errors`.", errors)
    assert isinstance(validated, NoteRequest | TelephoneEncounterRequest)
    request_ = validated
    return with_preflight(lambda may_refresh: _store(request_, key, may_refresh=may_refresh))


def _store(
    validated: NoteRequest | TelephoneEncounterRequest, key: str | None, *, may_refresh: bool
) -> Response:
    """Store the submission as a job and answer 202, in one transaction that the pre-flight
    check (telephone encounters) can still refuse, so a refused request stores nothing."""
    client = current_client()
    now = utcnow()
    extension = current_app.extensions["webhook_service"]
    clinic_id = extension["default_clinic_id"] if client.clinic_id is None else None
    job: JobColumns
    created = True
    if key is None and clinic_id is not None:
        # The common case: two INSERTs on one pooled connection, no ORM session.
        with write_connection() as connection:
            _check_limits(connection, client.id, now)
            job = services.accept_job(
                connection, request=validated, clinic_id=clinic_id, client=client, now=now
            )
            check_submission(connection, clinic_id, validated, now, may_refresh=may_refresh)
    else:
        with request_transaction() as session:
            _check_limits(session.connection(), client.id, now)
            clinic = services.clinic_for(session, client, settings(), now)
            if key is None:
                job = services.accept_job(
                    session.connection(),
                    request=validated,
                    clinic_id=clinic.id,
                    client=client,
                    now=now,
                )
            else:
                job, created = services.submit_job(
                    session,
                    request=validated,
                    clinic=clinic,
                    client=client,
                    idempotency_key=key,
                    now=now,
                )
            if created:  # a replay is the first answer again, whatever the lists say now
                check_submission(
                    session.connection(), clinic.id, validated, now, may_refresh=may_refresh
                )
        if client.clinic_id is None:
            # Committed, so it exists: later submissions skip reading (and decrypting) it.
            extension["default_clinic_id"] = clinic.id
    # Rendered from what was written (a committed `Job` keeps its loaded columns).
    response = _job_response(job, status=202)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _check_limits(connection: Connection, client_id: int, now: datetime) -> None:
    """Refuse a submission while the backlog is full (503) or over the client's rate (429).

    First in the submission's transaction: a refusal costs no INSERT, and the rate counter's
    bump commits (or rolls back) with the job it counted.
    """
    config = settings()
    if config.backlog_max_jobs:
        services.check_backlog(
            _waiting_jobs(connection, now),
            limit=config.backlog_max_jobs,
            retry_after=BACKLOG_RETRY_AFTER,
        )
    services.count_submission(
        connection, client_id, limit=config.rate_limit_submissions_per_minute, now=now
    )


def _waiting_jobs(connection: Connection, now: datetime) -> int:
    # Counted at most once a second per process: a count scans the due-jobs index, and a cap
    # a second stale lets at most a second's submissions past it.
    extension = current_app.extensions["webhook_service"]
    counted_at, waiting = extension.get("backlog", (None, 0))
    if counted_at is None or not timedelta(0) <= now - counted_at < BACKLOG_COUNT_TTL:
        waiting = services.waiting_jobs(connection)
        extension["backlog"] = (now, waiting)
    return int(waiting)


@bp.get("/v1/jobs/<job_id>")
@require("frontend", "support")
def get_job(job_id: str) -> Response:
    """Return a job; 304 when the caller's ETag is still current (after holding the answer
    while it is, with `Prefer: wait`: the long poll, http/push.py)."""
    client = current_client()
    waited = push.hold_poll(job_id, client)
    return push.preference_applied(_poll(job_id, client), waited)


def _poll(job_id: str, client: ApiClient) -> Response:
    ticket: Ticket | None = None
    cache: PollCache | None = current_app.extensions["webhook_service"]["poll_cache"]
    if client.role == "support":
        with request_transaction() as session:
            polled = services.poll_job(session.connection(), job_id, client)
            # Staff reading a job's outcome may read PHI: every such read is audited.
            services.audit(
                session, client=client, action="job.read", job_id=polled.row.id, now=utcnow()
            )
    else:
        key = _job_key(job_id) if cache is not None else None
        if cache is not None and key is not None:
            # PostgreSQL: what this process read, while its listener vouches nothing changed.
            entry = cache.get(key)
            if entry is not None and entry.client_id == client.id:
                if request.if_none_match.contains_weak(entry.etag):
                    return _not_modified(entry.etag, entry.status)
                if entry.body is not None:
                    return _job_body(entry.body, entry.etag, entry.status)
            ticket = cache.ticket()  # None until the listener (started by wsgi.py) vouches
        # A front end's poll only reads: no ORM session, one statement on a pooled connection.
        with read_connection() as connection:
            polled = services.poll_job(connection, job_id, client)
    if request.if_none_match.contains_weak(polled.etag):
        # Nothing changed: answered from the plain columns, nothing decrypted or rendered.
        if cache is not None and ticket is not None:
            entry = Entry(polled.etag, polled.row.client_id, ticket.epoch, None, polled.status)
            cache.put(polled.row.id, ticket, entry)
        return _not_modified(polled.etag, polled.status)
    body = polled.view().model_dump_json().encode("utf-8")
    if cache is not None and ticket is not None:
        # A settled job changes only by a purge, which notifies: its 200 can be kept too.
        kept = body if polled.status in TERMINAL else None
        entry = Entry(polled.etag, polled.row.client_id, ticket.epoch, kept, polled.status)
        cache.put(polled.row.id, ticket, entry)
    return _job_body(body, polled.etag, polled.status)


def _job_key(job_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        return None  # the read answers 404


def _not_modified(etag: str, status: str) -> Response:
    response = Response(status=304)
    _cache_headers(response, etag, status)
    return response


def _job_body(body: bytes, etag: str, status: str) -> Response:
    response = Response(body, status=200, mimetype="application/json")
    _cache_headers(response, etag, status)
    return response


@bp.get("/openapi.json")
def openapi() -> Response:
    """Serve the OpenAPI description of this API."""
    global _spec
    if _spec is None:
        _spec = build_spec()
    return jsonify(_spec)


def _job_response(job: JobColumns, *, status: int, etag: str | None = None) -> Response:
    payload = services.job_view(job).model_dump_json().encode("utf-8")
    response = Response(payload, status=status, mimetype="application/json")
    _cache_headers(response, etag or services.etag_of(job), job.status)
    return response


def _cache_headers(response: Response, etag: str, status: str) -> None:
    response.set_etag(etag, weak=True)  # see CHANGE_COLUMNS
    # The job carries PHI: no cache keeps it. Polls still cost a 304, since the front end
    # sends If-None-Match itself from the ETag it holds.
    response.headers["Cache-Control"] = "no-store"
    if status == JobStatus.PROCESSING:
        response.headers["Retry-After"] = str(settings().poll_retry_after_seconds)


def _json_body() -> Any:
    if request.mimetype and not (
        request.mimetype == "application/json" or request.mimetype.endswith("+json")
    ):
        raise UnsupportedMediaType(f"Send the body as application/json (got {request.mimetype}).")
    raw = read_body()
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise MalformedJSON("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ValidationFailed(
            "The body must be a JSON object.", [FieldError("(body)", "must be a JSON object")]
        )
    broken = list(_lone_surrogates(body, ""))
    if broken:
        # JSON can carry half an emoji ("\ud83d") when a front end cuts a string badly;
        # it cannot be stored or sent on, so name the field instead of failing later.
        raise ValidationFailed(
            "The request has invalid fields; see `errors`.",
            [
                FieldError(path, "contains an incomplete character (a lone surrogate)")
                for path in broken
            ],
        )
    return body


def _lone_surrogates(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            yield path or "(body)"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _lone_surrogates(key, path or "(body)")
            yield from _lone_surrogates(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _lone_surrogates(item, f"{path}.{index}")


def _idempotency_key() -> tuple[str | None, list[FieldError]]:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None, []
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        message = f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters"
        return None, [FieldError("Idempotency-Key", message)]
    return key, []
