"""Bare baselines for the bench's ratios, served by gunicorn with the service's own config:
`constant`, `pk_read` (one primary-key read as JSON), `verify_write` (HMAC check, then one
transaction that inserts a row and updates another). No ORM, auth, validation or logging.

Then the contract floors: `poll_floor`, `webhook_floor`, `submit_floor` and `support_floor` do,
on the service's own tables, the work the service's contract requires for a poll, a webhook, a
submission and a support list or search (bearer token, ownership, PHI encrypted at rest, keyed
search hash, timeline line, ETag, audit entry), written the cheapest way: a plain Flask view and
Core `text()` statements, no ORM, pydantic, hooks or logging. A target a floor misses (against
its bare baseline, or the support latency) cannot be met by any implementation of the same
contract on this stack.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.fernet import Fernet, MultiFernet
from flask import Flask, Response, abort, jsonify, make_response, request
from sqlalchemy import Connection, Engine, Row, TextClause, create_engine, text

# The contract's own pure rules (which events settle a job, and how): stdlib-only functions,
# so the webhook floor decides exactly as the service does without any of its machinery.
from webhook_service.lifecycle import (
    JobStatus,
    Outcome,
    Verdict,
    judge_outcome,
    outcome_from_event,
)

# The service's ETag formula (the floor's ETags are the service's, as a 304 must match),
# which webhook headers and ids it keeps, and support's page bound and next-page cursor:
# pure functions and constants.
from webhook_service.schemas import MAX_PAGE, encode_cursor
from webhook_service.services.jobs import CHANGE_COLUMNS, job_etag
from webhook_service.services.webhooks import KEPT_HEADERS, _clean_id

ROWS = 10_000  # bench_items rows (see bench.db.create_baseline_tables)


@functools.cache
def _engine() -> Engine:
    """One pool per process, made lazily after gunicorn forks (same sizes as the service)."""
    url = os.environ["DATABASE_URL"]
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
    return create_engine(url, pool_size=5, max_overflow=5)


def _secrets() -> list[bytes]:
    raw = os.environ.get("COBALT_WEBHOOK_SECRETS", "")
    return [part.strip().encode() for part in raw.split(",") if part.strip()]


def _app(name: str) -> Flask:
    app = Flask(name)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(ok=True)

    return app


constant = _app("constant")


@constant.get("/")
def constant_view() -> Response:
    return jsonify(ok=True)


pk_read = _app("pk_read")


@pk_read.get("/items/<item_id>")
def pk_read_view(item_id: str) -> Response | tuple[Response, int]:
    try:
        key = uuid.UUID(item_id)
    except ValueError:
        return jsonify(error="not found"), 404
    with _engine().connect() as conn:
        row = conn.execute(
            text(
                "SELECT id, status, cobalt_job_id, outcome, created_at, updated_at "
                "FROM bench_items WHERE id = :id"
            ),
            {"id": key},
        ).one_or_none()
    if row is None:
        return jsonify(error="not found"), 404
    return jsonify(
        id=str(row.id),
        status=row.status,
        cobalt_job_id=row.cobalt_job_id,
        outcome=row.outcome,
        created_at=row.created_at.isoformat(),
        updated_at=row.updated_at.isoformat(),
    )


verify_write = _app("verify_write")


@verify_write.post("/write")
def verify_write_view() -> Response | tuple[Response, int]:
    body = request.get_data(cache=False)
    signature = request.headers.get("cobalt-verification", "")
    if not any(
        hmac.compare_digest(hmac.new(secret, body, hashlib.sha256).hexdigest(), signature)
        for secret in _secrets()
    ):
        return jsonify(error="bad signature"), 401
    try:
        payload = json.loads(body)
    except ValueError:
        return jsonify(error="bad json"), 400
    # The row to update: the number in the payload's job id ("cj_123"), or a hash of the
    # body, folded onto the small table.
    digits = "".join(ch for ch in str(payload.get("job_id") or "") if ch.isdigit())
    number = int(digits) if digits else int(hashlib.sha256(body).hexdigest()[:8], 16)
    key = request.headers.get("webhook-id") or hashlib.sha256(body).hexdigest()
    with _engine().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO bench_deliveries (dedup_key, raw_body, received_at) "
                "VALUES (:key, :body, now()) ON CONFLICT (dedup_key) DO NOTHING"
            ),
            {"key": key, "body": body},
        )
        conn.execute(
            text("UPDATE bench_items SET hits = hits + 1, updated_at = now() WHERE n = :n"),
            {"n": number % ROWS + 1},
        )
    return jsonify(received=True)


# --- contract floors ----------------------------------------------------------------------
#
# Each floor does what the service's contract requires for its request and nothing else,
# on the service's tables, with the service's environment (keys, secrets, database).

AUTH_CACHE_SECONDS = 5.0  # the service's AUTH_CACHE_SECONDS default: revocation bound
AUTH_CACHE_SIZE = 10_000
RETRY_AFTER_SECONDS = "2"  # the service's POLL_RETRY_AFTER_SECONDS default
DUE_STATES = ("pending", "waiting", "retrying")


@dataclass(frozen=True)
class _Client:
    id: int
    name: str
    role: str
    clinic_id: int | None


_clients: dict[str, tuple[_Client, float]] = {}
_default_clinic: list[int] = []  # the default clinic's id, once read (per process)


@functools.cache
def _fernet() -> MultiFernet:
    """The service's PHI keys (newest first encrypts, all decrypt), built once per process."""
    keys = [key.strip() for key in os.environ["PHI_ENCRYPTION_KEYS"].split(",") if key.strip()]
    return MultiFernet([Fernet(key.encode()) for key in keys])


