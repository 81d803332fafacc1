"""A front end's callback endpoint: registering, re-enabling, removing, rotating its secret."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from webhook_service.callback_client import UnsafeUrl, check_url, new_secret
from webhook_service.callback_schemas import (
    CallbackOut,
)
from webhook_service.errors import FieldError, NotFound, ValidationFailed
from webhook_service.models import (
    ApiClient,
    CallbackDelivery,
    CallbackEndpoint,
)
from webhook_service.services.callbacks.rules import (
    ROTATION_OVERLAP,
    DeliveryState,
    EndpointState,
)
from webhook_service.services.changes import start_position

log = logging.getLogger(__name__)


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
