"""What a webhook delivery is: its states, what it says about itself (read from its signed
payload), the key it is stored under once, and the parsing of values from outside.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypedDict

from webhook_service.phi import search_hash

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
