"""Pre-flight: each clinic's copy of Cobalt's provider, location and pharmacy lists
(`lists`), and the check a telephone encounter passes against it before it is stored
(`check`)."""

from webhook_service.services.reference.check import (
    FRESH,
    KnownIds,
    Miss,
    NotInEmrList,
    StaleMiss,
    find_misses,
    judge,
    preflight,
    wanted_ids,
)
from webhook_service.services.reference.lists import (
    KINDS,
    RETRY_FAILED,
    Item,
    ListCopy,
    claim_due_lists,
    describe_failure,
    fetch_list,
    field_of,
    read_copy,
    read_items,
    record_failure,
    record_fetch,
    refresh_lists,
)

__all__ = [
    "FRESH",
    "KINDS",
    "RETRY_FAILED",
    "Item",
    "KnownIds",
    "ListCopy",
    "Miss",
    "NotInEmrList",
    "StaleMiss",
    "claim_due_lists",
    "describe_failure",
    "fetch_list",
    "field_of",
    "find_misses",
    "judge",
    "preflight",
    "read_copy",
    "read_items",
    "record_failure",
    "record_fetch",
    "refresh_lists",
    "wanted_ids",
]
