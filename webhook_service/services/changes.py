"""The record of job changes every push reads: long polls, streams and callbacks.

A row of `job_changes` is written in the transaction that changes a job (created, or one of
`CHANGE_COLUMNS` differs: status, settling, attention, retried_as, purge) and holds the job
resource's columns as they then were, the outcome and error still encrypted. It is rendered
by the poll's own definition (`polled(row).view()`, i.e. `job_fields` and `JobOut`): one shape.

Written by database triggers (migration 0017), not by a function the writers call: the
writers are many (webhook fast path and ORM path, parked sweep, reconcile, deadline,
support actions, submission results, retention purge) and some are Core UPDATEs; a trigger
is one definition that no writer, present or future, can forget, and it also records
changes made by hand in SQL. The cost is a definition in SQL, spelled out in the migration;
`tests/test_job_changes.py` checks it against `CHANGE_COLUMNS` and `RESOURCE_COLUMNS`.

Order: `seq` increases with every row. One job's changes commit in `seq` order (its row is
locked by the UPDATE until commit). Across jobs on PostgreSQL, two transactions may commit out
of `seq` order, so a reader of a client's changes orders them by (`txid`, `seq`) and leaves
out those of any transaction of this database still open when it read, and of every one
after it (`txid` at or past the oldest one open): any change committed later has a `txid`
past every one it read, so resuming after the last one read misses nothing. (The snapshot's
own xmin would do too, but it counts every database of the server: one long transaction
elsewhere would hold every stream back.) A change can so wait for an older write
transaction to end; this service's are short. SQLite has one writer at a time: `seq` is
commit order.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    LargeBinary,
    Table,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
    tuple_,
    type_coerce,
    update,
)

from webhook_service.models import JobChange
from webhook_service.schemas import JobOut
from webhook_service.services.job_views import RESOURCE_COLUMNS, Polled, polled
from webhook_service.services.jobs import JOBS

CHANGES = cast(Table, JobChange.__table__)
# How long changes are kept: streams resume and callbacks retry (about three days) from them.
CHANGE_RETENTION = timedelta(days=4)
DELETE_BATCH = 5_000


def _column(key: str) -> Any:
    return CHANGES.c["job_id" if key == "id" else key].label(key)


# A change row read as a poll reads the job: RESOURCE_COLUMNS by their names, then the raw
# outcome and error (decrypted only if rendered).
_SNAPSHOT = (
    CHANGES.c.seq,
    CHANGES.c.txid,
    *(_column(column.key) for column in RESOURCE_COLUMNS),
    type_coerce(CHANGES.c.outcome_enc, LargeBinary).label("outcome_raw"),
    type_coerce(CHANGES.c.error_message_enc, LargeBinary).label("error_raw"),
)


@dataclass(frozen=True)
class Change:
    """One change of a job: its place in the record, and the job as it then was."""

    seq: int
    txid: int
    job: Polled

    @property
    def job_id(self) -> uuid.UUID:
        return cast(uuid.UUID, self.job.row.id)

    @property
    def etag(self) -> str:
        return self.job.etag

    def view(self) -> JobOut:
        return self.job.view()


def _change(row: Any) -> Change:
    return Change(seq=row.seq, txid=row.txid, job=polled(row))


_JOB_CHANGES = (
    select(*_SNAPSHOT)
    .where(CHANGES.c.job_id == bindparam("job"), CHANGES.c.seq > bindparam("after"))
    .order_by(CHANGES.c.seq)
)


def job_changes(connection: Connection, job_id: uuid.UUID, after: int = 0) -> list[Change]:
    """A job's changes after `after`, in order (its first is its creation, if still kept)."""
    rows = connection.execute(_JOB_CHANGES, {"job": job_id, "after": after})
    return [_change(row) for row in rows]


def latest_seq(connection: Connection) -> int:
    """The newest change's seq (0 with none): where a reader of new changes starts."""
    return int(connection.execute(select(func.coalesce(func.max(CHANGES.c.seq), 0))).scalar_one())


@dataclass(frozen=True, order=True)
class Position:
    """Where a reader of a client's changes is: after (txid, seq)."""

    txid: int
    seq: int


