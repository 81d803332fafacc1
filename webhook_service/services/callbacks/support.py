"""Support's view of callbacks: endpoints, deliveries with every attempt, and resend."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from webhook_service.callback_schemas import (
    CallbackAttemptOut,
    CallbackDeliveryOut,
    CallbackEndpointOut,
)
from webhook_service.errors import Conflict, NotFound
from webhook_service.models import (
    ApiClient,
    CallbackAttempt,
    CallbackDelivery,
    CallbackEndpoint,
)
from webhook_service.services.callbacks.rules import (
    DeliveryState,
    EndpointState,
)
from webhook_service.services.support import Staff, audit_staff


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
    if not (delivery_id.isascii() and delivery_id.isdigit()) or not 0 < int(delivery_id) < 2**63:
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