@functools.cache
def _search_key() -> bytes:
    return os.environ["PHI_SEARCH_KEY"].encode("utf-8")


def _search_hash(value: str) -> str:
    """HMAC-SHA256 hex under the search key, as `phi.search_hash` makes it."""
    return hmac.new(_search_key(), value.encode("utf-8"), hashlib.sha256).hexdigest()


_CLIENT = text(
    "SELECT id, name, role, clinic_id FROM api_clients "
    "WHERE token_hash = :digest AND revoked_at IS NULL"
)


def _client(roles: tuple[str, ...]) -> _Client | tuple[Response, int]:
    """The bearer token's client, or the 401/403 answer.

    Tokens are stored as their SHA-256 hex digest (`services.clients.hash_token`); a checked
    token is trusted for AUTH_CACHE_SECONDS per process, as the service's cache does, so a
    revoked token stops working within that bound.
    """
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return jsonify(error="unauthenticated"), 401
    digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
    now = time.monotonic()
    cached = _clients.get(digest)
    if cached is not None and cached[1] > now:
        client = cached[0]
    else:
        with _engine().connect() as conn:
            row = conn.execute(_CLIENT, {"digest": digest}).one_or_none()
        if row is None:
            _clients.pop(digest, None)
            return jsonify(error="unauthenticated"), 401
        client = _Client(row.id, row.name, row.role, row.clinic_id)
        if len(_clients) >= AUTH_CACHE_SIZE:
            _clients.clear()
        _clients[digest] = (client, now + AUTH_CACHE_SECONDS)
    if client.role not in roles:
        return jsonify(error="forbidden"), 403
    return client


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _job_resource(
    columns: Any, outcome: Any, error_message: str | None, etag: str, status: int
) -> Response:
    """The job resource front ends poll, as JSON, with its cache headers."""
    resource = _job_fields(columns, outcome, error_message)
    response = Response(json.dumps(resource), status=status, mimetype="application/json")
    _cache_headers(response, etag, columns.status)
    return response


