"""Webhook deliveries: store every signed one, then match it to a job and apply it.

A received delivery is stored and applied in one transaction. If applying raises, that
transaction is rolled back whole and the delivery is stored again, alone and marked
`failed` for support to see, in a second one (`receive_webhook`): either way it is kept
before Cobalt gets its 200, and nothing is half-applied. Parked deliveries, applied later in
a batch, each get a savepoint instead (`_apply_safely`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypedDict, cast

from sqlalchemy import (
    Connection,
    Row,
    Table,
    bindparam,
    case,
    exists,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, defer

from webhook_service.db import SessionFactory, transaction
from webhook_service.lifecycle import (
    CLINIC_EVENTS,
    OPEN_TO_OUTCOME,
    JobKind,
    JobStatus,
    Outcome,
    Verdict,
    held_reason,
    judge_outcome,
    kind_for_event,
    learned_ids,
    matches_by_appointment,
    outcome_from_event,
)
from webhook_service.logs import log_failure
from webhook_service.models import Clinic, Job, WebhookDelivery
from webhook_service.phi import search_hash
from webhook_service.services.jobs import (
    INSERT_EVENT,
    JOBS,
    add_event,
    settle,
    settled_values,
    wake_waiting_notes,
)
from webhook_service.signatures import SignatureMatch

log = logging.getLogger(__name__)

# Headers kept with a delivery: Cobalt's own, and what helps support trace a request.
KEPT_HEADERS = (
    "webhook-id",
    "webhook-timestamp",
    "webhook-attempt",
    "content-type",
    "user-agent",
    "x-request-id",
)
MAX_ID_LENGTH = 200


class DeliveryState:
    RECEIVED = "received"
    APPLIED = "applied"
    PARKED = "parked"  # no job matches yet: applied when a job learns its Cobalt ids
    REPEAT = "repeat"  # the job already had this outcome
    CONFLICT = "conflict"  # a different outcome than the job's: recorded, flagged, not applied
    UNKNOWN_TYPE = "unknown_type"  # not an event this service acts on: stored and acknowledged
    FAILED = "failed"  # applying raised: kept for support, nothing half-applied
    HELD = "held"  # signed, but too old or older than its job: kept for a person, not applied
    CLINIC_EVENT = "clinic_event"  # about a clinic (`login_required`), not a job's outcome


# Stored deliveries made by a reconcile lookup (Cobalt's log read with our credentials, not a
# body pushed to us): the replay window does not apply to them.
RECONCILE_MATCH = "reconcile"


class Delivery(Protocol):
    """What applying reads of a delivery, and sets: a stored `WebhookDelivery`, or an
    `IncomingDelivery` just inserted (whose state one UPDATE then writes)."""

    id: int
    event_type: str | None
    cobalt_job_id: str | None
    telephone_encounter_id: str | None
    appointment_hash: str | None
    access_token_reference_id: str | None
    event_created_at: datetime | None
    received_at: datetime
    signature_match: str
    state: str
    state_detail: str | None
    job_id: uuid.UUID | None


class DeliveryFields(TypedDict):
    """What a delivery says about itself, read from its (signed) payload."""

    event_id: str | None
    event_created_at: datetime | None
    event_type: str | None
    cobalt_job_id: str | None
    telephone_encounter_id: str | None
    appointment_hash: str | None
    access_token_reference_id: str | None


def delivery_fields(payload: dict[str, Any]) -> DeliveryFields:
    """A delivery's ids, type and creation time from its payload (Cobalt's event envelope),
    whether pushed to us (`record_webhook`) or found in Cobalt's log (`reconcile`)."""
    data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    assert isinstance(data, dict)
    return {
        "event_id": _clean_id(payload.get("id")),
        "event_created_at": _parse_time(_clean_id(payload.get("created"))),
        "event_type": _clean_id(payload.get("type")),
        "cobalt_job_id": _clean_id(payload.get("job_id")) or _clean_id(data.get("job_id")),
        "telephone_encounter_id": _clean_id(data.get("telephone_encounter_id")),
        "appointment_hash": search_hash(_clean_id(data.get("appointment_id"))),
        "access_token_reference_id": _clean_id(payload.get("access_token_reference_id")),
    }


