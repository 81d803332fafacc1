"""Wake-ups: tell the requests a web process holds (long polls, streams) that a job changed.

One watcher per web process, started with the process (`wsgi.py`; else by the first request
that waits), whichever process committed the change (another web process took the
webhook, the worker reconciled):

- PostgreSQL: one connection per process LISTENs on `job_changes`; migration 0017's trigger
  sends the NOTIFY in the changing transaction, so it arrives when, and only if, the change
  commits. The connection is pinged every `heartbeat` seconds; when it drops (or a ping
  fails) every waiter is woken to re-check, at once and again once it is back, so a missed
  notification costs a re-check, never a change answered 304. No waiter reads the table to
  learn of a change: it reads its job when woken. Each change is also passed to `on_change`
  (the poll cache forgets the job), and `fresh_epoch` says whether the listener vouches that
  nothing was missed (http/poll_cache.py).
- SQLite (no LISTEN): the same thread reads `job_changes` past the last seq it saw every
  `fallback_interval` seconds while anyone waits, one query per process whatever the number
  of waiters, and wakes the waiters of the jobs and clients it finds.

A waiter registers before it reads its job (`watch`), so a change committed between its
read and its wait still wakes it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url

from webhook_service.db import APPLICATION_NAME_PREFIX
from webhook_service.models import JobChange
from webhook_service.services.changes import latest_seq

log = logging.getLogger("webhook_service.wakeups")

CHANNEL = "job_changes"
# A listener whose last ping answered longer ago than this is not trusted to have relayed every
# change (a connection can die without a word): the poll cache (http/poll_cache.py) asks the
# database again. Pings come every `heartbeat` (0.5 s), so a live listener is always fresher.
FRESH_SECONDS = 1.0


class Watch:
    """One waiter's registration: woken by a change of its job or client (of any job, with
    `every`), or a broadcast."""

    __slots__ = ("_event", "client_id", "job_id")

    def __init__(self, job_id: uuid.UUID | None, client_id: int | None) -> None:
        self.job_id = job_id
        self.client_id = client_id
        self._event = threading.Event()

    def wake(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; True if woken (and ready to be woken again)."""
        woken = self._event.wait(max(0.0, timeout))
        self._event.clear()
        return woken


