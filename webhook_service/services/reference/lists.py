"""Each clinic's copy of Cobalt's provider, location and pharmacy lists: reading them from
Cobalt, storing them, reading them back, and the worker's schedule for fetching them."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from webhook_service.cobalt import (
    CobaltClient,
    CobaltError,
    CobaltRejected,
    CobaltTransient,
    CobaltUnreadable,
)
from webhook_service.db import SessionFactory, transaction
from webhook_service.lifecycle import (
    ERROR_CODES,
    LOCATION_NOT_FOUND,
    PHARMACY_NOT_FOUND,
    PROVIDER_NOT_FOUND,
)
from webhook_service.models import Clinic, ReferenceItem, ReferenceList

log = logging.getLogger(__name__)

# Cobalt's list (its path and the key its answer holds it under) → the error code a miss in
# it is refused with; the request field is the registry's (`lifecycle.ERROR_CODES`).
KINDS: dict[str, str] = {
    "providers": PROVIDER_NOT_FOUND,
    "locations": LOCATION_NOT_FOUND,
    "pharmacies": PHARMACY_NOT_FOUND,
}
# After a failed fetch the worker tries again this soon (or at the TTL, if that is sooner).
RETRY_FAILED = timedelta(seconds=60)
# Beyond this many entries a list is taken to be something other than a clinic's list.
MAX_ITEMS = 10_000

# The two tables for Core statements (the check and the copy share them).
LISTS = cast(Table, ReferenceList.__table__)
ITEMS = cast(Table, ReferenceItem.__table__)


def field_of(kind: str) -> str:
    """The request field whose ids come from Cobalt's list `kind`."""
    field = ERROR_CODES[KINDS[kind]].field
    assert field is not None  # each of the three codes names its field
    return field


# --- Reading Cobalt's lists ------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One entry of a list, as the copy keeps it and the API shows it."""

    ehr_id: str
    name: str
    status: str | None


def read_items(raw: list[Any]) -> list[Item]:
    """The usable entries of a list as Cobalt sent it (each needs an `ehr_id`).

    A list with entries none of which is usable is not the list asked for
    (CobaltUnreadable), so a copy is never replaced by nothing because Cobalt's shape moved.
    """
    items: dict[str, Item] = {}
    for entry in raw[: MAX_ITEMS + 1]:
        if not isinstance(entry, dict):
            continue
        ehr_id = _text(entry.get("ehr_id"))
        if ehr_id is None or len(ehr_id) > 200:
            continue
        name = _text(entry.get("name")) or " ".join(
            part for key in ("first_name", "last_name") if (part := _text(entry.get(key)))
        )
        status = _text(entry.get("status"))
        items.setdefault(ehr_id, Item(ehr_id, (name or ehr_id)[:300], status and status[:40]))
    if len(raw) > MAX_ITEMS or (raw and not items):
        raise CobaltUnreadable(f"a list of {len(raw)} entries, {len(items)} with an ehr_id")
    return list(items.values())