def dedup_key(event_id: str | None, webhook_id: str | None, raw_body: bytes) -> str:
    """The key one event is stored under, once: the signed body's event id when it has one
    (so a body re-sent with a new or no `webhook-id` is a repeat, and a reconcile lookup
    finding the same event finds its row), else the unsigned `webhook-id`, else the body."""
    if event_id is not None:
        return "event-id:" + event_id
    if webhook_id is not None:
        return "webhook-id:" + webhook_id
    return "sha256:" + hashlib.sha256(raw_body).hexdigest()


@dataclass(slots=True)
class IncomingDelivery:
    """A delivery as received: what its INSERT writes (the `WebhookDelivery` attributes but
    its id), without the ORM's instrumentation, since no session ever holds it."""

    dedup_key: str
    webhook_id: str | None
    attempt: int | None
    event_timestamp: datetime | None
    event_id: str | None
    event_created_at: datetime | None
    event_type: str | None
    cobalt_job_id: str | None
    telephone_encounter_id: str | None
    appointment_hash: str | None
    access_token_reference_id: str | None
    headers: dict[str, str]
    raw_body: bytes
    signature_match: str
    received_at: datetime
    state: str = DeliveryState.RECEIVED
    state_detail: str | None = None
    job_id: uuid.UUID | None = None
    id: int = 0  # set once inserted


@dataclass(frozen=True)
class Recorded:
    delivery_id: int
    duplicate: bool
    state: str


class ApplyFailed(Exception):
    """Applying a just-stored delivery raised (`record_webhook`): the caller rolls back and
    stores `delivery` again, marked failed (`receive_webhook` does)."""

    def __init__(self, delivery: IncomingDelivery, cause: Exception) -> None:
        super().__init__(delivery.state_detail)
        self.delivery = delivery
        self.cause = cause


def receive_webhook(
    factory: SessionFactory,
    *,
    raw_body: bytes,
    headers: Mapping[str, str],
    match: SignatureMatch,
    now: datetime,
) -> Recorded:
    """Store a signed delivery once and apply it, in one transaction; if applying raises,
    store the delivery alone, marked failed, in a second. Returns once it is committed.

    One transaction, not a savepoint around applying: the savepoint and its release were two
    of a webhook's nine round trips, paid on every delivery for the rare one that fails.
    """
    try:
        with transaction(factory) as session:
            return record_webhook(session, raw_body=raw_body, headers=headers, match=match, now=now)
    except ApplyFailed as failed:
        delivery = failed.delivery
        # Logged first: should storing it again fail too, the cause is still on record.
        log_failure(log, "webhook apply failed", failed.cause, webhook_id=delivery.webhook_id)
    # Everything applying wrote is rolled back with the first transaction.
    with transaction(factory) as session:
        return _store(session.connection(), delivery)