class Wakeups:
    """The process's waiters, and the thread that wakes them."""

    def __init__(
        self,
        engine: Engine,
        *,
        name: str = "web-listen",
        heartbeat: float = 0.5,
        fallback_interval: float = 0.5,
        reconnect_delay: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        # The listening connection's `application_name` suffix (README, "Connection budget").
        self.name = name
        self._postgres = engine.dialect.name == "postgresql"
        self.heartbeat = heartbeat
        self.fallback_interval = fallback_interval
        self.reconnect_delay = reconnect_delay
        self._lock = threading.Lock()
        self._by_job: dict[uuid.UUID, set[Watch]] = {}
        self._by_client: dict[int, set[Watch]] = {}
        self._all: set[Watch] = set()
        self._every: set[Watch] = set()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stopping = threading.Event()
        self.listening = False  # PostgreSQL: LISTEN is in place on a live connection
        self.reconnects = 0
        self._clock = clock
        # (epoch, listening, last ping answered): one tuple, replaced whole, so a reader sees
        # one consistent state. The epoch moves on every LISTEN and every drop: what was read
        # in one epoch is not vouched for by a listener of another.
        self._state: tuple[int, bool, float] = (0, False, 0.0)
        # Called with each changed job's id (the poll cache evicts it), before waiters wake.
        self.on_change: Callable[[uuid.UUID], None] | None = None

    @property
    def stopping(self) -> bool:
        """The process is shutting down: held requests answer now, streams end."""
        return self._stopping.is_set()

    @contextmanager
    def watch(
        self, *, job_id: uuid.UUID | None = None, client_id: int | None = None, every: bool = False
    ) -> Iterator[Watch]:
        """Register a waiter for the block (before reading what it waits on)."""
        self._ensure_started()
        watch = Watch(job_id, client_id)
        with self._lock:
            self._all.add(watch)
            if every:
                self._every.add(watch)
            if job_id is not None:
                self._by_job.setdefault(job_id, set()).add(watch)
            if client_id is not None:
                self._by_client.setdefault(client_id, set()).add(watch)
        try:
            yield watch
        finally:
            with self._lock:
                self._all.discard(watch)
                self._every.discard(watch)
                _remove(self._by_job, job_id, watch)
                _remove(self._by_client, client_id, watch)

    def start(self) -> None:
        """Start the watcher now (the web process starts it, for the poll cache), not waiting."""
        self._ensure_started(wait=False)

    def fresh_epoch(self) -> int | None:
        """The listener's epoch if it is LISTENing and its last ping answered under
        FRESH_SECONDS ago, so every change committed before that ping was relayed; else None
        (SQLite, down, reconnecting, or silent)."""
        epoch, listening, pinged = self._state
        if not listening or self._clock() - pinged >= FRESH_SECONDS:
            return None
        return epoch

    def _set_state(
        self, *, listening: bool, pinged: float | None = None, new: bool = False
    ) -> None:
        """A ping answered (same epoch), or a new epoch: LISTENing again, or dropped."""
        epoch, _, last = self._state
        if new or not listening:
            epoch += 1
        self._state = (epoch, listening, last if pinged is None else pinged)

    def waiting(self) -> int:
        with self._lock:
            return len(self._all)

    def changed(self, job_id: uuid.UUID, client_id: int | None) -> None:
        """Wake the waiters of this job and of its client."""
        if self.on_change is not None:
            self.on_change(job_id)
        with self._lock:
            woken = [*self._every, *self._by_job.get(job_id, ())]
            if client_id is not None:
                woken.extend(self._by_client.get(client_id, ()))
        for watch in woken:
            watch.wake()

    def wake_all(self) -> None:
        """Wake every waiter to re-check (the listener dropped, or is back, or shutdown)."""
        with self._lock:
            woken = list(self._all)
        for watch in woken:
            watch.wake()

    def stop(self) -> None:
        """Shutting down: wake everyone (long polls answer, streams end) and stop watching."""
        self._stopping.set()
        self.wake_all()
        # The watcher's thread sees `stopping` within a heartbeat and ends.

    def _ensure_started(self, *, wait: bool = True) -> None:
        # After a fork (gunicorn starts workers by forking), the parent's thread is not here.
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            target = self._listen if self._postgres else self._poll
            self._pid = os.getpid()
            self._thread = threading.Thread(target=target, name="wakeups", daemon=True)
            self._thread.start()
        if self._postgres and wait:
            # The first waiter waits (briefly) for LISTEN, so no change after its read is lost.
            deadline = time.monotonic() + 2
            while not self.listening and time.monotonic() < deadline and not self.stopping:
                time.sleep(0.005)

    # --- PostgreSQL -----------------------------------------------------------------------

    def _libpq_url(self) -> str:
        return (
            make_url(self._engine.url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )

    def _listen(self) -> None:
        delay = self.reconnect_delay
        while not self.stopping:
            try:
                with psycopg.connect(
                    self._libpq_url(),
                    autocommit=True,
                    application_name=f"{APPLICATION_NAME_PREFIX}:{self.name}",
                    connect_timeout=2,
                ) as connection:
                    asked = self._clock()
                    connection.execute(f"LISTEN {CHANNEL}")
                    # A new epoch, LISTENing: its first ping is the LISTEN.
                    self._set_state(listening=True, pinged=asked, new=True)
                    self.listening = True
                    delay = self.reconnect_delay
                    log.info("listening for job changes")
                    # Anything committed while no one listened: everyone re-checks.
                    self.wake_all()
                    self._relay(connection)
            except (psycopg.Error, OSError) as exc:
                if self.stopping:
                    break
                log.warning(
                    "job changes listener lost its connection",
                    extra={"error_type": type(exc).__name__},
                )
            finally:
                self.listening = False
                if self._state[1]:
                    self._set_state(listening=False)
            if self.stopping:
                break
            self.reconnects += 1
            # Every waiter re-checks its job now and after each failed try: at least once a
            # second while the listener is down (the delay doubles up to 1 s), never more.
            self.wake_all()
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _relay(self, connection: psycopg.Connection[tuple[object, ...]]) -> None:
        while not self.stopping:
            for notify in connection.notifies(timeout=self.heartbeat):
                self._relay_one(notify.payload)
            # A connection that died without a word (no FIN) is found here within a beat.
            asked = self._clock()
            connection.execute("SELECT 1")
            # Every change committed before the ping was sent is notified before its answer:
            # relayed here, before the ping counts (as of when it was sent).
            for notify in connection.notifies(timeout=0):
                self._relay_one(notify.payload)
            self._set_state(listening=True, pinged=asked)

    def _relay_one(self, payload: str) -> None:
        parts = payload.split(" ")
        try:
            job_id = uuid.UUID(parts[0])
            client_id = None if parts[1] == "-" else int(parts[1])
        except (ValueError, IndexError):
            log.warning("unreadable job change notification")
            return
        self.changed(job_id, client_id)

    # --- SQLite -----------------------------------------------------------------------------

    def _poll(self) -> None:
        last: int | None = None
        query = (
            select(JobChange.seq, JobChange.job_id, JobChange.client_id)
            .where(JobChange.seq > 0)
            .order_by(JobChange.seq)
        )
        while not self.stopping:
            try:
                if self.waiting() == 0:
                    last = None  # nobody to wake: start from the newest when someone waits
                else:
                    with self._engine.connect() as connection:
                        if last is None:
                            # Waiters from before this read may have missed a change since
                            # their own read: they re-check once.
                            last = latest_seq(connection)
                            self.wake_all()
                        else:
                            rows = connection.execute(
                                query.where(JobChange.seq > last).limit(1000)
                            ).all()
                            for row in rows:
                                self.changed(row.job_id, row.client_id)
                                last = row.seq
            except Exception as exc:  # the watcher must outlive any one error
                log.warning("job changes poll failed", extra={"error_type": type(exc).__name__})
                self.wake_all()
            self._stopping.wait(self.fallback_interval)


K = TypeVar("K")


def _remove(index: dict[K, set[Watch]], key: K | None, watch: Watch) -> None:
    if key is None:
        return
    watchers = index.get(key)
    if watchers is not None:
        watchers.discard(watch)
        if not watchers:
            del index[key]