def _text(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    return text or None


def fetch_list(cobalt: CobaltClient, access_token: str, kind: str) -> list[Item]:
    """One of Cobalt's lists, read (raises CobaltError when it cannot be had)."""
    return read_items(cobalt.reference_list(access_token, kind))


def describe_failure(exc: CobaltError) -> str:
    """Why a list could not be had, in a line for the console (no PHI: classes and statuses)."""
    if isinstance(exc, CobaltRejected):
        return f"Cobalt refused the read ({exc.status_code}, {exc.code})"
    if isinstance(exc, CobaltUnreadable):
        return f"Cobalt's answer held no readable list ({exc})"[:200]
    if isinstance(exc, CobaltTransient):
        status = f" {exc.status_code}" if exc.status_code else ""
        return f"Cobalt unreachable or failing ({exc.reason}{status})"[:200]
    return f"Cobalt call failed ({type(exc).__name__})"


# --- The copy ----------------------------------------------------------------------------------


def _upsert_list(insert_: Any) -> Any:
    statement = insert_(LISTS)
    return statement.on_conflict_do_update(
        index_elements=[LISTS.c.clinic_id, LISTS.c.kind],
        set_={
            "fetched_at": statement.excluded.fetched_at,
            "attempted_at": statement.excluded.attempted_at,
            "item_count": statement.excluded.item_count,
            "error": statement.excluded.error,
        },
    )


_UPSERT_LIST = {
    "postgresql": _upsert_list(postgresql.insert),
    "sqlite": _upsert_list(sqlite.insert),
}


def record_fetch(
    connection: Connection, clinic_id: int, kind: str, items: list[Item], now: datetime
) -> None:
    """Replace the clinic's copy of list `kind` with `items`, fetched at `now`.

    The list's row is written first: its lock makes two refreshes of the same list (two
    web processes on a miss, the worker) take turns instead of colliding on the items' keys.
    """
    connection.execute(
        _UPSERT_LIST[connection.dialect.name],
        {
            "clinic_id": clinic_id,
            "kind": kind,
            "fetched_at": now,
            "attempted_at": now,
            "item_count": len(items),
            "error": None,
        },
    )
    connection.execute(delete(ITEMS).where(ITEMS.c.clinic_id == clinic_id, ITEMS.c.kind == kind))
    if items:
        connection.execute(
            insert(ITEMS),
            [
                {
                    "clinic_id": clinic_id,
                    "kind": kind,
                    "ehr_id": item.ehr_id,
                    "name": item.name,
                    "status": item.status,
                }
                for item in items
            ],
        )


def record_failure(
    connection: Connection, clinic_id: int, kind: str, error: str, now: datetime
) -> None:
    """Note a fetch that failed; the copy already held (if any) stays as it was."""
    done = connection.execute(
        update(LISTS)
        .where(LISTS.c.clinic_id == clinic_id, LISTS.c.kind == kind)
        .values(attempted_at=now, error=error[:200])
    )
    if done.rowcount == 0:
        connection.execute(
            _UPSERT_LIST[connection.dialect.name],
            {
                "clinic_id": clinic_id,
                "kind": kind,
                "fetched_at": None,
                "attempted_at": now,
                "item_count": 0,
                "error": error[:200],
            },
        )


@dataclass(frozen=True)
class ListCopy:
    """A clinic's copy of one list, as the API and the console show it."""

    clinic_id: int
    kind: str
    items: list[Item]
    fetched_at: datetime | None
    attempted_at: datetime | None
    error: str | None

    def body(self) -> dict[str, Any]:
        """The API's answer: `{"items": [{ehr_id, name, status}], "fetched_at"}`."""
        return {
            "items": [{"ehr_id": i.ehr_id, "name": i.name, "status": i.status} for i in self.items],
            "fetched_at": self.fetched_at,
        }

    def etag(self) -> str:
        """Changes whenever the answer does (a new fetch, or a new list)."""
        text = json.dumps(self.body(), default=str, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def read_copy(connection: Connection, clinic_id: int, kind: str) -> ListCopy:
    """The clinic's copy of list `kind`, ordered by name (empty when never fetched)."""
    state = connection.execute(
        select(LISTS.c.fetched_at, LISTS.c.attempted_at, LISTS.c.error).where(
            LISTS.c.clinic_id == clinic_id, LISTS.c.kind == kind
        )
    ).one_or_none()
    rows = connection.execute(
        select(ITEMS.c.ehr_id, ITEMS.c.name, ITEMS.c.status)
        .where(ITEMS.c.clinic_id == clinic_id, ITEMS.c.kind == kind)
        .order_by(ITEMS.c.name, ITEMS.c.ehr_id)
    ).all()
    return ListCopy(
        clinic_id=clinic_id,
        kind=kind,
        items=[Item(row.ehr_id, row.name, row.status) for row in rows],
        fetched_at=state.fetched_at if state else None,
        attempted_at=state.attempted_at if state else None,
        error=state.error if state else None,
    )


# --- Refreshing --------------------------------------------------------------------------------


def refresh_lists(
    sessions: SessionFactory,
    cobalt: CobaltClient,
    clinic_id: int,
    kinds: Iterable[str],
    clock: Callable[[], datetime],
) -> dict[str, str | None]:
    """Fetch the clinic's lists `kinds` from Cobalt and store each; answer each one's error
    (None: fetched). Never raises for Cobalt's sake: a failure is recorded, the copy kept.

    Unlike other services it opens its own short transactions, because it must hold none
    while Cobalt answers (the web process calls it on a miss, the worker on its schedule,
    the console on a click): one to read the clinic's token, one per list to store it.
    """
    with transaction(sessions) as session:
        clinic = session.get(Clinic, clinic_id)
        token = clinic.access_token if clinic is not None else ""
    results: dict[str, str | None] = {}
    for kind in kinds:
        items: list[Item] | None = None
        error: str | None = "the clinic has no access token"
        if token:
            try:
                items = fetch_list(cobalt, token, kind)
                error = None
            except CobaltError as exc:
                error = describe_failure(exc)
        with transaction(sessions) as session:
            if items is None:
                record_failure(session.connection(), clinic_id, kind, error or "", clock())
            else:
                record_fetch(session.connection(), clinic_id, kind, items, clock())
        results[kind] = error
        log.info(
            "reference list refreshed" if items is not None else "reference list not refreshed",
            extra={
                "clinic_id": clinic_id,
                "list": kind,
                "items": len(items) if items is not None else None,
            },
        )
    return results


def claim_due_lists(
    connection: Connection, now: datetime, ttl: timedelta
) -> list[tuple[int, list[str]]]:
    """The clinics' lists the worker should fetch now, each claimed (its `attempted_at` set)
    so another worker process passes it by: never tried, last tried `ttl` ago, or failed
    and last tried a minute ago. Clinics waiting to be re-linked are left alone."""
    clinics = connection.execute(
        select(Clinic.id).where(Clinic.needs_relink.is_(False)).order_by(Clinic.id)
    ).scalars()
    tried = {
        (row.clinic_id, row.kind): row
        for row in connection.execute(
            select(LISTS.c.clinic_id, LISTS.c.kind, LISTS.c.attempted_at, LISTS.c.error)
        )
    }
    retry = min(ttl, RETRY_FAILED)
    due: list[tuple[int, list[str]]] = []
    for clinic_id in clinics:
        kinds = []
        for kind in KINDS:
            row = tried.get((clinic_id, kind))
            if row is None:
                claimed = connection.execute(
                    _CLAIM_NEW[connection.dialect.name],
                    {"clinic_id": clinic_id, "kind": kind, "attempted_at": now, "item_count": 0},
                ).rowcount
            elif row.attempted_at is None or row.attempted_at <= now - (
                retry if row.error else ttl
            ):
                claimed = connection.execute(
                    update(LISTS)
                    .where(
                        LISTS.c.clinic_id == clinic_id,
                        LISTS.c.kind == kind,
                        LISTS.c.attempted_at.is_(None)
                        if row.attempted_at is None
                        else LISTS.c.attempted_at == row.attempted_at,
                    )
                    .values(attempted_at=now)
                ).rowcount
            else:
                claimed = 0
            if claimed:
                kinds.append(kind)
        if kinds:
            due.append((clinic_id, kinds))
    return due


def _claim_new(insert_: Any) -> Any:
    keys = [LISTS.c.clinic_id, LISTS.c.kind]
    return insert_(LISTS).on_conflict_do_nothing(index_elements=keys)


_CLAIM_NEW = {"postgresql": _claim_new(postgresql.insert), "sqlite": _claim_new(sqlite.insert)}