def _job_fields(columns: Any, outcome: Any, error_message: str | None) -> dict[str, Any]:
    """JobOut's fields as JSON values, from a row of the job's columns."""
    error = None
    if columns.error_code is not None:
        error = {"code": columns.error_code, "message": error_message or ""}
    due = columns.submission_state in DUE_STATES
    return {
        "id": str(columns.id),
        "kind": columns.kind,
        "status": columns.status,
        "created_at": _iso(columns.created_at),
        "updated_at": _iso(columns.updated_at),
        "finished_at": _iso(columns.finished_at),
        "cobalt": {
            "job_id": columns.cobalt_job_id,
            "telephone_encounter_id": columns.cobalt_telephone_encounter_id,
        },
        "outcome": outcome,
        "error": error,
        "submission": {
            "state": columns.submission_state,
            "attempts": columns.submit_attempts,
            "next_attempt_at": _iso(columns.next_attempt_at) if due else None,
        },
        "purged_at": _iso(columns.purged_at),
    }


def _cache_headers(response: Response, etag: str, job_status: str) -> None:
    response.set_etag(etag, weak=True)
    response.headers["Cache-Control"] = "no-store"
    if job_status == "processing":
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS


poll_floor = _app("poll_floor")

# The resource's plain columns, then the two encrypted ones, read as stored and decrypted
# only for a 200. The ETag is the service's: over CHANGE_COLUMNS, in their order.
_POLL = text(
    "SELECT id, client_id, kind, status, created_at, updated_at, finished_at, cobalt_job_id, "
    "cobalt_telephone_encounter_id, error_code, submission_state, submit_attempts, "
    "next_attempt_at, purged_at, attention_code, retried_as, outcome_enc, error_message_enc "
    "FROM jobs WHERE id = :id"
)
_CHANGE_KEYS = tuple(column.key for column in CHANGE_COLUMNS)


@poll_floor.get("/v1/jobs/<job_id>")
def poll_floor_view(job_id: str) -> Response | tuple[Response, int]:
    """A front end's poll: token, one primary-key read, ownership, ETag, 304 or decrypt."""
    client = _client(("frontend",))
    if not isinstance(client, _Client):
        return client
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        return jsonify(error="not found"), 404
    with _engine().connect() as conn:
        row = conn.execute(_POLL, {"id": key}).one_or_none()
    if row is None or row.client_id != client.id:
        return jsonify(error="not found"), 404
    etag = job_etag(*(getattr(row, key) for key in _CHANGE_KEYS))
    if request.if_none_match.contains_weak(etag):
        response = Response(status=304)
        _cache_headers(response, etag, row.status)
        return response
    return _job_resource(row, *_decrypted(row), etag, 200)


def _decrypted(row: Any) -> tuple[Any, str | None]:
    """A job row's outcome (JSON) and error message, decrypted with the PHI keys."""
    fernet = _fernet()
    outcome = None if row.outcome_enc is None else json.loads(fernet.decrypt(row.outcome_enc))
    error_message = (
        None
        if row.error_message_enc is None
        else fernet.decrypt(row.error_message_enc).decode("utf-8")
    )
    return outcome, error_message


webhook_floor = _app("webhook_floor")

