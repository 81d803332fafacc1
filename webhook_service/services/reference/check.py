"""The pre-flight check: a telephone encounter's ids against the clinic's copy of Cobalt's
lists, before it is stored.

The copy only ever helps: an id it holds is sent on; an id it lacks is refused only when the
copy was fetched moments ago (after one refresh on the miss), so an id added in the EMR this
morning is never refused; and a copy that cannot be had leaves the decision to Cobalt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, or_, select

from webhook_service.errors import FieldError, ValidationFailed
from webhook_service.schemas import TelephoneEncounterRequest
from webhook_service.services.reference.lists import ITEMS, KINDS, LISTS, field_of

log = logging.getLogger(__name__)

# A miss is refused only against a copy fetched this recently: the refresh a miss triggers
# makes one, and a second miss within the window (another process, a retry) is answered
# from it without asking Cobalt again.
FRESH = timedelta(seconds=10)


# --- The pre-flight check ----------------------------------------------------------------------


@dataclass(frozen=True)
class Miss:
    """An id the clinic's copy of a list does not hold."""

    kind: str
    ehr_id: str
    fetched_at: datetime

    @property
    def field(self) -> str:
        return field_of(self.kind)

    @property
    def code(self) -> str:
        return KINDS[self.kind]


class NotInEmrList(ValidationFailed):
    """An id the clinic's EMR does not have, by a copy of its list fetched just now.

    The problem is a validation problem (`errors`, one per field) whose entries also carry
    the error code Cobalt's own refusal would have had (`provider_not_found`, …).
    """

    slug, title = "not-in-emr-list", "Not in the clinic's EMR lists"

    def __init__(self, misses: list[Miss]) -> None:
        self.misses = misses
        super().__init__(
            "An id is not in the clinic's EMR lists; see `errors`. Nothing was stored.",
            [
                FieldError(
                    miss.field,
                    f"{miss.ehr_id!r} is not in the clinic's EMR list of {miss.kind}, "
                    f"fetched at {miss.fetched_at.strftime('%Y-%m-%dT%H:%M:%SZ')}",
                )
                for miss in misses
            ],
        )

    def problem(self) -> dict[str, Any]:
        body = super().problem()
        for entry, miss in zip(body["errors"], self.misses, strict=True):
            entry["code"] = miss.code
        return body


class StaleMiss(Exception):
    """A miss against a copy not fetched just now: refresh these lists, then check again."""

    def __init__(self, clinic_id: int, kinds: list[str]) -> None:
        super().__init__(f"refresh {kinds} of clinic {clinic_id}")
        self.clinic_id = clinic_id
        self.kinds = kinds


def _check_statement() -> Any:
    wanted = or_(*(and_(ITEMS.c.kind == kind, ITEMS.c.ehr_id == bindparam(kind)) for kind in KINDS))
    joined = LISTS.outerjoin(
        ITEMS,
        and_(ITEMS.c.clinic_id == LISTS.c.clinic_id, ITEMS.c.kind == LISTS.c.kind, wanted),
    )
    return (
        select(LISTS.c.kind, LISTS.c.fetched_at, LISTS.c.item_count, ITEMS.c.ehr_id)
        .select_from(joined)
        .where(LISTS.c.clinic_id == bindparam("clinic"))
    )


# Built once: a submission runs it on its own connection, in its own transaction.
_CHECK = _check_statement()


def wanted_ids(request: TelephoneEncounterRequest) -> dict[str, str | None]:
    """The ids a telephone encounter takes from each list (the pharmacy is optional)."""
    return {kind: getattr(request, field_of(kind)) for kind in KINDS}


def find_misses(
    connection: Connection, clinic_id: int, request: TelephoneEncounterRequest
) -> list[Miss]:
    """The request's ids that the clinic's copy lacks, in one indexed query.

    Only a list that has been fetched and holds entries can miss: a list never fetched, or
    fetched empty, proves nothing about an id (an EMR with no providers is a broken read).
    """
    wanted = wanted_ids(request)
    # PostgreSQL cannot take a NUL character in a text parameter; no stored id holds one,
    # so such an id is looked up as nothing, and misses like any id the list lacks.
    bound = {
        kind: None if ehr_id and "\x00" in ehr_id else ehr_id for kind, ehr_id in wanted.items()
    }
    rows = connection.execute(_CHECK, {"clinic": clinic_id, **bound}).all()
    return [
        Miss(row.kind, ehr_id, row.fetched_at)
        for row in rows
        if (ehr_id := wanted.get(row.kind)) is not None
        and row.ehr_id is None
        and row.fetched_at is not None
        and row.item_count > 0
    ]


def judge(misses: list[Miss], now: datetime) -> tuple[list[Miss], list[str]]:
    """The misses to refuse for (against a fresh copy), and the lists whose copy is not
    fresh: worth one refresh, and no reason to refuse if that refresh cannot be had."""
    fresh = [miss for miss in misses if now - miss.fetched_at <= FRESH]
    stale = sorted({miss.kind for miss in misses if now - miss.fetched_at > FRESH})
    return fresh, stale


class KnownIds:
    """One process's memory of the ids each clinic's copy held when it last read them.

    Every id a submission sends being there answers the check with no query at all (the
    common case, on the hot path). Anything else asks the database, which decides. A stale
    memory can only say "known" for an id removed since: the submission then goes to Cobalt,
    which decides, as it would with the check off. So it is kept `MEMORY` at most.
    """

    MEMORY = 30.0  # seconds

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ids: dict[tuple[int, str], tuple[float, frozenset[str]]] = {}

    def hold_all(
        self, connection: Connection, clinic_id: int, wanted: dict[str, str | None]
    ) -> bool:
        """True when every id in `wanted` is in the clinic's copy (as last read, or read now)."""
        return all(
            ehr_id in self._ids_of(connection, clinic_id, kind)
            for kind, ehr_id in wanted.items()
            if ehr_id is not None
        )

    def _ids_of(self, connection: Connection, clinic_id: int, kind: str) -> frozenset[str]:
        now = self._clock()
        with self._lock:
            held = self._ids.get((clinic_id, kind))
        if held is not None and now - held[0] < self.MEMORY:
            return held[1]
        ids = frozenset(connection.execute(_IDS, {"clinic": clinic_id, "kind": kind}).scalars())
        with self._lock:
            self._ids[(clinic_id, kind)] = (now, ids)
        return ids


_IDS = select(ITEMS.c.ehr_id).where(
    ITEMS.c.clinic_id == bindparam("clinic"), ITEMS.c.kind == bindparam("kind")
)


def preflight(
    connection: Connection,
    clinic_id: int,
    request: TelephoneEncounterRequest,
    now: datetime,
    *,
    may_refresh: bool,
    known: KnownIds | None = None,
) -> None:
    """Refuse a telephone encounter whose ids the clinic's EMR lists lack (NotInEmrList),
    or ask for a refresh first (StaleMiss). Says nothing when the copy cannot tell."""
    if known is not None and known.hold_all(connection, clinic_id, wanted_ids(request)):
        return
    misses = find_misses(connection, clinic_id, request)
    if not misses:
        return
    refused, stale = judge(misses, now)
    if stale and may_refresh:
        raise StaleMiss(clinic_id, stale)
    if refused:
        log.info(
            "pre-flight refused",
            extra={"clinic_id": clinic_id, "fields": [miss.field for miss in refused]},
        )
        raise NotInEmrList(refused)