def record_webhook(
    session: Session,
    *,
    raw_body: bytes,
    headers: Mapping[str, str],
    match: SignatureMatch,
    now: datetime,
) -> Recorded:
    """Store a signed delivery once (deduplicated) in the session's transaction, then apply
    it. Bad input never raises; a failure while applying raises `ApplyFailed`, which the
    caller answers by rolling back (`receive_webhook`)."""
    payload = _parse(raw_body)
    fields = delivery_fields(payload)
    webhook_id = _clean_id(headers.get("webhook-id"))
    delivery = IncomingDelivery(
        dedup_key=dedup_key(fields["event_id"], webhook_id, raw_body),
        webhook_id=webhook_id,
        attempt=_parse_int(headers.get("webhook-attempt")),
        event_timestamp=_parse_time(headers.get("webhook-timestamp")),
        headers={k: _printable(headers[k]) for k in KEPT_HEADERS if k in headers},
        raw_body=raw_body,
        signature_match=match.describe(),
        received_at=now,
        **fields,
    )
    connection = session.connection()
    recorded = _store(connection, delivery)
    if recorded.duplicate:
        return recorded
    # Applying sets the delivery's state, job and detail, and one UPDATE writes them.
    try:
        apply_delivery(session, delivery, payload, now, received=True)
    except Exception as exc:
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            raise  # the database went away: nothing is stored, and the 503 makes Cobalt retry
        _mark_failed(delivery, exc)
        raise ApplyFailed(delivery, exc) from exc
    connection.execute(
        _SETTLE_DELIVERY,
        {
            "delivery_id": delivery.id,
            "state": delivery.state,
            "state_detail": delivery.state_detail,
            "job_id": delivery.job_id,
        },
    )
    return Recorded(delivery.id, duplicate=False, state=delivery.state)


def _store(connection: Connection, delivery: IncomingDelivery) -> Recorded:
    """Insert the delivery, as it stands, unless its dedup key is stored (then: that one)."""
    delivery_id = _insert_once(connection, delivery)
    if delivery_id is None:
        existing = connection.execute(_STORED, {"dedup_key": delivery.dedup_key}).one()
        return Recorded(existing.id, duplicate=True, state=existing.state)
    delivery.id = delivery_id
    return Recorded(delivery_id, duplicate=False, state=delivery.state)


_DELIVERIES = cast(Table, WebhookDelivery.__table__)
_SETTLE_DELIVERY = update(_DELIVERIES).where(_DELIVERIES.c.id == bindparam("delivery_id"))
_STORED = select(_DELIVERIES.c.id, _DELIVERIES.c.state).where(
    _DELIVERIES.c.dedup_key == bindparam("dedup_key")
)


def _insert_once(connection: Connection, delivery: IncomingDelivery) -> int | None:
    """Insert the delivery unless its dedup key is already stored; return its id, or None.

    One `INSERT … ON CONFLICT DO NOTHING RETURNING id` (PostgreSQL and SQLite alike): the
    unique key is still the guard, without a savepoint and a caught IntegrityError.
    """
    values = {column: getattr(delivery, key) for column, key in _DELIVERY_COLUMNS}
    statement = _INSERT_ONCE[connection.dialect.name == "postgresql"]
    inserted: int | None = connection.execute(statement, values).scalar_one_or_none()
    return inserted


# (column name, attribute) of what a delivery's INSERT writes: every column but its id.
_DELIVERY_COLUMNS = tuple(
    (prop.columns[0].name, prop.key)
    for prop in inspect(WebhookDelivery).column_attrs
    if prop.key != "id"
)
# Built once per dialect (PostgreSQL, SQLite); the row's values are bound per call.
_INSERT_ONCE = {
    postgres: (postgresql.insert if postgres else sqlite.insert)(_DELIVERIES)
    .on_conflict_do_nothing(index_elements=[_DELIVERIES.c.dedup_key])
    .returning(_DELIVERIES.c.id)
    for postgres in (True, False)
}


def _apply_safely(
    session: Session, delivery: WebhookDelivery, payload: dict[str, Any], now: datetime
) -> None:
    """Apply a stored delivery in a savepoint: if that raises, only its apply is undone."""
    try:
        with session.begin_nested():
            apply_delivery(session, delivery, payload, now)
    except Exception as exc:
        log_failure(log, "webhook apply failed", exc, delivery_id=delivery.id)
        _mark_failed(delivery, exc)


def _mark_failed(delivery: Delivery, exc: Exception) -> None:
    delivery.state = DeliveryState.FAILED
    delivery.state_detail = f"applying raised {type(exc).__name__}"
    delivery.job_id = None