_INSERT_DELIVERY = text(
    "INSERT INTO webhook_deliveries (dedup_key, webhook_id, event_type, cobalt_job_id, "
    "telephone_encounter_id, appointment_hash, headers, raw_body_enc, signature_match, "
    "received_at, state) VALUES (:dedup_key, :webhook_id, :event_type, :cobalt_job_id, "
    ":telephone_encounter_id, :appointment_hash, CAST(:headers AS jsonb), :raw_body_enc, "
    ":signature_match, now(), 'received') "
    "ON CONFLICT (dedup_key) DO NOTHING RETURNING id"
)
_LOCK_JOB = text(
    "SELECT id, status, error_code, inflight_key, clinic_id, appointment_hash "
    "FROM jobs WHERE cobalt_job_id = :cobalt_job_id FOR UPDATE"
)
# `services.jobs.settle`: terminal status, outcome, finished; a submission still due is
# rejected; the note's appointment slot is freed.
_SETTLE_JOB = text(
    "UPDATE jobs SET status = :status, outcome_enc = :outcome_enc, error_code = :error_code, "
    "error_message_enc = :error_message_enc, finished_at = now(), updated_at = now(), "
    "next_attempt_at = NULL, claimed_until = NULL, inflight_key = NULL, "
    "cobalt_telephone_encounter_id = coalesce(cobalt_telephone_encounter_id, :encounter_id), "
    "submission_state = CASE WHEN submission_state IN ('pending', 'waiting', 'retrying') "
    "THEN 'rejected' ELSE submission_state END WHERE id = :id"
)
# `services.jobs.release_appointment`: wake the next note waiting for the freed slot (only
# when the settled note held one).
_WAKE_WAITING = text(
    "UPDATE jobs SET next_attempt_at = now() WHERE submission_state = 'waiting' "
    "AND clinic_id = :clinic_id AND appointment_hash = :appointment_hash"
)
# A repeat touches the job; a conflict also flags it for support.
_TOUCH_JOB = text(
    "UPDATE jobs SET updated_at = now(), flagged = flagged OR :conflict, "
    "cobalt_telephone_encounter_id = coalesce(cobalt_telephone_encounter_id, :encounter_id) "
    "WHERE id = :id"
)
_INSERT_EVENT = text(
    "INSERT INTO job_events (job_id, at, type, detail) "
    "VALUES (:job_id, now(), :type, CAST(:detail AS jsonb))"
)
_SETTLE_DELIVERY = text(
    "UPDATE webhook_deliveries SET state = :state, state_detail = :state_detail, "
    "job_id = :job_id WHERE id = :id"
)


@dataclass(frozen=True)
class _Delivery:
    """What applying needs from a stored delivery: its id, event and Cobalt ids."""

    id: int
    event_type: str | None
    cobalt_job_id: str | None
    encounter_id: str | None


def _matching_secret(body: bytes, signature: str) -> int | None:
    """The index of the configured secret that signed `body` (as `verify_write` checks)."""
    for index, secret in enumerate(_secrets()):
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected, signature):
            return index
    return None


@webhook_floor.post("/webhooks/cobalt")
def webhook_floor_view() -> Response | tuple[Response, int]:
    """Verify, then in one transaction: store once (encrypted), lock the job, settle, log."""
    body = request.get_data(cache=False)
    secret_index = _matching_secret(body, request.headers.get("cobalt-verification", ""))
    if secret_index is None:
        return jsonify(error="bad signature"), 401
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    payload: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    data = payload.get("data")
    data = data if isinstance(data, dict) else {}
    webhook_id = _clean_id(request.headers.get("webhook-id"))
    event_type = _clean_id(payload.get("type"))
    cobalt_job_id = _clean_id(payload.get("job_id")) or _clean_id(data.get("job_id"))
    encounter_id = _clean_id(data.get("telephone_encounter_id"))
    appointment_id = _clean_id(data.get("appointment_id"))
    event_id = _clean_id(payload.get("id"))
    if webhook_id is not None:
        dedup_key = "webhook-id:" + webhook_id
    elif event_id is not None:
        dedup_key = "event-id:" + event_id
    else:
        dedup_key = "sha256:" + hashlib.sha256(body).hexdigest()
    headers = {name: request.headers[name] for name in KEPT_HEADERS if name in request.headers}
    outcome = outcome_from_event(event_type, data) if event_type else None
    with _engine().begin() as conn:
        delivery_id = conn.execute(
            _INSERT_DELIVERY,
            {
                "dedup_key": dedup_key,
                "webhook_id": webhook_id,
                "event_type": event_type,
                "cobalt_job_id": cobalt_job_id,
                "telephone_encounter_id": encounter_id,
                "appointment_hash": _search_hash(appointment_id) if appointment_id else None,
                "headers": json.dumps(headers),
                "raw_body_enc": _fernet().encrypt(body),
                "signature_match": f"raw:secret[{secret_index}]",
            },
        ).scalar_one_or_none()
        if delivery_id is not None:  # None: a repeat of a stored delivery, acknowledged
            delivery = _Delivery(delivery_id, event_type, cobalt_job_id, encounter_id)
            state, state_detail, job_id = _apply(conn, delivery, outcome)
            conn.execute(
                _SETTLE_DELIVERY,
                {"id": delivery_id, "state": state, "state_detail": state_detail, "job_id": job_id},
            )
    return jsonify(received=True)


