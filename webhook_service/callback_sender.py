"""The worker's callback threads: turn new job changes into deliveries, send due deliveries
and record each attempt. Each database step is its own short transaction; none is open while
the receiver is called.

They are threads of their own, not the threads that call Cobalt, so a slow Cobalt never
delays a callback nor a slow receiver a submission. One thread fans out: rung by the
process's listener when a change commits (PostgreSQL's NOTIFY, `wakeups.py`), it turns the
new changes into deliveries and hands each to a sending thread (`CALLBACK_CONCURRENCY` of
them), so the first attempt starts within milliseconds, not at the next poll; it never calls
a receiver itself, so a receiver that hangs delays no one else's callbacks. A sending thread
that is handed nothing looks for due retries every second on its own.
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

# How long the fanning-out thread waits for a ring before it looks anyway, with a listener
# (PostgreSQL: a change rings at once; this catches one missed while the listener was down),
# and without one (SQLite: this is how late a callback can start).
IDLE_LISTENING_SECONDS = 1.0
IDLE_POLLING_SECONDS = 0.2
# After a ring, for RECHECK_WINDOW_SECONDS, look again every RECHECK_SECONDS: a change of a
# transaction that was still open when the fan-out read is left for a later read
# (services/changes.py), and no ring may come for it.
RECHECK_SECONDS = 0.05
RECHECK_WINDOW_SECONDS = 1.0
# How long a sending thread that was handed nothing waits before it looks for a due retry
# (or a support resend) itself.
SENDER_IDLE_SECONDS = 1.0


class Doorbell(Protocol):
    """Rung when a job change commits (`wakeups.Watch`)."""

    def wait(self, timeout: float) -> bool: ...


class CallbackSender:
    """Fans out and sends callbacks: one per callback thread of the worker."""

    def __init__(
        self,
        settings: Settings,
        sessions: SessionFactory,
        *,
        clock: Clock = utcnow,
        signing_clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.clock = clock
        # `webhook-timestamp` is the wall clock's, always: a receiver checks it against its
        # own clock to refuse replays, whatever clock schedules the retries.
        self.signing_clock = signing_clock

    def run_fan_out(
        self,
        stop: threading.Event,
        doorbell: Doorbell | None,
        handoff: threading.Semaphore,
        senders: int,
    ) -> None:
        """Until `stop`: fan new changes out to deliveries and hand each to a sending thread
        (`handoff`, released once a delivery, at most `senders` at a time); then wait for the
        doorbell (a change committed), a recheck, or IDLE_*_SECONDS."""
        recheck_until = 0.0

        def step() -> bool:
            added = self.fan_out()
            if added:
                handoff.release(min(added, senders))
            return added > 0  # more may have come meanwhile: look again at once

        def idle() -> None:
            nonlocal recheck_until
            # Paced by the process's monotonic clock, not the (replaceable) business clock.
            if time.monotonic() < recheck_until:
                timeout = RECHECK_SECONDS
            elif doorbell is not None:
                timeout = IDLE_LISTENING_SECONDS
            else:
                timeout = IDLE_POLLING_SECONDS
            rung = doorbell.wait(timeout) if doorbell is not None else stop.wait(timeout)
            if rung:
                recheck_until = time.monotonic() + RECHECK_WINDOW_SECONDS

        run_steps(step, idle, stop, first_backoff=IDLE_LISTENING_SECONDS, log=log)

    def run_sending(self, stop: threading.Event, handoff: threading.Semaphore) -> None:
        """Until `stop`: send due deliveries one after another; with none due, wait to be
        handed one, or SENDER_IDLE_SECONDS (a retry falls due)."""
        run_steps(
            self.send_one,
            lambda: handoff.acquire(timeout=SENDER_IDLE_SECONDS),
            stop,
            first_backoff=SENDER_IDLE_SECONDS,
            log=log,
        )

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