def apply_delivery(
    session: Session,
    delivery: Delivery,
    payload: dict[str, Any],
    now: datetime,
    *,
    received: bool = False,
) -> None:
    """Match a stored delivery to its job and apply the event (or park or hold it).

    Every path that applies a delivery comes here (webhook, parked sweep, reconcile, support
    replay), so each rule is decided once: what an event can settle (`lifecycle.settles`,
    through `find_job`), when a signed event is held (`lifecycle.held_reason`), what an
    outcome does to a job (`lifecycle.judge_outcome`).

    `received`: the delivery has just been received, in a session that holds no job yet.
    Then the job found is settled, or noted as a repeat or a conflict, with plain statements
    on its row (`_apply_to_row`): nothing encrypted is read, and no ORM object is loaded and
    flushed. Elsewhere (replay, parked deliveries, reconcile) the session may hold the job,
    which those statements would leave stale, so the ORM loads the row found.
    """
    event_type = delivery.event_type or ""
    if event_type in CLINIC_EVENTS:
        _apply_clinic_event(session, delivery, now)
        return
    data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    assert isinstance(data, dict)
    outcome = outcome_from_event(event_type, data) if event_type else None
    kind = kind_for_event(event_type)
    if outcome is None or kind is None:
        delivery.state = DeliveryState.UNKNOWN_TYPE
        delivery.state_detail = (
            "not an outcome event this service acts on"
            if payload
            else "the body is not a JSON object (or not UTF-8): nothing to apply"
        )
        return
    if _hold(delivery, None):
        return
    row = find_job(session, delivery, kind)
    if row is None:
        delivery.state = DeliveryState.PARKED
        delivery.state_detail = "no job matches yet"
        return
    if _hold(delivery, row.created_at):
        return
    facts = {"delivery_id": delivery.id, "event_type": event_type, "status": outcome.status}
    if received:
        _apply_to_row(session, row, delivery, outcome, now, facts)
        return
    job = _load_locked(session, row.id)
    delivery.job_id = job.id
    job.cobalt_job_id, job.cobalt_telephone_encounter_id = learned_ids(
        (job.cobalt_job_id, job.cobalt_telephone_encounter_id),
        (delivery.cobalt_job_id, delivery.telephone_encounter_id),
    )
    verdict = judge_outcome(JobStatus(job.status), outcome.status)
    event_type, detail = _judged(delivery, verdict, job.status, outcome, facts)
    if verdict == Verdict.APPLY:
        settle(session, job, outcome, now)
    else:
        if verdict == Verdict.CONFLICT:
            job.flagged = True
        job.updated_at = now
    add_event(session, job, event_type, now, **detail)


def _hold(delivery: Delivery, job_created_at: datetime | None) -> bool:
    """Hold the delivery for support (True) when its signed `created` says it must not be
    applied automatically (`lifecycle.held_reason`); the job, if any, is left untouched."""
    # Found by asking Cobalt for a job's events, it is no replay, whatever its age.
    pushed = delivery.signature_match != RECONCILE_MATCH
    reason = held_reason(
        delivery.event_created_at,
        received_at=delivery.received_at if pushed else None,
        job_created_at=job_created_at,
    )
    if reason is None:
        return False
    delivery.state, delivery.state_detail, delivery.job_id = DeliveryState.HELD, reason, None
    return True