def _apply(
    conn: Connection, delivery: _Delivery, outcome: Outcome | None
) -> tuple[str, str | None, uuid.UUID | None]:
    """Match the delivery's job by Cobalt job id and apply the outcome as the service does.

    Returns the delivery's (state, detail, job id). The service's fallbacks (encounter id,
    then the note's appointment) run only when no job has the Cobalt job id; every bench
    webhook names an open job's, so they are not on the measured path and left out here.
    """
    if outcome is None:
        return "unknown_type", "not an outcome event this service acts on", None
    job = None
    if delivery.cobalt_job_id is not None:
        job = conn.execute(_LOCK_JOB, {"cobalt_job_id": delivery.cobalt_job_id}).first()
    if job is None:
        return "parked", "no job matches yet", None
    verdict = judge_outcome(JobStatus(job.status), outcome.status)
    facts = {
        "delivery_id": delivery.id,
        "event_type": delivery.event_type,
        "status": str(outcome.status),
    }
    if verdict == Verdict.APPLY:
        _settle(conn, job, outcome, delivery.encounter_id)
        _event(conn, job.id, "webhook_applied", facts)
        return "applied", None, job.id
    conflict = verdict == Verdict.CONFLICT
    conn.execute(
        _TOUCH_JOB, {"id": job.id, "conflict": conflict, "encounter_id": delivery.encounter_id}
    )
    if conflict:
        _event(conn, job.id, "outcome_conflict", {"kept": job.status, **facts})
        return "conflict", f"job is {job.status}; this delivery says {outcome.status}", job.id
    _event(conn, job.id, "webhook_repeat", facts)
    return "repeat", f"job already {job.status}", job.id


def _settle(conn: Connection, job: Row[Any], outcome: Outcome, encounter_id: str | None) -> None:
    """Write the outcome (encrypted) onto the job and free its appointment slot if it held one."""
    fernet = _fernet()
    error = outcome.error
    conn.execute(
        _SETTLE_JOB,
        {
            "id": job.id,
            "status": str(outcome.status),
            "outcome_enc": fernet.encrypt(json.dumps(outcome.detail).encode("utf-8")),
            "error_code": error["code"] if error else None,
            "error_message_enc": fernet.encrypt(error["message"].encode("utf-8"))
            if error
            else None,
            "encounter_id": encounter_id,
        },
    )
    if job.inflight_key is not None:
        conn.execute(
            _WAKE_WAITING, {"clinic_id": job.clinic_id, "appointment_hash": job.appointment_hash}
        )


def _event(conn: Connection, job_id: uuid.UUID, type_: str, detail: dict[str, Any]) -> None:
    """One line of the job's timeline (ids and statuses only)."""
    conn.execute(_INSERT_EVENT, {"job_id": job_id, "type": type_, "detail": json.dumps(detail)})


submit_floor = _app("submit_floor")

_DEFAULT_CLINIC = text("SELECT id FROM clinics WHERE name = 'default'")
_INSERT_JOB = text(
    "INSERT INTO jobs (id, kind, status, clinic_id, client_id, request_body_enc, request_hash, "
    "appointment_hash, submission_state, submit_attempts, next_attempt_at, flagged, "
    "created_at, updated_at) VALUES (:id, 'note', 'processing', :clinic_id, :client_id, "
    ":request_body_enc, :request_hash, :appointment_hash, 'pending', 0, :now, false, :now, :now)"
)
_CREATED_EVENT = json.dumps({"kind": "note"})


def _clinic_id(conn: Connection, client: _Client) -> int:
    """The client's clinic, or the default clinic (read once per process, as the service does)."""
    if client.clinic_id is not None:
        return client.clinic_id
    if not _default_clinic:
        _default_clinic.append(conn.execute(_DEFAULT_CLINIC).scalar_one())
    return _default_clinic[0]


