"""Slots: at most N requests of a web process do work at once; a held one gives its slot back.

Under gevent (config/gunicorn.conf.py) a process accepts up to `worker_connections`
requests at once, most of them long polls and streams that only wait. Left alone, every
one of them would compete for the process's few pooled database connections, and a burst
of ordinary requests would time out waiting for one (503) where threads would have queued
them. So each request takes a slot (as many as `GUNICORN_THREADS`: what a gthread process
did at once), queueing for it as it queued for a thread, and a held request gives its slot
back while it waits (`released`) and takes one again for each read (`taken`). Under gthread
the slots are as many as the threads, and change nothing.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


class Slots:
    """A process's request slots, and which of its threads (or greenlets) hold one.

    First come, first served: a slot given back goes straight to the longest waiter. (With
    a semaphore, the greenlet that gives a slot back takes it again for its connection's next
    request before a waiter runs: a few connections starve, and the p99 with them.)
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._free = count
        self._lock = threading.Lock()
        self._waiters: deque[threading.Event] = deque()
        self._held = threading.local()  # per greenlet under gevent (monkey-patched)

    def _holding(self) -> bool:
        return bool(getattr(self._held, "slot", False))

    def acquire(self) -> None:
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                turn = None
            else:
                turn = threading.Event()
                self._waiters.append(turn)
        if turn is not None:
            turn.wait()  # the slot is handed over by `release`
        self._held.slot = True

    def release(self) -> None:
        if not self._holding():
            return
        self._held.slot = False
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._free += 1

    @contextmanager
    def released(self) -> Iterator[None]:
        """Wait without a slot (a long poll's wait), and take one again after."""
        holding = self._holding()
        if holding:
            self.release()
        try:
            yield
        finally:
            if holding:
                self.acquire()

    @contextmanager
    def taken(self) -> Iterator[None]:
        """Do one piece of work with a slot (a stream's read, after its view returned)."""
        if self._holding():
            yield
            return
        self.acquire()
        try:
            yield
        finally:
            self.release()


class SlottedApp:
    """WSGI middleware: the app runs holding a slot; a streamed body is sent without one."""

    def __init__(self, app: WSGIApplication, slots: Slots) -> None:
        self.app = app
        self.slots = slots

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        self.slots.acquire()
        try:
            return self.app(environ, start_response)
        finally:
            self.slots.release()