def position_of(connection: Connection, seq: int) -> Position | None:
    """The position just after the change `seq`, or None if it is no longer kept."""
    txid = connection.execute(select(CHANGES.c.txid).where(CHANGES.c.seq == seq)).scalar()
    return None if txid is None else Position(int(txid), seq)


def client_changes(
    connection: Connection,
    client_id: int,
    after: Position,
    limit: int = 500,
    *,
    horizon: int | None = None,
) -> list[Change]:
    """A client's changes after `after`, in (txid, seq) order, only those safe to pass.

    On PostgreSQL a change of a transaction still open when this reads (or of one after the
    oldest still open) is left for a later read (see the module's note). `horizon`: that
    oldest open transaction, as `read_horizon` gave it, for a reader of several clients'
    changes in one go (the callbacks' fan-out); else it is read here.
    """
    query = (
        select(*_SNAPSHOT)
        .where(
            CHANGES.c.client_id == client_id,
            tuple_(CHANGES.c.txid, CHANGES.c.seq) > tuple_(after.txid, after.seq),
        )
        .order_by(CHANGES.c.txid, CHANGES.c.seq)
        .limit(limit)
    )
    if connection.dialect.name == "postgresql":
        horizon = read_horizon(connection) if horizon is None else horizon
        query = query.where(CHANGES.c.txid < horizon)
    return [_change(row) for row in connection.execute(query)]


_NEXT_XID = text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
_OPEN_XIDS = text(
    "SELECT backend_xid::text::bigint FROM pg_stat_activity"
    " WHERE datname = current_database() AND backend_xid IS NOT NULL"
)
_EPOCH = 2**32


def read_horizon(connection: Connection) -> int:
    """PostgreSQL: the first transaction id whose changes a reader may not pass yet, the 64-bit
    id of this database's oldest open write transaction, or the next id.

    The next id first: a transaction given an id after it is at or past it. The open ones
    show their 32-bit ids; each is within 2**32 below the next, which makes it whole.
    """
    next_xid = int(connection.execute(_NEXT_XID).scalar_one())
    open_xids = [int(x) for x in connection.execute(_OPEN_XIDS).scalars()]
    return min([next_xid, *(next_xid - ((next_xid - x) % _EPOCH) for x in open_xids)])


def start_position(connection: Connection) -> Position:
    """A position after every change already passed (for a reader starting now)."""
    if connection.dialect.name == "postgresql":
        # A change at or past the oldest open transaction may still commit: start before it.
        return Position(read_horizon(connection) - 1, 2**62)
    return Position(0, latest_seq(connection))


def purge_old_changes(connection: Connection, now: datetime) -> int:
    """Delete changes older than CHANGE_RETENTION, oldest first, in one batch; return how many.

    By `seq` (the primary key), stopping at the first one still kept: no index on time.
    """
    cutoff = now - CHANGE_RETENTION
    oldest = (
        select(CHANGES.c.seq, CHANGES.c.updated_at)
        .order_by(CHANGES.c.seq)
        .limit(DELETE_BATCH)
        .subquery()
    )
    last = connection.execute(
        select(func.max(oldest.c.seq)).where(
            oldest.c.updated_at < bindparam("cutoff", cutoff, type_=JobChange.updated_at.type)
        )
    ).scalar()
    if last is None:
        return 0
    return connection.execute(delete(CHANGES).where(CHANGES.c.seq <= last)).rowcount


def erase_purged(connection: Connection, job_ids: list[uuid.UUID]) -> None:
    """Give these (just purged) jobs' earlier changes the purged outcome and no error message:
    PHI leaves the record of changes with the job's."""
    if not job_ids:
        return
    current = select(JOBS.c.outcome_enc).where(JOBS.c.id == CHANGES.c.job_id).scalar_subquery()
    connection.execute(
        update(CHANGES)
        .where(CHANGES.c.job_id.in_(job_ids))
        .where(or_(CHANGES.c.outcome_enc.is_not(None), CHANGES.c.error_message_enc.is_not(None)))
        .values(outcome_enc=current, error_message_enc=None)
    )