def _json_body() -> Any:
    """The request's JSON, or the floor's 415 or 400 answer (raised, as Flask's `abort`)."""
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        abort(make_response(jsonify(error="send application/json"), 415))
    try:
        return json.loads(request.get_data(cache=False))
    except ValueError:
        abort(make_response(jsonify(error="malformed JSON"), 400))


@submit_floor.post("/v1/notes")
def submit_floor_view() -> Response | tuple[Response, int]:
    """A note without an Idempotency-Key: token, JSON with its two required fields, then
    the job (body encrypted, appointment hashed) and its `created` line in one transaction.
    """
    client = _client(("frontend",))
    if not isinstance(client, _Client):
        return client
    body = _json_body()
    if not isinstance(body, dict) or "appointment_id" not in body or "note" not in body:
        return jsonify(error="appointment_id and note are required"), 422
    # One canonical serialisation is both what is stored (encrypted) and what is hashed.
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        encoded = canonical.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud83d"): cannot be stored or sent on
        return jsonify(error="a field contains an incomplete character"), 422
    job_id, now = uuid.uuid4(), datetime.now(UTC)
    with _engine().begin() as conn:
        conn.execute(
            _INSERT_JOB,
            {
                "id": job_id,
                "clinic_id": _clinic_id(conn, client),
                "client_id": client.id,
                "request_body_enc": _fernet().encrypt(encoded),
                "request_hash": hashlib.sha256(encoded).hexdigest(),
                "appointment_hash": _search_hash(str(body["appointment_id"])),
                "now": now,
            },
        )
        conn.execute(_INSERT_EVENT, {"job_id": job_id, "type": "created", "detail": _CREATED_EVENT})
    job = _NewJob(job_id, client.id, now)
    response = _job_resource(job, None, None, job_etag(*job.etag_values()), 202)
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return response


@dataclass(frozen=True)
class _NewJob:
    """A just-accepted note's resource columns (the 202 renders them, as the service does)."""

    id: uuid.UUID
    client_id: int
    created_at: datetime
    kind: str = "note"
    status: str = "processing"
    finished_at: None = None
    cobalt_job_id: None = None
    cobalt_telephone_encounter_id: None = None
    error_code: None = None
    submission_state: str = "pending"
    submit_attempts: int = 0
    purged_at: None = None
    attention_code: None = None
    retried_as: None = None

    @property
    def updated_at(self) -> datetime:
        return self.created_at

    @property
    def next_attempt_at(self) -> datetime:
        return self.created_at

    def etag_values(self) -> tuple[Any, ...]:
        """The CHANGE_COLUMNS, in order, for the ETag."""
        return tuple(getattr(self, key) for key in _CHANGE_KEYS)


# Support's first page of a list or a search, for the filters the bench sends (status, kind,
# overdue, a created range, limit): no cursor, clinic or flagged filter.
support_floor = _app("support_floor")

