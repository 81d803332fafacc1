"""The rules of callbacks, pure: the retry schedule, when an endpoint is disabled, which
secrets sign, and the body POSTed for a change."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from webhook_service.models import CallbackEndpoint

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


def retry_delay(attempts_made: int, scale: float = 1.0) -> timedelta | None:
    """The pause before the next attempt after `attempts_made` failed ones; None: give up.

    `scale` (CALLBACK_RETRY_SCALE, 1 but in reliability runs) shrinks the whole schedule.
    """
    if attempts_made < 1 or attempts_made > len(RETRY_SCHEDULE):
        return None
    return RETRY_SCHEDULE[attempts_made - 1] * scale


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