def _judged(
    delivery: Delivery,
    verdict: Verdict,
    status: str,
    outcome: Outcome,
    facts: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    """Set the delivery's state for the verdict on a job in `status`; return the job's
    timeline line for it (its type and detail). The job itself is written by the caller."""
    if verdict == Verdict.APPLY:
        delivery.state, delivery.state_detail = DeliveryState.APPLIED, None
        return "webhook_applied", facts
    if verdict == Verdict.REPEAT:
        delivery.state, delivery.state_detail = DeliveryState.REPEAT, f"job already {status}"
        return "webhook_repeat", facts
    delivery.state = DeliveryState.CONFLICT
    delivery.state_detail = f"job is {status}; this delivery says {outcome.status}"
    return "outcome_conflict", {"kept": status, **facts}


def _apply_to_row(
    session: Session,
    row: Row[*tuple[Any, ...]],
    delivery: Delivery,
    outcome: Outcome,
    now: datetime,
    facts: dict[str, Any],
) -> None:
    """What the ORM branch of `apply_delivery` does to a job, as one UPDATE of its row and
    one INSERT of its timeline line: settle it (`webhook_applied`), or note a repeat or a
    conflict. The rules are the same functions; only the transport differs."""
    status = JobStatus(row.status)
    verdict = judge_outcome(status, outcome.status)
    cobalt_job_id, encounter_id = learned_ids(
        (row.cobalt_job_id, row.cobalt_telephone_encounter_id),
        (delivery.cobalt_job_id, delivery.telephone_encounter_id),
    )
    values: dict[str, Any] = {
        "cobalt_job_id": cobalt_job_id,
        "cobalt_telephone_encounter_id": encounter_id,
        "updated_at": now,
        "job_key": row.id,
    }
    event_type, detail = _judged(delivery, verdict, status, outcome, facts)
    if verdict == Verdict.APPLY:
        settled = settled_values(outcome, now, row.submission_state)
        values.update({_JOB_COLUMN[key]: value for key, value in settled.items()})
        values["inflight_key"] = None
    elif verdict == Verdict.CONFLICT:
        values["flagged"] = True
    connection = session.connection()
    connection.execute(_UPDATE_JOB, values)
    if verdict == Verdict.APPLY and row.inflight_key is not None:
        wake_waiting_notes(connection, row.clinic_id, row.appointment_hash, now)
    connection.execute(
        INSERT_EVENT, {"job_id": row.id, "at": now, "type": event_type, "detail": detail}
    )
    delivery.job_id = row.id


def find_job(session: Session, delivery: Delivery, kind: str) -> Row[*tuple[Any, ...]] | None:
    """The one lookup of which job a delivery of `kind`'s events is about: its plain columns,
    locked, found by Cobalt job id, then encounter id, then (notes only) the appointment.

    Only jobs of the event's kind are looked at (`lifecycle.settles`): an event of another
    resource sharing a job's ids is not its outcome. Every path matches through here; the
    ORM path then loads the row found (`_load_locked`).
    """
    connection = session.connection()
    if delivery.cobalt_job_id:
        row = connection.execute(
            _ROW_BY_JOB_ID, {"value": delivery.cobalt_job_id, "kind": kind}
        ).first()
        if row is not None:
            return row
    if delivery.telephone_encounter_id:
        row = connection.execute(
            _ROW_BY_ENCOUNTER_ID, {"value": delivery.telephone_encounter_id, "kind": kind}
        ).first()
        if row is not None:
            return row
    if delivery.appointment_hash and matches_by_appointment(kind):
        return _note_for_appointment(session, delivery)
    return None


# The plain columns deciding and settling read, locked as the ORM path locks the job.
_ROW = select(
    JOBS.c.id,
    JOBS.c.status,
    JOBS.c.submission_state,
    JOBS.c.inflight_key,
    JOBS.c.clinic_id,
    JOBS.c.appointment_hash,
    JOBS.c.cobalt_job_id,
    JOBS.c.cobalt_telephone_encounter_id,
    JOBS.c.created_at,
).with_for_update()
_OF_KIND = JOBS.c.kind == bindparam("kind")
_ROW_BY_JOB_ID = _ROW.where(JOBS.c.cobalt_job_id == bindparam("value"), _OF_KIND)
_ROW_BY_ENCOUNTER_ID = _ROW.where(
    JOBS.c.cobalt_telephone_encounter_id == bindparam("value"), _OF_KIND
)
# The note in flight for an appointment: it holds the (clinic, appointment) slot and is open
# to an outcome (`lifecycle.OPEN_TO_OUTCOME`, the set `open_to_outcome` reads).
_NOTE_FOR_APPOINTMENT = (
    _ROW.where(
        JOBS.c.kind == JobKind.NOTE,
        JOBS.c.appointment_hash == bindparam("value"),
        JOBS.c.cobalt_job_id.is_(None),
        JOBS.c.inflight_key.is_not(None),
        JOBS.c.status.in_(sorted(OPEN_TO_OUTCOME)),
    )
    .order_by(JOBS.c.created_at.desc())
    .limit(1)
)
_NOTE_IN_CLINICS = _NOTE_FOR_APPOINTMENT.where(
    JOBS.c.clinic_id.in_(bindparam("clinics", expanding=True))
)
# The columns to set are the parameters given (by column name), as in `_SETTLE_DELIVERY`.
_UPDATE_JOB = update(JOBS).where(JOBS.c.id == bindparam("job_key"))
_JOB_COLUMN = {key: column.name for key, column in Job.__mapper__.columns.items()}


def _note_for_appointment(session: Session, delivery: Delivery) -> Row[*tuple[Any, ...]] | None:
    """The note in flight for this appointment in the delivery's clinic.

    Only one note per (clinic, appointment) is ever at Cobalt at once, so this is not a
    guess; a note that already learned its Cobalt job id is matched by that id instead.
    """
    connection = session.connection()
    clinic_ids = _clinics_for(session, delivery.access_token_reference_id)
    if clinic_ids is None:
        return connection.execute(
            _NOTE_FOR_APPOINTMENT, {"value": delivery.appointment_hash}
        ).first()
    return connection.execute(
        _NOTE_IN_CLINICS, {"value": delivery.appointment_hash, "clinics": clinic_ids}
    ).first()


_LOCKED: dict[str, Any] = {"populate_existing": True}
# Matching reads what deciding and settling need: the note's body, and the outcome and error
# a settled job already has, stay encrypted and unread (a later read loads them if needed).
_UNREAD = (defer(Job.request_body), defer(Job.outcome), defer(Job.error_message))


def _load_locked(session: Session, job_id: uuid.UUID) -> Job:
    """The job `find_job` found and locked, read afresh: one already in this session may be
    stale if another transaction settled it while this one waited for the lock."""
    job = session.scalar(
        select(Job)
        .where(Job.id == job_id)
        .with_for_update()
        .options(*_UNREAD)
        .execution_options(**_LOCKED)
    )
    assert job is not None  # locked by `find_job` in this transaction
    return job


def match_job(session: Session, delivery: Delivery) -> Job | None:
    """The job a delivery's event would settle, loaded and locked (support's replay preview)."""
    kind = kind_for_event(delivery.event_type or "")
    if kind is None:
        return None
    row = find_job(session, delivery, kind)
    return _load_locked(session, row.id) if row is not None else None


def _clinics_for(session: Session, reference_id: str | None) -> list[int] | None:
    """Clinics a delivery may belong to; None when it does not say (older payloads)."""
    if reference_id is None:
        return None
    known = session.scalar(
        select(Clinic.id).where(Clinic.access_token_reference_id == reference_id)
    )
    if known is not None:
        return [known]
    # Clinics whose reference id we have not learned yet might be this one.
    return list(
        session.scalars(select(Clinic.id).where(Clinic.access_token_reference_id.is_(None)))
    )


def _apply_clinic_event(session: Session, delivery: Delivery, now: datetime) -> None:
    """`login_required`: the clinic's EMR link expired. It is no job's outcome: the clinic
    is flagged for re-linking, unless it was re-linked after the event was created (a
    replayed or late event must not undo the re-link)."""
    delivery.job_id = None
    if _hold(delivery, None):
        return
    delivery.state = DeliveryState.CLINIC_EVENT
    reference_id = delivery.access_token_reference_id
    clinic = None
    if reference_id is not None:
        clinic = session.scalar(
            select(Clinic).where(Clinic.access_token_reference_id == reference_id)
        )
    if clinic is None:
        delivery.state_detail = "no linked clinic has this access token: nothing flagged"
        return
    created = delivery.event_created_at
    if created is not None and clinic.linked_at is not None and clinic.linked_at > created:
        delivery.state_detail = (
            f"clinic {clinic.name!r} was re-linked after this event: nothing to do"
        )
        return
    if not clinic.needs_relink:
        clinic.needs_relink = True
        clinic.updated_at = now
    delivery.state_detail = f"clinic {clinic.name!r} flagged: it must be re-linked in Cobalt"


def apply_parked_for(session: Session, job: Job, now: datetime) -> int:
    """Apply, in arrival order, the parked deliveries that match a job's new Cobalt ids."""
    conditions = []
    if job.cobalt_job_id:
        conditions.append(WebhookDelivery.cobalt_job_id == job.cobalt_job_id)
    if job.cobalt_telephone_encounter_id:
        conditions.append(
            WebhookDelivery.telephone_encounter_id == job.cobalt_telephone_encounter_id
        )
    if not conditions:
        return 0
    parked = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.state == DeliveryState.PARKED, or_(*conditions))
        .order_by(WebhookDelivery.received_at, WebhookDelivery.id)
        .with_for_update(skip_locked=True)
    ).all()
    for delivery in parked:
        _apply_safely(session, delivery, _parse(delivery.raw_body or b""), now)
    return len(parked)


