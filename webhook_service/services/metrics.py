"""Metrics shared by every process: counts flushed into the database, gauges read from it,
and the worker processes' heartbeats.

Web runs several gunicorn processes and the worker is another machine, so no process can
answer for the others from memory. Each process counts into its own `metrics.TALLY` and a
`Flusher` adds those counts to `metric_counters` (one upsert per sample, additive, so totals
stay monotonic across processes and restarts); `GET /metrics`, served by any web process,
reads the totals and computes the gauges from the jobs and deliveries at scrape time.

The scrape stays cheap on a million jobs: every gauge reads an index, and only a bounded part
of it (open jobs, jobs needing a person, the last hour's finished jobs and deliveries, the
inbox). Totals over all history of settled jobs are not counted at scrape time: that would
read every job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, cast

from sqlalchemy import Connection, Select, Table, delete, event, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from webhook_service import metrics
from webhook_service.clock import Clock
from webhook_service.db import SessionFactory, transaction
from webhook_service.lifecycle import JobStatus
from webhook_service.logs import log_failure
from webhook_service.models import (
    ATTENTION_PREDICATE,
    PURGE_PREDICATE,
    Job,
    MetricCounter,
    WebhookDelivery,
    WorkerHeartbeat,
)
from webhook_service.services.deliveries import DeliveryState
from webhook_service.services.limits import waiting_jobs
from webhook_service.services.support_inbox import INBOX_STATES

log = logging.getLogger(__name__)

FLUSH_EVERY: Final = 5.0  # seconds between flushes (and heartbeats) of a worker process
# A worker not seen for this long is taken to be stopped: twelve missed heartbeats, well
# past a slow flush or a busy database.
WORKER_SILENT_AFTER: Final = timedelta(seconds=60)
# Heartbeat rows of processes gone for this long are deleted by the next heartbeat.
HEARTBEAT_KEEP: Final = timedelta(days=1)
# The window of the "last hour" gauges (finished jobs, deliveries received).
RECENT: Final = timedelta(hours=1)

COUNTERS = cast(Table, MetricCounter.__table__)
HEARTBEATS = cast(Table, WorkerHeartbeat.__table__)
DELIVERY_STATES: Final = tuple(
    value for name, value in vars(DeliveryState).items() if name.isupper()
)
FINISHED_STATUSES: Final = (JobStatus.COMPLETED, JobStatus.PARTIAL, JobStatus.FAILED)


# --- Counting -----------------------------------------------------------------------------


def on_commit(session: Session, count: Callable[[], None]) -> None:
    """Count once the session's transaction commits (a rolled-back one counts nothing)."""
    event.listen(session, "after_commit", lambda _session: count(), once=True)


def _additive_upsert(insert: Any) -> Any:
    statement = insert(COUNTERS)
    return statement.on_conflict_do_update(
        index_elements=[COUNTERS.c.sample, COUNTERS.c.labels],
        set_={"value": COUNTERS.c.value + statement.excluded.value},
    )


_ADD = {
    "postgresql": _additive_upsert(postgresql.insert),
    "sqlite": _additive_upsert(sqlite.insert),
}


def add_counts(connection: Connection, deltas: Mapping[metrics.Key, float]) -> None:
    """Add a process's counts to the shared totals (one statement, every sample). In one
    order (sorted), so two processes flushing at once wait for each other, never deadlock."""
    if deltas:
        connection.execute(
            _ADD[connection.dialect.name],
            [
                {"sample": sample, "labels": labels, "value": value}
                for (sample, labels), value in sorted(deltas.items())
            ],
        )


# --- Heartbeats ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Heartbeat:
    """Who beats: one worker process (a fresh id each start, so a reused pid is a new row)."""

    id: str
    hostname: str
    pid: int
    started_at: datetime

    @classmethod
    def for_this_process(cls, now: datetime) -> Heartbeat:
        return cls(uuid.uuid4().hex, socket.gethostname()[:255], os.getpid(), now)


def _beat_upsert(insert: Any) -> Any:
    statement = insert(HEARTBEATS)
    return statement.on_conflict_do_update(
        index_elements=[HEARTBEATS.c.id],
        set_={"last_seen_at": statement.excluded.last_seen_at},
    )


_BEAT = {"postgresql": _beat_upsert(postgresql.insert), "sqlite": _beat_upsert(sqlite.insert)}


def beat(connection: Connection, heartbeat: Heartbeat, now: datetime) -> None:
    """Record that this worker process is alive now; forget processes long gone."""
    connection.execute(
        _BEAT[connection.dialect.name],
        {
            "id": heartbeat.id,
            "hostname": heartbeat.hostname,
            "pid": heartbeat.pid,
            "started_at": heartbeat.started_at,
            "last_seen_at": now,
        },
    )
    connection.execute(delete(HEARTBEATS).where(HEARTBEATS.c.last_seen_at < now - HEARTBEAT_KEEP))


