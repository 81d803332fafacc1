"""Webhook deliveries: store every signed one, then match it to a job and apply it.

A received delivery is stored and applied in one transaction. If applying raises, that
transaction is rolled back whole and the delivery is stored again, alone and marked
`failed` for support to see, in a second one (`receive_webhook`): either way it is kept
before Cobalt gets its 200, and nothing is half-applied. Parked deliveries, applied later in
a batch, each get a savepoint instead (`applying._apply_safely`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import cast

from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from webhook_service.db import SessionFactory, transaction
from webhook_service.logs import log_failure
from webhook_service.models import WebhookDelivery
from webhook_service.services.applying import _mark_failed, apply_delivery
from webhook_service.services.deliveries import (
    KEPT_HEADERS,
    IncomingDelivery,
    Recorded,
    _clean_id,
    _parse,
    _parse_int,
    _parse_time,
    _printable,
    dedup_key,
    delivery_fields,
)
from webhook_service.signatures import SignatureMatch

log = logging.getLogger(__name__)


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
