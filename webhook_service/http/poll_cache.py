"""A web process's memory of the jobs it answered polls for, so a poll that would be answered
304 (or, for a settled job, 200) need not ask the database (PostgreSQL only; README, "Push").

An entry holds a job's ETag and owner, and for a settled job its rendered 200. It is trusted
only while the process's listener (`wakeups.py`) vouches that no change was missed since the
entry's read began: the listener was LISTENing before that read, has not dropped since (the
same epoch), and its last ping answered under a second ago. Each NOTIFY evicts its job's entry.
So a change is answered from the database at the latest a second after it commits, even when
its notification is lost with the connection. PHI (a settled job's outcome) stays in memory
only, in at most `size` entries, and leaves with the entry.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from webhook_service.wakeups import Wakeups

POLL_CACHE_SIZE = 10_000  # jobs remembered per web process


@dataclass(frozen=True, slots=True)
class Entry:
    etag: str
    client_id: int | None
    epoch: int
    body: bytes | None  # a settled job's rendered 200 (its headers follow from etag, status)
    status: str


@dataclass(frozen=True, slots=True)
class Ticket:
    """Taken before a poll's read: the listener's epoch then, and the evictions seen so far."""

    epoch: int
    evictions: int


class PollCache:
    def __init__(self, hub: Wakeups, size: int = POLL_CACHE_SIZE) -> None:
        self._hub = hub
        self._size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[uuid.UUID, Entry] = OrderedDict()
        # Evictions by NOTIFY, counted, and the count at each job's latest one (bounded): a read
        # that began before a job's eviction must not put back what it read.
        self._evictions = 0
        self._evicted: OrderedDict[uuid.UUID, int] = OrderedDict()
        self._forgotten = 0  # the newest eviction count dropped from `_evicted`
        hub.on_change = self.evict

    def ticket(self) -> Ticket | None:
        """Before reading a job: None when whatever is read could not be trusted later."""
        epoch = self._hub.fresh_epoch()
        if epoch is None:
            return None
        return Ticket(epoch, self._evictions)

    def get(self, job_id: uuid.UUID) -> Entry | None:
        """The job's entry, if the listener still vouches for it."""
        epoch = self._hub.fresh_epoch()
        if epoch is None:
            return None
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is None:
                return None
            if entry.epoch != epoch:
                del self._entries[job_id]
                return None
            self._entries.move_to_end(job_id)
            return entry

    def put(self, job_id: uuid.UUID, ticket: Ticket, entry: Entry) -> None:
        """Remember what a read that began with `ticket` found, unless the job (or possibly it:
        an eviction forgotten since) changed since, or the listener's epoch moved on."""
        if entry.epoch != ticket.epoch or self._hub.fresh_epoch() != ticket.epoch:
            return
        with self._lock:
            if ticket.evictions < self._forgotten:
                return
            if self._evicted.get(job_id, -1) > ticket.evictions:
                return
            self._entries[job_id] = entry
            self._entries.move_to_end(job_id)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def evict(self, job_id: uuid.UUID) -> None:
        """The job changed (a NOTIFY): forget it."""
        with self._lock:
            self._evictions += 1
            self._entries.pop(job_id, None)
            self._evicted[job_id] = self._evictions
            self._evicted.move_to_end(job_id)
            while len(self._evicted) > self._size:
                _, count = self._evicted.popitem(last=False)
                self._forgotten = max(self._forgotten, count)

    def __len__(self) -> int:
        return len(self._entries)
