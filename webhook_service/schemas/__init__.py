"""Request and response shapes at the HTTP edge: front ends' (`api`) and support's (`support`).

Callers import them from here, `webhook_service.schemas`, whichever module defines them.
"""

from webhook_service.schemas.api import (
    JobOut,
    NoteRequest,
    Problem,
    TelephoneEncounterRequest,
    WebhookAck,
    field_errors,
)
from webhook_service.schemas.support import (
    MAX_PAGE,
    ChartOutcomeRequest,
    DeliveryBodyOut,
    DeliveryOut,
    InboxOut,
    InboxQuery,
    JobFilters,
    JobListOut,
    JobPageQuery,
    JobSearchRequest,
    ReconcileLookupOut,
    ReconcileOut,
    ReplayOut,
    ReplayRequest,
    RetryRequest,
    StaffAction,
    SupportJobOut,
    TimelineEntry,
    TimelineOut,
    encode_cursor,
)

__all__ = [
    "MAX_PAGE",
    "ChartOutcomeRequest",
    "DeliveryBodyOut",
    "DeliveryOut",
    "InboxOut",
    "InboxQuery",
    "JobFilters",
    "JobListOut",
    "JobOut",
    "JobPageQuery",
    "JobSearchRequest",
    "NoteRequest",
    "Problem",
    "ReconcileLookupOut",
    "ReconcileOut",
    "ReplayOut",
    "ReplayRequest",
    "RetryRequest",
    "StaffAction",
    "SupportJobOut",
    "TelephoneEncounterRequest",
    "TimelineEntry",
    "TimelineOut",
    "WebhookAck",
    "encode_cursor",
    "field_errors",
]
