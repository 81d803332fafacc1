"""Deliveries: made from the record of job changes (fan-out), claimed by a worker with a
lease, and each attempt recorded, with the retry schedule and disabling."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session, aliased

from webhook_service.callback_client import Answer
from webhook_service.models import (
    ApiClient,
    CallbackAttempt,
    CallbackDelivery,
    CallbackEndpoint,
)
from webhook_service.services.callbacks.rules import (
    DISABLE_AFTER,
    DeliveryState,
    EndpointState,
    event_body,
    retry_delay,
    signing_secrets,
)
from webhook_service.services.changes import Position, client_changes, read_horizon

log = logging.getLogger(__name__)


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
        .join(ApiClient, ApiClient.id == CallbackEndpoint.client_id)
        # A revoked client's endpoint hears nothing more.
        .where(CallbackEndpoint.state == EndpointState.ENABLED, ApiClient.revoked_at.is_(None))
        .order_by(CallbackEndpoint.id)
        .with_for_update(skip_locked=True, of=CallbackEndpoint)
    ).all()
    added = 0
    connection = session.connection()
    # Read once for every endpoint: what may be passed is the same for all of them.
    horizon = (
        read_horizon(connection) if endpoints and connection.dialect.name == "postgresql" else None
    )
    for endpoint in endpoints:
        after = Position(endpoint.fanned_out_txid, endpoint.fanned_out_seq)
        changes = client_changes(connection, endpoint.client_id, after, limit, horizon=horizon)
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


def record_attempt(
    session: Session, outgoing: Outgoing, answer: Answer, now: datetime, *, scale: float = 1.0
) -> str:
    """Keep the attempt; settle the delivery or schedule its next try; track the endpoint's
    failures and disable it once they have lasted `DISABLE_AFTER` (both times `scale`).
    Returns the new state."""
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
        pause = retry_delay(delivery.attempts, scale)
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
            and now - endpoint.failing_since >= DISABLE_AFTER * scale
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
