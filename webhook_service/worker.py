"""The worker: claim a due job → call Cobalt → record the answer, in a loop.

Each step is its own short transaction; no transaction is held open across a call to
Cobalt, so a slow Cobalt never holds row locks.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from webhook_service import services
from webhook_service.clock import Clock, utcnow
from webhook_service.cobalt import (
    Accepted,
    CobaltAmbiguous,
    CobaltClient,
    CobaltError,
    CobaltRejected,
    CobaltTransient,
)
from webhook_service.db import (
    SessionFactory,
    connection_trouble,
    transaction,
)
from webhook_service.lifecycle import JobKind, retry_delay
from webhook_service.loop import run_steps
from webhook_service.services import callbacks, reference
from webhook_service.settings import SHUTDOWN_MARGIN_SECONDS, Settings

log = logging.getLogger(__name__)

HOUSEKEEPING_EVERY = timedelta(seconds=5)
# Pauses between tries to record Cobalt's answer while the database is unreachable.
RECORD_RETRY_FIRST = 0.1
RECORD_RETRY_CAP = 2.0
# After the shutdown grace, the most time spent recording the calls given up on (the rest of
# SHUTDOWN_MARGIN_SECONDS closes the pool and exits): a database that does not answer by
# then leaves them `sending` until their claims run out, then `unknown` all the same.
GIVE_UP_RECORD_SECONDS = SHUTDOWN_MARGIN_SECONDS - 2.0


class CallGivenUp(Exception):
    """Shutdown stopped waiting for this call to Cobalt and recorded its job `unknown`."""


class Worker:
    """Submits due jobs to Cobalt and keeps claims and parked webhooks moving."""

    def __init__(
        self,
        settings: Settings,
        sessions: SessionFactory,
        cobalt: CobaltClient,
        *,
        clock: Clock = utcnow,
        jitter: Callable[[], float] = random.random,
        housekeeping: bool = True,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.cobalt = cobalt
        self.clock = clock
        self.jitter = jitter
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._last_housekeeping: datetime | None = None
        self._does_housekeeping = housekeeping
        # The submission waiting on Cobalt, and whether shutdown has given up waiting for it
        # (`give_up_call`): whichever of the answer and the giving up comes first wins.
        self._calling: services.Claim | None = None
        self._given_up = False
        self._call_lock = threading.Lock()

    def run_once(self) -> bool:
        """Do one unit of work; return False when there was nothing to do."""
        self.housekeeping()
        now = self.clock()
        with transaction(self.sessions) as session:
            claim = services.claim_due_job(
                session, now=now, lease=timedelta(seconds=self.settings.claim_ttl_seconds)
            )
        if claim is None:
            return False
        if not claim.knows_reference_id:
            self._learn_reference_id(claim)
        self.submit(claim)
        return True

    def submit(self, claim: services.Claim) -> None:
        """Send one claimed job to Cobalt and record the answer."""
        log.info("submitting", extra={"job_id": str(claim.job_id), "attempt": claim.attempt})
        try:
            reply = self._send(claim)
        except CallGivenUp:
            log.info("answer came after the call was given up", extra={"job_id": str(claim.job_id)})
            return
        except CobaltRejected as exc:
            self._record(claim, "rejected", exc.status_code, services.record_rejected, exc)
        except CobaltTransient as exc:
            delay = retry_delay(
                claim.attempt,
                base=self.settings.retry_base_seconds,
                cap=self.settings.retry_cap_seconds,
                jitter=self.jitter(),
            )
            transient = exc
            self._record_answer(
                claim,
                lambda session: services.record_transient(
                    session,
                    claim,
                    transient,
                    self.clock(),
                    retry_in=delay,
                    max_attempts=self.settings.submit_max_attempts,
                ),
            )
            log.warning(
                "submission failed, will retry",
                extra={"job_id": str(claim.job_id), "status": exc.status_code},
            )
        except CobaltAmbiguous as exc:
            self._record(claim, "unknown", exc.status_code, services.record_ambiguous, exc)
        else:
            self._record_answer(
                claim, lambda session: services.record_accepted(session, claim, reply, self.clock())
            )
            log.info(
                "submission accepted",
                extra={"job_id": str(claim.job_id), "cobalt_job_id": reply.job_id},
            )

    def _send(self, claim: services.Claim) -> Accepted:
        with self._call_lock:
            if self._given_up:
                raise CallGivenUp
            self._calling = claim
        try:
            if claim.kind == JobKind.NOTE:
                return self.cobalt.create_note(claim.access_token, claim.body)
            return self.cobalt.create_telephone_encounter(claim.access_token, claim.body)
        finally:
            with self._call_lock:
                self._calling = None
                given_up = self._given_up
            if given_up:  # its job is `unknown` already: Cobalt's answer, or error, is moot
                raise CallGivenUp

    def give_up_call(self) -> services.Claim | None:
        """Shutdown: stop waiting for Cobalt; the claim of the call in hand, if any, for the
        caller to record `unknown`. Whatever this worker's thread does next records nothing."""
        with self._call_lock:
            self._given_up = True
            return self._calling

    def _record(
        self,
        claim: services.Claim,
        what: str,
        status: int | None,
        record: Callable[..., None],
        exc: CobaltError,
    ) -> None:
        self._record_answer(claim, lambda session: record(session, claim, exc, self.clock()))
        log.warning("submission %s", what, extra={"job_id": str(claim.job_id), "status": status})

    def _record_answer(self, claim: services.Claim, write: Callable[[Session], object]) -> None:
        """Record Cobalt's answer, trying again while the database is unreachable.

        The answer (Cobalt's ids above all) exists nowhere else: an encounter whose ids are
        lost can never be matched to its webhook. Gives up after `CLAIM_TTL_SECONDS`, by
        when the claim has run out: the job is `sending`, and the next worker marks it
        `unknown` and reconciles it (a late write of the answer would still be welcome).
        """
        give_up = time.monotonic() + self.settings.claim_ttl_seconds
        pause = RECORD_RETRY_FIRST
        while True:
            try:
                with transaction(self.sessions) as session:
                    write(session)
                return
            except (OperationalError, PoolTimeout) as exc:
                if time.monotonic() + pause > give_up:
                    raise
                log.warning(
                    "could not record Cobalt's answer, trying again",
                    extra={
                        "job_id": str(claim.job_id),
                        "error": connection_trouble(exc) or type(exc).__name__,
                    },
                )
                time.sleep(pause)
                pause = min(pause * 2, RECORD_RETRY_CAP)

    def _learn_reference_id(self, claim: services.Claim) -> None:
        try:
            reference_id = self.cobalt.get_access_token_reference_id(claim.access_token)
        except CobaltError as exc:
            # Not fatal: webhooks still match by job id; we ask again with the next job.
            log.warning("could not read clinic settings", extra={"error": type(exc).__name__})
            return
        if reference_id:
            with transaction(self.sessions) as session:
                services.learn_reference_id(session, claim.clinic_id, reference_id, self.clock())

    def housekeeping(self) -> None:
        """Every few seconds: expire abandoned claims, apply parked webhooks, reconcile
        overdue jobs against Cobalt's log, and mark jobs past the deadline (attention, or
        failed when their request never reached Cobalt)."""
        now = self.clock()
        if not self._does_housekeeping:
            return
        if self._last_housekeeping and now - self._last_housekeeping < HOUSEKEEPING_EVERY:
            return
        self._last_housekeeping = now
        with transaction(self.sessions) as session:
            expired = services.expire_claims(session, now)
            matched = services.match_parked(session, now)
        reconciled = self.reconcile()
        self.refresh_reference_lists()
        retention = timedelta(days=self.settings.phi_retention_days)
        with transaction(self.sessions) as session:
            past = services.mark_past_deadline(
                session, now=self.clock(), deadline=self.settings.job_deadline
            )
            purged = services.purge_expired_phi(session, now=self.clock(), retention=retention)
            # Callback bodies hold the job resource, outcome included: erased on the same rule.
            callbacks.purge_delivery_bodies(session, now=self.clock(), retention=retention)
        if expired or matched or reconciled or past.attention or past.failed or purged:
            log.info(
                "housekeeping",
                extra={
                    "claims_expired": expired,
                    "parked_applied": matched,
                    "reconciled": reconciled,
                    "deadline_attention": past.attention,
                    "deadline_failed": past.failed,
                    "phi_purged": purged,
                },
            )

    def reconcile(self) -> int:
        """Look overdue jobs up in Cobalt's webhook-events log; apply what is found."""
        expected = {str(kind): self.settings.expected_duration(kind) for kind in JobKind}
        with transaction(self.sessions) as session:
            lookups = services.due_lookups(session, now=self.clock(), expected=expected)
        settled = 0
        for lookup in lookups:
            try:
                events = services.read_cobalt_log(self.cobalt, lookup)
            except CobaltError as exc:
                log.warning(
                    "reconcile lookup failed",
                    extra={"job_id": str(lookup.job_id), "error": type(exc).__name__},
                )
                continue
            with transaction(self.sessions) as session:
                settled += services.record_lookup(session, lookup, events, self.clock())
        return settled

    def refresh_reference_lists(self) -> int:
        """Fetch the clinics' provider, location and pharmacy lists whose copy is due
        (REFERENCE_TTL_SECONDS); each claimed first, so one worker process fetches each."""
        with transaction(self.sessions) as session:
            if self.settings.cobalt_access_token:
                # The default clinic's lists are there before its first submission.
                services.default_clinic(session, self.settings, self.clock())
            due = reference.claim_due_lists(
                session.connection(), self.clock(), self.settings.reference_ttl
            )
        for clinic_id, kinds in due:
            reference.refresh_lists(self.sessions, self.cobalt, clinic_id, kinds, self.clock)
        return len(due)

    def run_forever(self, stop: threading.Event) -> None:
        """Loop until `stop` is set; an in-flight job is always finished and recorded."""
        run_steps(
            self.run_once,
            lambda: stop.wait(self.settings.worker_poll_seconds),
            stop,
            first_backoff=self.settings.worker_poll_seconds,
            log=log,
        )