@dataclass(frozen=True)
class WorkerStatus:
    """What the heartbeats say: when a worker was last seen, how many are alive."""

    last_seen_at: datetime | None
    seconds_since: float | None  # since the newest heartbeat; None: no worker ever seen
    live: int  # worker processes seen within WORKER_SILENT_AFTER
    silent_after: timedelta = WORKER_SILENT_AFTER

    @property
    def silent(self) -> bool:
        """No worker seen lately: jobs are not being sent, nor outcomes looked up."""
        return self.live == 0


def worker_status(connection: Connection, now: datetime) -> WorkerStatus:
    seen = list(connection.scalars(select(WorkerHeartbeat.last_seen_at)))
    if not seen:
        return WorkerStatus(None, None, 0)
    newest = max(seen)
    live = sum(1 for at in seen if now - at <= WORKER_SILENT_AFTER)
    return WorkerStatus(newest, max(0.0, (now - newest).total_seconds()), live)


# --- Flushing -----------------------------------------------------------------------------


@dataclass
class Flusher:
    """Writes a process's counts (and, for a worker process, its heartbeat) in one short
    transaction. A flush that fails puts its counts back for the next one."""

    sessions: SessionFactory
    clock: Clock
    heartbeat: Heartbeat | None = None
    tally: metrics.Tally = field(default_factory=lambda: metrics.TALLY)

    def flush(self) -> None:
        deltas = self.tally.drain()
        try:
            with transaction(self.sessions) as session:
                connection = session.connection()
                add_counts(connection, deltas)
                if self.heartbeat is not None:
                    beat(connection, self.heartbeat, self.clock())
        except BaseException:
            self.tally.restore(deltas)
            raise

    def flush_quietly(self) -> None:
        """Flush; a failure is logged (the counts wait for the next flush), never raised."""
        try:
            self.flush()
        except Exception as exc:
            log_failure(log, "metrics flush failed", exc)

    def run(self, stop: threading.Event) -> None:
        """Flush now and every FLUSH_EVERY seconds until `stop` is set (the caller flushes
        once more when the process's work is done)."""
        self.flush_quietly()
        while not stop.wait(FLUSH_EVERY):
            self.flush_quietly()


# --- Reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Everything `GET /metrics` shows, read in one transaction."""

    processing: dict[str, int]  # open jobs by submission state
    oldest_processing_seconds: float  # 0 when none is open
    waiting_to_send: int
    attention: dict[str, int]  # open jobs needing a person, by attention code
    finished_recently: dict[str, int]  # jobs settled within RECENT, by status
    deliveries_recently: dict[str, int]  # webhook deliveries received within RECENT, by state
    inbox: dict[str, int]  # deliveries that need a person, by state (all of them)
    counters: dict[metrics.Key, float]  # the flushed totals
    worker: WorkerStatus


# Literal predicates, spelled as the partial indexes' (see models.py), so PostgreSQL uses them.
_PROCESSING = Job.status == JobStatus.PROCESSING


def snapshot(connection: Connection, now: datetime) -> Snapshot:
    """Read the gauges and the totals. Each query reads an index, and a bounded part of it."""
    processing = _grouped(
        connection,
        select(Job.submission_state, func.count())
        .where(_PROCESSING)
        .group_by(Job.submission_state),
    )
    oldest = connection.scalar(select(func.min(Job.created_at)).where(_PROCESSING))
    attention = _grouped(
        connection,
        select(Job.attention_code, func.count())
        .where(text(ATTENTION_PREDICATE))
        .group_by(Job.attention_code),
    )
    finished = _grouped(
        connection,
        select(Job.status, func.count())
        .where(text(PURGE_PREDICATE), Job.finished_at >= now - RECENT)
        .group_by(Job.status),
    )
    deliveries = _grouped(
        connection,
        select(WebhookDelivery.state, func.count())
        .where(
            WebhookDelivery.state.in_(DELIVERY_STATES),
            WebhookDelivery.received_at >= now - RECENT,
        )
        .group_by(WebhookDelivery.state),
    )
    inbox = _grouped(
        connection,
        select(WebhookDelivery.state, func.count())
        .where(WebhookDelivery.state.in_(INBOX_STATES))
        .group_by(WebhookDelivery.state),
    )
    counters = {
        (row.sample, row.labels): row.value
        for row in connection.execute(
            select(COUNTERS.c.sample, COUNTERS.c.labels, COUNTERS.c.value)
        )
    }
    return Snapshot(
        processing=processing,
        oldest_processing_seconds=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        waiting_to_send=waiting_jobs(connection),
        attention=attention,
        finished_recently={str(s): finished.get(s, 0) for s in FINISHED_STATUSES},
        deliveries_recently={s: deliveries.get(s, 0) for s in DELIVERY_STATES},
        inbox={s: inbox.get(s, 0) for s in INBOX_STATES},
        counters=counters,
        worker=worker_status(connection, now),
    )


def _grouped(connection: Connection, query: Select[*tuple[Any, ...]]) -> dict[str, int]:
    """A `(key, count)` query's rows as a dict."""
    return {str(key): int(count) for key, count in connection.execute(query)}