# `lifecycle.kind_for_event` of a stored delivery's type, in SQL (a test checks they agree).
EVENT_KIND = case(
    *(
        (WebhookDelivery.event_type.startswith(f"{kind}.", autoescape=True), str(kind))
        for kind in JobKind
    ),
    else_=None,
)


def match_parked(session: Session, now: datetime, limit: int = 100) -> int:
    """Sweep: apply parked deliveries whose job has since learned its ids.

    Closes the race where a webhook is parked in the instant a worker records the ids.
    """
    # Driven from the (few) parked deliveries, each checked against the jobs' unique-ish id
    # indexes: `IN (SELECT … FROM jobs)` read every job's ids (375 ms at 1M jobs, with
    # nothing parked).
    # Only jobs of the event's kind (`find_job` would pass over the others): a parked event
    # sharing an id with a job of another kind would otherwise be taken up, and parked
    # again, on every sweep, ahead of the rest.
    has_job = exists().where(
        Job.cobalt_job_id.is_not(None),
        Job.cobalt_job_id == WebhookDelivery.cobalt_job_id,
        Job.kind == EVENT_KIND,
    )
    has_encounter = exists().where(
        Job.cobalt_telephone_encounter_id.is_not(None),
        Job.cobalt_telephone_encounter_id == WebhookDelivery.telephone_encounter_id,
        Job.kind == EVENT_KIND,
    )
    parked = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.state == DeliveryState.PARKED, or_(has_job, has_encounter))
        .order_by(WebhookDelivery.received_at, WebhookDelivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for delivery in parked:
        _apply_safely(session, delivery, _parse(delivery.raw_body or b""), now)
    return len(parked)


def _parse(raw_body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(raw_body)
    except (ValueError, RecursionError):
        return {}
    return payload if isinstance(payload, dict) else {}


def _printable(value: str) -> str:
    """A header value safe to store anywhere (PostgreSQL JSON refuses NUL)."""
    value = value[:500]
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else "?" for c in value)


def _clean_id(value: object) -> str | None:
    """An id from outside: kept only if it is a short string or integer."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    if not text or len(text) > MAX_ID_LENGTH or not text.isprintable():
        return None
    return text


def _parse_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if 0 <= number < 1_000_000 else None


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        # Years 1 and 9999 with an offset overflow once moved to UTC: treat as unparsable.
        return parsed.astimezone(UTC) if parsed.tzinfo is not None else None
    except (ValueError, OverflowError):
        return None
