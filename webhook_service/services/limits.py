"""Abuse limits every web process shares: counters in the database, not in one process.

A fixed window per key (`submit:<client id>`, `sign-in:<address>`): one row, bumped by one
atomic upsert that answers the new count, and reset in place when its window has passed, so
the table holds one row per key (a client, or an address that failed to sign in lately).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, case, delete, func, select, text
from sqlalchemy.dialects import postgresql, sqlite

from webhook_service.errors import BacklogFull, RateLimited
from webhook_service.models import DUE_PREDICATE, Job, RateCounter

COUNTERS = cast(Table, RateCounter.__table__)
_JOBS = cast(Table, Job.__table__)
SUBMISSION_WINDOW_SECONDS = 60
SIGN_IN_WINDOW_SECONDS = 15 * 60
_SIGN_IN = "sign-in:"


def _upsert(insert: Any) -> Any:
    statement = insert(COUNTERS)
    current = COUNTERS.c.window_start == statement.excluded.window_start
    # Both SET expressions read the row as it was, so `count` sees the old window.
    return statement.on_conflict_do_update(
        index_elements=[COUNTERS.c.key],
        set_={
            "count": case((current, COUNTERS.c.count + 1), else_=1),
            "window_start": statement.excluded.window_start,
        },
    ).returning(COUNTERS.c.count)


# Built once per dialect: the hot path reuses the compiled statement.
_BUMP = {"postgresql": _upsert(postgresql.insert), "sqlite": _upsert(sqlite.insert)}
_WAITING = select(func.count()).select_from(_JOBS).where(text(DUE_PREDICATE))


@dataclass(frozen=True)
class Window:
    """Where `now` falls in a fixed window of `seconds`."""

    start: int
    seconds_left: int

    @classmethod
    def at(cls, now: datetime, seconds: int) -> Window:
        epoch = int(now.timestamp())
        start = epoch - epoch % seconds
        return cls(start, start + seconds - epoch)


def bump(connection: Connection, key: str, window: Window) -> int:
    """Count one more hit on `key` in `window` and answer the count so far."""
    count: int = connection.execute(
        _BUMP[connection.dialect.name], {"key": key, "window_start": window.start, "count": 1}
    ).scalar_one()
    return count


def count_submission(connection: Connection, client_id: int, *, limit: int, now: datetime) -> None:
    """Count a front end's submission; over `limit` a minute, refuse it (429).

    Run in the submission's own transaction: a refused or failed submission rolls its count
    back, and the counter costs one statement, not a second commit. `limit` 0: no limit.
    """
    if limit <= 0:
        return
    window = Window.at(now, SUBMISSION_WINDOW_SECONDS)
    if bump(connection, f"submit:{client_id}", window) > limit:
        raise RateLimited(
            f"This client may submit {limit} jobs a minute; try again in {window.seconds_left} s.",
            retry_after=window.seconds_left,
        )


def count_sign_in(connection: Connection, address: str, *, limit: int, now: datetime) -> None:
    """Count a console sign-in attempt from `address`; past `limit` attempts since its last
    success in a quarter of an hour, refuse it (429) before any token is looked at.

    Counted first, in one atomic statement, so concurrent guesses cannot all slip under the
    limit; on a success, `forget_sign_in_failures` clears the address's count. `limit` 0: no
    throttle.
    """
    if limit <= 0:
        return
    window = Window.at(now, SIGN_IN_WINDOW_SECONDS)
    if bump(connection, _SIGN_IN + address, window) > limit:
        minutes = -(-window.seconds_left // 60)
        raise RateLimited(
            f"Too many failed sign-ins from your address. Try again in {minutes} "
            f"minute{'s' if minutes != 1 else ''}.",
            retry_after=window.seconds_left,
        )


def forget_sign_in_failures(connection: Connection, address: str, now: datetime) -> None:
    """A sign-in from `address` succeeded: forget its failures, and every address's from
    windows that have passed (so failed addresses leave no rows behind)."""
    window = Window.at(now, SIGN_IN_WINDOW_SECONDS)
    connection.execute(
        delete(COUNTERS).where(
            (COUNTERS.c.key == _SIGN_IN + address)
            | (COUNTERS.c.key.startswith(_SIGN_IN) & (COUNTERS.c.window_start < window.start))
        )
    )


def waiting_jobs(connection: Connection) -> int:
    """How many jobs wait to be sent to Cobalt (pending, waiting their turn, retrying)."""
    count: int = connection.execute(_WAITING).scalar_one()
    return count


def check_backlog(waiting: int, *, limit: int, retry_after: int) -> None:
    """Refuse new submissions (503) while `waiting` jobs reach `limit`; 0: no cap."""
    if limit > 0 and waiting >= limit:
        raise BacklogFull(
            f"{waiting} jobs are waiting to be sent to the EMR; try again shortly.",
            retry_after=retry_after,
        )
