"""Callbacks to front ends (issue 20): endpoints and their secrets, deliveries made from the
record of job changes, the retry schedule, disabling, and support's view and resend.

A delivery is one change of one job for one endpoint; the worker claims a due one with a
lease (as it claims jobs), POSTs it with no transaction open, then records the attempt.
"""

from webhook_service.services.callbacks.deliveries import (
    FAN_OUT_BATCH,
    Outgoing,
    add_delivery,
    claim_due_delivery,
    fan_out,
    purge_delivery_bodies,
    record_attempt,
)
from webhook_service.services.callbacks.endpoints import (
    check_callback_url,
    enable_endpoint,
    endpoint_view,
    frontend_named,
    read_endpoint,
    register_endpoint,
    remove_endpoint,
    rotate_secret,
)
from webhook_service.services.callbacks.rules import (
    DISABLE_AFTER,
    RETRY_SCHEDULE,
    ROTATION_OVERLAP,
    DeliveryState,
    EndpointState,
    event_body,
    retry_delay,
    signing_secrets,
)
from webhook_service.services.callbacks.support import (
    callback_delivery,
    list_deliveries,
    list_endpoints,
    read_callback_delivery,
    resend_delivery,
)

__all__ = [
    "DISABLE_AFTER",
    "FAN_OUT_BATCH",
    "RETRY_SCHEDULE",
    "ROTATION_OVERLAP",
    "DeliveryState",
    "EndpointState",
    "Outgoing",
    "add_delivery",
    "callback_delivery",
    "check_callback_url",
    "claim_due_delivery",
    "enable_endpoint",
    "endpoint_view",
    "event_body",
    "fan_out",
    "frontend_named",
    "list_deliveries",
    "list_endpoints",
    "purge_delivery_bodies",
    "read_callback_delivery",
    "read_endpoint",
    "record_attempt",
    "register_endpoint",
    "remove_endpoint",
    "resend_delivery",
    "retry_delay",
    "rotate_secret",
    "signing_secrets",
]
