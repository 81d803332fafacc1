"""The worker's callback step: turn new job changes into deliveries, then send one due
delivery and record the attempt. Each database step is its own short transaction; none is
open while the receiver is called."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from webhook_service import callback_client
from webhook_service.clock import Clock, utcnow
from webhook_service.db import SessionFactory, transaction
from webhook_service.services import callbacks
from webhook_service.settings import Settings

log = logging.getLogger(__name__)

# How often one worker thread looks for new changes to fan out (the cursor's lock makes the
# other threads and processes skip it meanwhile).
FAN_OUT_EVERY_SECONDS = 0.2
# After finding nothing due, how long a thread leaves deliveries alone (a retry falls due).
IDLE_SECONDS = 0.2


class CallbackSender:
    """Sends callbacks for one worker thread."""

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
        self._last_fan_out: float | None = None
        self._idle_until = 0.0

    def run_once(self) -> bool:
        """Fan out new changes (at most every FAN_OUT_EVERY_SECONDS), then send one due delivery;
        return False when there was nothing to send."""
        # Paced by the process's own monotonic clock, not the (replaceable) business clock.
        now = time.monotonic()
        last = self._last_fan_out
        if self._fans_out and (last is None or now - last >= FAN_OUT_EVERY_SECONDS):
            self._last_fan_out = now
            if self.fan_out():
                self._idle_until = 0.0
        if now < self._idle_until:
            return False
        sent = self.send_one()
        if not sent:
            # Nothing was due: the thread's job claims need not pay a second claim per loop.
            self._idle_until = now + IDLE_SECONDS
        return sent

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

    def housekeeping(self) -> None:
        """Erase finished deliveries' bodies past PHI retention (a delivery whose sender died
        mid-call needs nothing: its lease runs out and it is due again)."""
        now = self.clock()
        with transaction(self.sessions) as session:
            callbacks.purge_delivery_bodies(
                session, now=now, retention=timedelta(days=self.settings.phi_retention_days)
            )
