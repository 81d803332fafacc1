"""The worker's callback threads: turn new job changes into deliveries, send due deliveries
and record each attempt. Each database step is its own short transaction; none is open while
the receiver is called.

They are threads of their own (`CALLBACK_CONCURRENCY`), not the threads that call Cobalt, so
a slow Cobalt never delays a callback nor a slow receiver a submission; and they are rung
by the process's listener when a change commits (PostgreSQL's NOTIFY, `wakeups.py`), so the
first attempt starts within milliseconds, not at the next poll.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Protocol

from webhook_service import callback_client
from webhook_service.clock import Clock, utcnow
from webhook_service.db import SessionFactory, transaction
from webhook_service.loop import run_steps
from webhook_service.services import callbacks
from webhook_service.settings import Settings

log = logging.getLogger(__name__)

# While sending a backlog, how often the fanning-out thread also looks for new changes.
FAN_OUT_EVERY_SECONDS = 0.05
# With nothing to send, how long a sender waits before looking again: a retry falls due, a
# support resend. With a listener (PostgreSQL) a committed change rings at once; without one
# (SQLite) this is how late a callback can start.
IDLE_LISTENING_SECONDS = 1.0
IDLE_POLLING_SECONDS = 0.2
# After a ring, for RECHECK_WINDOW_SECONDS, look again every RECHECK_SECONDS: a change of a
# transaction that was still open when the fan-out read is left for a later read
# (services/changes.py), and no ring may come for it.
RECHECK_SECONDS = 0.05
RECHECK_WINDOW_SECONDS = 1.0


class Doorbell(Protocol):
    """Rung when a job change commits (`wakeups.Watch`)."""

    def wait(self, timeout: float) -> bool: ...


class CallbackSender:
    """Sends callbacks: one per callback thread of the worker (`CALLBACK_CONCURRENCY`)."""

    def __init__(
        self,
        settings: Settings,
        sessions: SessionFactory,
        *,
        clock: Clock = utcnow,
        signing_clock: Clock = utcnow,
        fans_out: bool = True,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.clock = clock
        # `webhook-timestamp` is the wall clock's, always: a receiver checks it against its
        # own clock to refuse replays, whatever clock schedules the retries.
        self.signing_clock = signing_clock
        self._fans_out = fans_out
        self._last_fan_out = 0.0
        self._rung = True  # fan out once at the start
        self._recheck_until = 0.0

    def run_forever(self, stop: threading.Event, doorbell: Doorbell | None) -> None:
        """Send until `stop`: fan out new changes and send what is due; with nothing to send,
        wait for the doorbell (a change committed), a retry falling due, or a recheck."""

        def idle() -> None:
            # Paced by the process's monotonic clock, not the (replaceable) business clock.
            if time.monotonic() < self._recheck_until:
                timeout = RECHECK_SECONDS
            elif doorbell is not None:
                timeout = IDLE_LISTENING_SECONDS
            else:
                timeout = IDLE_POLLING_SECONDS
            rung = doorbell.wait(timeout) if doorbell is not None else stop.wait(timeout)
            if rung:
                self._rung = True
                self._recheck_until = time.monotonic() + RECHECK_WINDOW_SECONDS

        run_steps(self.step, idle, stop, first_backoff=IDLE_LISTENING_SECONDS, log=log)

    def step(self) -> bool:
        """Fan out (when rung, or every FAN_OUT_EVERY_SECONDS while busy), then send one due
        delivery; False when there was nothing to send."""
        now = time.monotonic()
        if self._fans_out and (self._rung or now - self._last_fan_out >= FAN_OUT_EVERY_SECONDS):
            self._rung = False
            self._last_fan_out = now
            self.fan_out()
        return self.send_one()

    def fan_out(self) -> int:
        with transaction(self.sessions) as session:
            return callbacks.fan_out(session, now=self.clock())

    def send_one(self) -> bool:
        lease = timedelta(
            seconds=self.settings.callback_connect_timeout_seconds
            + 2 * self.settings.callback_timeout_seconds
            + 30
        )
        with transaction(self.sessions) as session:
            outgoing = callbacks.claim_due_delivery(session, now=self.clock(), lease=lease)
        if outgoing is None:
            return False
        timestamp = int(self.signing_clock().timestamp())
        headers = callback_client.signed_headers(
            outgoing.secrets, outgoing.webhook_id, timestamp, outgoing.body
        )
        answer = callback_client.send(
            outgoing.url,
            outgoing.body,
            headers,
            allow_private=self.settings.callback_allow_private_networks,
            connect_timeout=self.settings.callback_connect_timeout_seconds,
            total_timeout=self.settings.callback_timeout_seconds,
        )
        with transaction(self.sessions) as session:
            callbacks.record_attempt(
                session, outgoing, answer, self.clock(), scale=self.settings.callback_retry_scale
            )
        return True