DEFAULT_PAGE = 50  # JobPageQuery's default limit
SEARCH_TERM_MAX = 200  # schemas.SearchTerm's max_length
_CHOICES = {
    "status": frozenset({"processing", "completed", "partial", "failed"}),
    "kind": frozenset({"note", "telephone_encounter"}),
}
_SEARCH_TERMS = {"patient_mrn": "patient_mrn_hash", "appointment_id": "appointment_hash"}
_LIST_PARAMETERS = frozenset({"status", "kind", "overdue", "created_from", "created_to", "limit"})
_SEARCH_PARAMETERS = _LIST_PARAMETERS | frozenset(_SEARCH_TERMS)
# Support's job rows (`services.support._JOB_ROWS`): the resource's plain columns, the two
# encrypted ones, `attention_condition()` as `flagged`, and the job that retried this one.
_PAGE = (
    "SELECT id, kind, status, created_at, updated_at, finished_at, cobalt_job_id, "
    "cobalt_telephone_encounter_id, error_code, submission_state, submit_attempts, "
    "next_attempt_at, purged_at, clinic_id, retry_of, outcome_enc, error_message_enc, "
    "(jobs.flagged OR (jobs.status IN ('processing', 'failed') "
    "AND jobs.clinic_id IN (SELECT clinics.id FROM clinics WHERE clinics.needs_relink)) "
    "OR (jobs.cobalt_job_id IS NOT NULL AND jobs.cobalt_job_id IN (SELECT d.cobalt_job_id "
    "FROM webhook_deliveries AS d WHERE d.state IN ('parked', 'failed') "
    "AND d.cobalt_job_id IS NOT NULL)) "
    "OR (jobs.cobalt_telephone_encounter_id IS NOT NULL AND jobs.cobalt_telephone_encounter_id "
    "IN (SELECT d.telephone_encounter_id FROM webhook_deliveries AS d "
    "WHERE d.state IN ('parked', 'failed') AND d.telephone_encounter_id IS NOT NULL))) "
    "AS flagged, (SELECT retry.id FROM jobs AS retry WHERE retry.retry_of = jobs.id) "
    "AS retried_as FROM jobs"
)
_CONDITIONS = {
    "kind": "kind = :kind",
    "created_from": "created_at >= :created_from",
    "created_to": "created_at < :created_to",
    "patient_mrn_hash": "patient_mrn_hash = :patient_mrn_hash",
    "appointment_hash": "appointment_hash = :appointment_hash",
}
# `services.support._overdue`: processing past its kind's expected time, bounded by the
# shortest wait (`oldest_young`) so that the status index starts at the first job old enough.
_OVERDUE = (
    "(status = 'processing' AND created_at < :oldest_young AND ((kind = 'note' AND "
    "created_at < :late_note) OR (kind = 'telephone_encounter' AND "
    "created_at < :late_telephone_encounter)))"
)
_INSERT_AUDIT = text(
    "INSERT INTO audit_events (at, client_id, actor, action, detail) "
    "VALUES (:at, :client_id, :actor, :action, CAST(:detail AS jsonb))"
)


@functools.cache
def _page_statement(bound: frozenset[str], overdue: bool | None) -> TextClause:
    """The page for the filters named in `bound`, built once per process, as the service's.

    One status (else one kind) is a range over its (column, created_at, id) index and leads
    the order, so the page is read straight from that index (`services.support._job_query`).
    """
    lead = next((name for name in ("status", "kind") if name in bound), None)
    where = [f"{lead} >= :{lead} AND {lead} <= :{lead}"] if lead else []
    where += [sql for name, sql in _CONDITIONS.items() if name in bound and name != lead]
    if overdue is not None:
        where.append(_OVERDUE if overdue else f"NOT {_OVERDUE}")
    order = f"{lead} DESC, " if lead else ""
    return text(
        _PAGE  # fragments of this module only; every value is bound
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY {order}created_at DESC, id DESC LIMIT :limit"
    )


@functools.cache
def _expected() -> dict[str, timedelta]:
    """Each kind's expected time to an outcome: the service's settings, with its defaults."""
    return {
        "note": timedelta(seconds=int(os.environ.get("NOTE_EXPECTED_SECONDS", "180"))),
        "telephone_encounter": timedelta(
            seconds=int(os.environ.get("ENCOUNTER_EXPECTED_SECONDS", "120"))
        ),
    }


@support_floor.get("/v1/jobs")
def support_list_view() -> Response | tuple[Response, int]:
    """Support's list: token and role, then the first page of the filtered jobs."""
    client = _client(("support",))
    if not isinstance(client, _Client):
        return client
    return _support_page(client, request.args.to_dict(), _LIST_PARAMETERS)


@support_floor.post("/v1/jobs/search")
def support_search_view() -> Response | tuple[Response, int]:
    """Support's search: the same page, matched by the keyed hash of an MRN or appointment."""
    client = _client(("support",))
    if not isinstance(client, _Client):
        return client
    body = _json_body()
    if not isinstance(body, dict) or not any(body.get(name) for name in _SEARCH_TERMS):
        return jsonify(error="give patient_mrn or appointment_id"), 422
    return _support_page(client, body, _SEARCH_PARAMETERS)


