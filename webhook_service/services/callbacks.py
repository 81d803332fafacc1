"""Callbacks to front ends (issue 20): endpoints and their secrets, deliveries made from the
record of job changes, the retry schedule, disabling, and support's view and resend.

A delivery is one change of one job for one endpoint; the worker claims a due one with a
lease (as it claims jobs), POSTs it with no transaction open, then records the attempt.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session, aliased

from webhook_service.callback_client import Answer, UnsafeUrl, check_url, new_secret
from webhook_service.callback_schemas import (
    CallbackAttemptOut,
    CallbackDeliveryOut,
    CallbackEndpointOut,
    CallbackOut,
)
from webhook_service.errors import Conflict, FieldError, NotFound, ValidationFailed
from webhook_service.models import (
    ApiClient,
    CallbackAttempt,
    CallbackDelivery,
    CallbackEndpoint,
)
from webhook_service.services.changes import Position, client_changes, start_position
from webhook_service.services.support import Staff, audit_staff

log = logging.getLogger(__name__)

# After the first attempt, the pauses before each retry: ten attempts over about three days
# (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, 24 h, 24 h: 75.6 h in all), the growing
# schedule the Standard Webhooks senders use, stretched to outlast a long weekend's outage.
RETRY_SCHEDULE = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
    timedelta(hours=24),
    timedelta(hours=24),
)
# An endpoint every attempt to which has failed this long is disabled until its owner
# re-enables it: by then a delivery has run through its whole schedule.
DISABLE_AFTER = timedelta(days=3)
# The old secret signs alongside the new this long after a rotation.
ROTATION_OVERLAP = timedelta(hours=24)
EVENT_TYPE = "job.updated"


class EndpointState:
    ENABLED = "enabled"
    DISABLED = "disabled"
    REMOVED = "removed"


class DeliveryState:
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


# --- Pure rules ------------------------------------------------------------------------------


def retry_delay(attempts_made: int) -> timedelta | None:
    """The pause before the next attempt after `attempts_made` failed ones; None: give up."""
    if attempts_made < 1 or attempts_made > len(RETRY_SCHEDULE):
        return None
    return RETRY_SCHEDULE[attempts_made - 1]


def signing_secrets(endpoint: CallbackEndpoint, now: datetime) -> list[str]:
    """The secrets that sign now: the current one, and the previous one within its overlap."""
    secrets = [endpoint.secret]
    if endpoint.previous_secret and endpoint.previous_until and now < endpoint.previous_until:
        secrets.append(endpoint.previous_secret)
    return secrets


def event_body(resource: dict[str, Any], changed_at: datetime) -> bytes:
    """The body POSTed for one change: `{"type", "timestamp", "data": <job resource>}`."""
    event = {"type": EVENT_TYPE, "timestamp": changed_at.isoformat(), "data": resource}
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --- The front end's endpoint ---------------------------------------------------------------


def check_callback_url(url: str, *, allow_private: bool) -> None:
    """422 naming `url` unless it may be called (https, a public address, in production)."""
    try:
        check_url(url, allow_private=allow_private)
    except UnsafeUrl as exc:
        raise ValidationFailed(
            "The callback URL cannot be used; see `errors`.", [FieldError("url", str(exc))]
        ) from None


def frontend_named(session: Session, name: str) -> ApiClient:
    """The front-end client called `name` (for the command line), or NotFound."""
    client = session.scalars(select(ApiClient).where(ApiClient.name == name)).one_or_none()
    if client is None or client.role != "frontend" or client.revoked_at is not None:
        raise NotFound(f"No active front-end client named {name!r}.")
    return client


def _endpoint_of(session: Session, client: ApiClient, *, lock: bool = False) -> CallbackEndpoint:
    query = select(CallbackEndpoint).where(CallbackEndpoint.client_id == client.id)
    endpoint = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if endpoint is None or endpoint.state == EndpointState.REMOVED:
        raise NotFound("No callback is registered: PUT /v1/callback with its URL.")
    return endpoint


def register_endpoint(
    session: Session, client: ApiClient, url: str, *, allow_private: bool, now: datetime
) -> tuple[CallbackEndpoint, str | None, bool]:
    """Register (or change) the client's callback URL; return the endpoint, its new secret
    (None when the endpoint already had one: it is never shown twice), and whether it is new.

    Registering again re-enables a disabled endpoint: its pending deliveries resume.
    """
    check_callback_url(url, allow_private=allow_private)
    endpoint = session.scalars(
        select(CallbackEndpoint).where(CallbackEndpoint.client_id == client.id).with_for_update()
    ).one_or_none()
    secret = None
    created = endpoint is None or endpoint.state == EndpointState.REMOVED
    # A new endpoint is called back for changes from now on, not for the record's past.
    start = start_position(session.connection()) if created else None
    if endpoint is None:
        assert start is not None
        secret = new_secret()
        endpoint = CallbackEndpoint(
            client_id=client.id,
            url=url,
            state=EndpointState.ENABLED,
            secret=secret,
            fanned_out_txid=start.txid,
            fanned_out_seq=start.seq,
            created_at=now,
            updated_at=now,
        )
        session.add(endpoint)
    else:
        if start is not None:  # registered again after its removal: a new endpoint
            secret = new_secret()
            endpoint.secret = secret
            endpoint.previous_secret = None
            endpoint.previous_until = None
            endpoint.fanned_out_txid, endpoint.fanned_out_seq = start.txid, start.seq
            endpoint.created_at = now
        endpoint.url = url
        _enable(endpoint, now)
    session.flush()
    log.info("callback registered", extra={"client_id": client.id, "new_endpoint": created})
    return endpoint, secret, created


def enable_endpoint(session: Session, client: ApiClient, now: datetime) -> CallbackEndpoint:
    """Re-enable a disabled endpoint (its owner says it works again)."""
    endpoint = _endpoint_of(session, client, lock=True)
    _enable(endpoint, now)
    return endpoint


def _enable(endpoint: CallbackEndpoint, now: datetime) -> None:
    if endpoint.state != EndpointState.ENABLED:
        log.info("callback endpoint enabled", extra={"endpoint_id": endpoint.id})
    endpoint.state = EndpointState.ENABLED
    endpoint.failing_since = None
    endpoint.disabled_at = None
    endpoint.updated_at = now


def read_endpoint(session: Session, client: ApiClient) -> CallbackEndpoint:
    return _endpoint_of(session, client)


def remove_endpoint(session: Session, client: ApiClient, now: datetime) -> None:
    """Stop calling back: the endpoint is removed and its pending deliveries cancelled."""
    endpoint = _endpoint_of(session, client, lock=True)
    endpoint.state = EndpointState.REMOVED
    endpoint.updated_at = now
    session.execute(
        update(CallbackDelivery)
        .where(
            CallbackDelivery.endpoint_id == endpoint.id,
            CallbackDelivery.state == DeliveryState.PENDING,
        )
        .values(state=DeliveryState.CANCELLED, finished_at=now, next_attempt_at=None)
    )
    log.info("callback removed", extra={"client_id": client.id})


def rotate_secret(
    session: Session, client: ApiClient, now: datetime
) -> tuple[CallbackEndpoint, str]:
    """A new secret signs from now on; the old one signs alongside for 24 hours."""
    endpoint = _endpoint_of(session, client, lock=True)
    secret = new_secret()
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_until = now + ROTATION_OVERLAP
    endpoint.secret = secret
    endpoint.updated_at = now
    log.info("callback secret rotated", extra={"client_id": client.id})
    return endpoint, secret


def endpoint_view(
    endpoint: CallbackEndpoint, now: datetime, secret: str | None = None
) -> CallbackOut:
    overlap = (
        endpoint.previous_until
        if endpoint.previous_until and endpoint.previous_until > now
        else None
    )
    return CallbackOut(
        url=endpoint.url,
        state="disabled" if endpoint.state == EndpointState.DISABLED else "enabled",
        secret=secret,
        previous_secret_expires_at=overlap,
        failing_since=endpoint.failing_since,
        disabled_at=endpoint.disabled_at,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


# --- Deliveries ------------------------------------------------------------------------------


def add_delivery(
    session: Session,
    endpoint_id: int,
    *,
    job_id: uuid.UUID,
    change_seq: int,
    resource: dict[str, Any],
    changed_at: datetime,
    now: datetime,
) -> CallbackDelivery:
    """Queue one change of one job for one endpoint, due at once."""
    delivery = CallbackDelivery(
        endpoint_id=endpoint_id,
        job_id=job_id,
        change_seq=change_seq,
        webhook_id=f"msg_{uuid.uuid4().hex}",
        body=event_body(resource, changed_at),
        state=DeliveryState.PENDING,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(delivery)
    return delivery


FAN_OUT_BATCH = 500


def fan_out(session: Session, *, now: datetime, limit: int = FAN_OUT_BATCH) -> int:
    """Turn each enabled endpoint's new job changes into deliveries; return how many.

    Reads the record of changes after the endpoint's position, in the order streams read
    it (`client_changes`: only changes of committed transactions, so none is passed over),
    and moves the position on in the same transaction. Endpoints another worker is fanning
    out are skipped (SKIP LOCKED). A disabled endpoint's position waits: once re-enabled,
    it gets the changes it missed that the record still keeps (four days).
    """
    endpoints = session.scalars(
        select(CallbackEndpoint)
        .where(CallbackEndpoint.state == EndpointState.ENABLED)
        .order_by(CallbackEndpoint.id)
        .with_for_update(skip_locked=True)
    ).all()
    added = 0
    for endpoint in endpoints:
        after = Position(endpoint.fanned_out_txid, endpoint.fanned_out_seq)
        changes = client_changes(session.connection(), endpoint.client_id, after, limit)
        for change in changes:
            add_delivery(
                session,
                endpoint.id,
                job_id=change.job_id,
                change_seq=change.seq,
                resource=change.view().model_dump(mode="json"),
                changed_at=change.job.row.updated_at,
                now=now,
            )
        if changes:
            endpoint.fanned_out_txid, endpoint.fanned_out_seq = changes[-1].txid, changes[-1].seq
            added += len(changes)
    if added:
        session.flush()
    return added


@dataclass(frozen=True)
class Outgoing:
    """A claimed delivery: what the sender needs, copied out before the transaction ends."""

    delivery_id: int
    endpoint_id: int
    url: str
    webhook_id: str
    body: bytes
    secrets: list[str]
    trigger: str


_EARLIER = aliased(CallbackDelivery)


def claim_due_delivery(session: Session, *, now: datetime, lease: timedelta) -> Outgoing | None:
    """Take the next due delivery of an enabled endpoint, or None.

    In order per job: a delivery waits while an earlier change of its job is still pending
    for the same endpoint. `FOR UPDATE SKIP LOCKED` lets several workers claim at once on
    PostgreSQL; on SQLite the transaction is exclusive (BEGIN IMMEDIATE).
    """
    earlier_pending = exists().where(
        _EARLIER.endpoint_id == CallbackDelivery.endpoint_id,
        _EARLIER.job_id == CallbackDelivery.job_id,
        _EARLIER.change_seq < CallbackDelivery.change_seq,
        _EARLIER.state == DeliveryState.PENDING,
    )
    query = (
        select(CallbackDelivery, CallbackEndpoint)
        .join(CallbackEndpoint, CallbackEndpoint.id == CallbackDelivery.endpoint_id)
        .where(
            CallbackDelivery.state == DeliveryState.PENDING,
            CallbackDelivery.next_attempt_at <= now,
            (CallbackDelivery.claimed_until.is_(None)) | (CallbackDelivery.claimed_until < now),
            CallbackEndpoint.state == EndpointState.ENABLED,
            ~earlier_pending,
        )
        .order_by(CallbackDelivery.next_attempt_at, CallbackDelivery.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=CallbackDelivery)
    )
    found = session.execute(query).one_or_none()
    if found is None:
        return None
    delivery, endpoint = found
    delivery.claimed_until = now + lease
    return Outgoing(
        delivery_id=delivery.id,
        endpoint_id=endpoint.id,
        url=endpoint.url,
        webhook_id=delivery.webhook_id,
        body=delivery.body or b"",
        secrets=signing_secrets(endpoint, now),
        trigger="resend" if delivery.resend_by else "schedule",
    )


def record_attempt(session: Session, outgoing: Outgoing, answer: Answer, now: datetime) -> str:
    """Keep the attempt; settle the delivery or schedule its next try; track the endpoint's
    failures and disable it once they have lasted `DISABLE_AFTER`. Returns the new state."""
    session.add(
        CallbackAttempt(
            delivery_id=outgoing.delivery_id,
            at=now,
            trigger=outgoing.trigger,
            url=outgoing.url,
            status_code=answer.status_code,
            latency_ms=answer.latency_ms,
            succeeded=answer.succeeded,
            error=answer.error,
            response_excerpt=answer.excerpt,
        )
    )
    delivery = session.get(CallbackDelivery, outgoing.delivery_id, with_for_update=True)
    endpoint = session.get(CallbackEndpoint, outgoing.endpoint_id, with_for_update=True)
    assert delivery is not None  # rows are never deleted
    assert endpoint is not None
    delivery.attempts += 1
    delivery.claimed_until = None
    delivery.resend_by = None
    if answer.succeeded:
        delivery.state = DeliveryState.DELIVERED
        delivery.finished_at, delivery.next_attempt_at = now, None
        endpoint.failing_since = None
    else:
        pause = retry_delay(delivery.attempts)
        if delivery.state != DeliveryState.PENDING:
            pass  # cancelled meanwhile (endpoint removed): stays so
        elif pause is None:
            delivery.state = DeliveryState.FAILED
            delivery.finished_at, delivery.next_attempt_at = now, None
        else:
            delivery.next_attempt_at = now + pause
        endpoint.failing_since = endpoint.failing_since or now
        if (
            endpoint.state == EndpointState.ENABLED
            and now - endpoint.failing_since >= DISABLE_AFTER
        ):
            endpoint.state = EndpointState.DISABLED
            endpoint.disabled_at = endpoint.updated_at = now
            log.warning("callback endpoint disabled", extra={"endpoint_id": endpoint.id})
    log.info(
        "callback attempt",
        extra={
            "delivery_id": delivery.id,
            "job_id": str(delivery.job_id),
            "status": answer.status_code,
            "succeeded": answer.succeeded,
            "error": answer.error,
            "state": delivery.state,
        },
    )
    return delivery.state


def purge_delivery_bodies(session: Session, *, now: datetime, retention: timedelta) -> int:
    """Erase the bodies (the job resource: PHI) and answer excerpts of deliveries finished
    longer ago than the PHI retention period; the rows, ids and statuses stay."""
    cutoff = now - retention
    finished = select(CallbackDelivery.id).where(
        CallbackDelivery.finished_at < cutoff, CallbackDelivery.body.is_not(None)
    )
    ids = list(session.scalars(finished.limit(1000)))
    if not ids:
        return 0
    session.execute(
        update(CallbackDelivery).where(CallbackDelivery.id.in_(ids)).values(body=None),
        execution_options={"synchronize_session": False},
    )
    session.execute(
        update(CallbackAttempt)
        .where(CallbackAttempt.delivery_id.in_(ids))
        .values(response_excerpt=None),
        execution_options={"synchronize_session": False},
    )
    return len(ids)


# --- Support ---------------------------------------------------------------------------------


def list_endpoints(session: Session) -> list[CallbackEndpointOut]:
    pending = (
        select(func.count())
        .where(
            CallbackDelivery.endpoint_id == CallbackEndpoint.id,
            CallbackDelivery.state == DeliveryState.PENDING,
        )
        .scalar_subquery()
    )
    rows = session.execute(
        select(CallbackEndpoint, ApiClient.name, pending)
        .join(ApiClient, ApiClient.id == CallbackEndpoint.client_id)
        .order_by(ApiClient.name)
    ).all()
    return [
        CallbackEndpointOut(
            client=name,
            url=endpoint.url,
            state=endpoint.state,
            failing_since=endpoint.failing_since,
            disabled_at=endpoint.disabled_at,
            pending=count,
            updated_at=endpoint.updated_at,
        )
        for endpoint, name, count in rows
    ]


def list_deliveries(
    session: Session,
    *,
    client: str | None = None,
    job_id: uuid.UUID | None = None,
    state: str | None = None,
    limit: int = 50,
) -> list[CallbackDeliveryOut]:
    """Deliveries newest first, by client name, job or state (no attempts: see one)."""
    query = (
        select(CallbackDelivery, ApiClient.name)
        .join(CallbackEndpoint, CallbackEndpoint.id == CallbackDelivery.endpoint_id)
        .join(ApiClient, ApiClient.id == CallbackEndpoint.client_id)
        .order_by(CallbackDelivery.id.desc())
        .limit(limit)
    )
    if client is not None:
        query = query.where(ApiClient.name == client)
    if job_id is not None:
        query = query.where(CallbackDelivery.job_id == job_id)
    if state is not None:
        query = query.where(CallbackDelivery.state == state)
    return [_delivery_view(d, name, []) for d, name in session.execute(query).all()]


def read_callback_delivery(
    session: Session, staff: Staff, delivery_id: str, now: datetime
) -> CallbackDeliveryOut:
    """One delivery with every attempt (answers' excerpts can quote what was sent: audited)."""
    view = callback_delivery(session, delivery_id, excerpts=True)
    audit_staff(session, staff, "callback.read", now, job_id=view.job_id, delivery_id=view.id)
    return view


def callback_delivery(
    session: Session, delivery_id: str, *, excerpts: bool = False
) -> CallbackDeliveryOut:
    """One delivery with every attempt; the answers' excerpts only when asked (an audited
    read: see `read_callback_delivery`)."""
    delivery, name = _delivery_and_client(session, delivery_id)
    attempts = session.scalars(
        select(CallbackAttempt)
        .where(CallbackAttempt.delivery_id == delivery.id)
        .order_by(CallbackAttempt.id)
    ).all()
    view = _delivery_view(delivery, name, list(attempts))
    if not excerpts:
        for attempt in view.attempt_log:
            attempt.response_excerpt = None
    return view


def resend_delivery(
    session: Session, staff: Staff, delivery_id: str, *, reason: str, now: datetime
) -> CallbackDeliveryOut:
    """Send a delivery again now, whatever became of it (same `webhook-id` and body)."""
    delivery, name = _delivery_and_client(session, delivery_id, lock=True)
    endpoint = session.get(CallbackEndpoint, delivery.endpoint_id)
    assert endpoint is not None
    if endpoint.state != EndpointState.ENABLED:
        raise Conflict(
            f"The endpoint is {endpoint.state}: its owner re-enables it (PUT /v1/callback) "
            "before anything is sent to it."
        )
    if delivery.body is None:
        raise Conflict("The delivery's body was erased with the job's PHI; it cannot be resent.")
    before = delivery.state
    delivery.state = DeliveryState.PENDING
    delivery.next_attempt_at = now
    delivery.finished_at = None
    delivery.resend_by = staff.name
    audit_staff(
        session,
        staff,
        "callback.resend",
        now,
        job_id=delivery.job_id,
        delivery_id=delivery.id,
        reason=reason,
        state_before=before,
    )
    return _delivery_view(delivery, name, [])


def _delivery_and_client(
    session: Session, delivery_id: str, *, lock: bool = False
) -> tuple[CallbackDelivery, str]:
    # Ids are positive 64-bit integers: anything else names no delivery.
    if not delivery_id.isdigit() or not 0 < int(delivery_id) < 2**63:
        raise NotFound(f"No callback delivery with id {delivery_id!r}.")
    key = int(delivery_id)
    query = (
        select(CallbackDelivery, ApiClient.name)
        .join(CallbackEndpoint, CallbackEndpoint.id == CallbackDelivery.endpoint_id)
        .join(ApiClient, ApiClient.id == CallbackEndpoint.client_id)
        .where(CallbackDelivery.id == key)
    )
    if lock:
        query = query.with_for_update(of=CallbackDelivery)
    found = session.execute(query).one_or_none()
    if found is None:
        raise NotFound(f"No callback delivery with id {delivery_id!r}.")
    return found[0], found[1]


def _delivery_view(
    delivery: CallbackDelivery, client: str, attempts: list[CallbackAttempt]
) -> CallbackDeliveryOut:
    return CallbackDeliveryOut(
        id=delivery.id,
        client=client,
        job_id=delivery.job_id,
        change_seq=delivery.change_seq,
        webhook_id=delivery.webhook_id,
        state=delivery.state,
        attempts=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at,
        created_at=delivery.created_at,
        finished_at=delivery.finished_at,
        attempt_log=[
            CallbackAttemptOut(
                at=a.at,
                trigger=a.trigger,
                url=a.url,
                succeeded=a.succeeded,
                status_code=a.status_code,
                latency_ms=a.latency_ms,
                error=a.error,
                response_excerpt=a.response_excerpt,
            )
            for a in attempts
        ],
    )