def _support_page(
    client: _Client, given: Mapping[str, Any], allowed: frozenset[str]
) -> Response | tuple[Response, int]:
    """One page newest first and its audit entry in one transaction, then decrypt and render
    (`services.support.list_jobs`, `support._job_page`)."""
    try:
        values = _page_values(given, allowed)
    except (ValueError, TypeError) as exc:  # TypeError: a JSON list or object as a value
        return jsonify(error=str(exc)), 422
    limit = values.pop("limit", DEFAULT_PAGE)
    terms = {name: values.pop(name) for name in _SEARCH_TERMS if name in values}
    # The audit entry names the filters and which fields were searched, never their values.
    filters = {name: _iso(v) if isinstance(v, datetime) else v for name, v in values.items()}
    detail: dict[str, Any] = {"filters": filters}
    if terms:
        detail["searched_by"] = sorted(terms)
    overdue = values.pop("overdue", None)
    params = {**values, **{_SEARCH_TERMS[name]: _search_hash(v) for name, v in terms.items()}}
    statement = _page_statement(frozenset(params), overdue)
    now = datetime.now(UTC)
    if overdue is not None:
        late = {f"late_{kind}": now - wait for kind, wait in _expected().items()}
        params.update(late, oldest_young=now - min(_expected().values()))
    with _engine().begin() as conn:
        rows = conn.execute(statement, {**params, "limit": limit + 1}).all()
        page = rows[:limit]
        detail.update(count=len(page), job_ids=[str(row.id) for row in page])
        conn.execute(
            _INSERT_AUDIT,
            {
                "at": now,
                "client_id": client.id,
                "actor": client.name,
                "action": "jobs.search" if terms else "jobs.list",
                "detail": json.dumps(detail),
            },
        )
    last = page[-1] if len(rows) > limit else None
    body = {
        "jobs": [_support_fields(row) for row in page],
        "next_cursor": None if last is None else encode_cursor(last.created_at, last.id),
    }
    response = Response(json.dumps(body), mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"  # support answers carry PHI
    return response


def _page_values(given: Mapping[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    """The request's filters, limit and search terms, checked and converted (ValueError)."""
    values: dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            continue
        if name not in allowed:
            raise ValueError(f"{name}: not a parameter here")
        if name in _CHOICES and value not in _CHOICES[name]:
            raise ValueError(f"{name}: not one of {sorted(_CHOICES[name])}")
        if name == "overdue":
            if value not in (True, False, "true", "false"):
                raise ValueError("overdue: true or false")
            value = value in (True, "true")
        elif name in ("created_from", "created_to"):
            at = datetime.fromisoformat(str(value).strip())
            value = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        elif name == "limit":
            value = int(value)
            if isinstance(given[name], bool) or not 1 <= value <= MAX_PAGE:
                raise ValueError(f"limit: 1 to {MAX_PAGE}")
        elif name in _SEARCH_TERMS and not (
            isinstance(value, str) and value.strip() and len(value) <= SEARCH_TERM_MAX
        ):
            raise ValueError(f"{name}: a non-blank string of at most {SEARCH_TERM_MAX} characters")
        values[name] = value
    start, end = values.get("created_from"), values.get("created_to")
    if start is not None and end is not None and end <= start:
        raise ValueError("created_to: must be later than created_from")
    return values


def _support_fields(row: Any) -> dict[str, Any]:
    """SupportJobOut's fields: the job resource, then what staff act on."""
    fields = _job_fields(row, *_decrypted(row))
    fields["clinic_id"] = row.clinic_id
    fields["flagged"] = row.flagged
    fields["retry_of"] = None if row.retry_of is None else str(row.retry_of)
    fields["retried_as"] = None if row.retried_as is None else str(row.retried_as)
    return fields
