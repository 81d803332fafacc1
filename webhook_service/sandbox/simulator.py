"""The sandbox's behaviour: authenticate, accept submissions, produce each outcome later.

Longer than 400 lines because `Sandbox` is one simulated account whose methods share its
state and lock; its data, outcomes, store and deliveries are modules of their own already.

`Sandbox` is what the Flask views call and what tests drive directly (`drain`, `shutdown`).
Faults are drawn here, at the moments Cobalt itself could misbehave.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal, TypeVar

from webhook_service.sandbox.config import AccessTokenConfig, SandboxConfig
from webhook_service.sandbox.data import DEMO_IDS, build_seed
from webhook_service.sandbox.delivery import (
    AttemptResult,
    RetryPolicy,
    TaskRunner,
    deliver,
    post_once,
    signed_headers,
)
from webhook_service.sandbox.outcomes import (
    Outcome,
    SubmissionRejected,
    TelephoneEncounterRequest,
    foreign_appointment_event,
    medication_not_found,
    note_outcome,
    parse_note,
    parse_telephone_encounter,
    telephone_encounter_outcome,
    unsupported_emr,
)
from webhook_service.sandbox.store import SandboxStore, Submission, iso_utc
from webhook_service.signatures import compact_json

logger = logging.getLogger("webhook_service.sandbox")
GATEWAY_APPOINTMENT = DEMO_IDS["gateway_timeout_appointment_id"]

Clock = Callable[[], datetime]
T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


class AuthFailure(Exception):
    """A /v1 call Cobalt refuses: 401 for bad credentials, 403 login_required for a dead link."""

    def __init__(self, status: int, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"success": False, "message": message}
        if error is not None:
            self.body = {"success": False, "error": error, "message": message}


class InjectedServerError(Exception):
    """A fault fired that answers 5xx and accepts nothing: Cobalt's own 500 (JSON), or a
    gateway's error page (`gateway` True: HTML, no Cobalt JSON)."""

    def __init__(self, status: int = 500, gateway: bool = False) -> None:
        super().__init__(status)
        self.status = status
        self.gateway = gateway


class InjectedRefusal(Exception):
    """The success_false_rate fault fired: answer 200 `{"success": false}`, accept nothing."""


@dataclass(frozen=True)
class Accepted:
    job_id: str
    telephone_encounter_id: str | None = None
    hang_seconds: float = 0.0  # >0 when submit_hang_rate fired: reply only after this long
    # Set when gateway_error_after_queue_rate fired: the job is queued, but the answer is
    # this status with a gateway's HTML page instead of Cobalt's reply.
    gateway_status: int | None = None


class Sandbox:
    """One simulated Cobalt account: credentials, a pretend EMR, webhooks and background work."""

    def __init__(self, config: SandboxConfig, clock: Clock | None = None) -> None:
        self.config = config
        source = clock or utc_now
        # Everything downstream (ISO strings, date filters) assumes aware UTC datetimes.
        self.clock: Clock = lambda: source().astimezone(UTC)
        now = self.clock()
        self.seed = build_seed(config.today or now.date())
        self.store = SandboxStore(config, now)
        self.runner = TaskRunner()
        self.policy = RetryPolicy(
            config.first_attempt_timeout, config.retry_delay_seconds, config.retry_timeout
        )

    # --- auth -------------------------------------------------------------------------------

    def authenticate(
        self, client_id: str | None, client_secret: str | None, access_token: str | None
    ) -> AccessTokenConfig:
        """Return the calling clinic's token, or raise AuthFailure as Cobalt would."""
        if not client_id or not client_secret or not access_token:
            raise AuthFailure(401, "Missing client_id, client_secret or access_token header.")
        if not (
            _same(client_id, self.config.client_id)
            and _same(client_secret, self.config.client_secret)
        ):
            raise AuthFailure(401, "Invalid client_id or client_secret.")
        token = self._find_token(access_token)
        if token is None:
            raise AuthFailure(401, "Invalid access token.")
        if self.store.is_expired(token.access_token):
            raise AuthFailure(
                403,
                "The EMR login for this access token has expired; the clinic must re-link.",
                error="login_required",
            )
        return token

    def _find_token(self, access_token: str) -> AccessTokenConfig | None:
        for token in self.config.access_tokens:
            if _same(access_token, token.access_token):
                return token
        return None

    def set_token_expired(self, access_token: str, expired: bool, notify: bool = True) -> bool:
        """Mark a token expired (or linked again); False when no such token is configured."""
        token = self._find_token(access_token)
        if token is None:
            return False
        self.store.set_expired(token.access_token, expired)
        logger.info(
            "sandbox_token_expired" if expired else "sandbox_token_renewed",
            extra={"access_token_reference_id": token.access_token_reference_id},
        )
        if expired and notify:
            self.emit_event(
                token.access_token_reference_id,
                Outcome(
                    "login_required",
                    {
                        "access_token_reference_id": token.access_token_reference_id,
                        "message": "The EMR login expired; the clinic must re-link.",
                    },
                ),
                job_id=None,
            )
        return True

    # --- submissions ------------------------------------------------------------------------

    def submit_note(self, token: AccessTokenConfig, body: Any) -> Accepted:
        """Accept a note (raises SubmissionRejected / InjectedServerError / InjectedRefusal)
        and schedule it."""
        hang = self._draw_submit_fault("note")
        if isinstance(body, dict) and body.get("appointment_id") == GATEWAY_APPOINTMENT:
            # The demo's "needs attention" case, on demand rather than by chance.
            logger.info("sandbox_gateway_appointment", extra={"kind": "note"})
            raise InjectedServerError(504, gateway=True)
        request = self._validate("note", lambda: parse_note(body))
        job_id = str(self.store.next_job_id())
        self._accept(token, "note", job_id, body, None)
        if self.store.chance("foreign_event_rate"):
            # Another Cobalt operation on the same appointment: its own job, its own event.
            logger.info("sandbox_fault_foreign_event", extra={"job_id": job_id})
            self.emit_event(
                token.access_token_reference_id,
                foreign_appointment_event(request.appointment_id),
                str(self.store.next_job_id()),
            )
        outcome = note_outcome(request, self.seed, self.config.note_success_event)
        self._schedule_outcome(token, job_id, outcome)
        return Accepted(job_id, None, hang, self._draw_gateway_after_queue("note"))

    def submit_telephone_encounter(self, token: AccessTokenConfig, body: Any) -> Accepted:
        """Accept a telephone encounter (raises like submit_note) and schedule its outcome."""
        hang = self._draw_submit_fault("telephone_encounter")
        request = self._validate("telephone_encounter", lambda: self._parse_encounter(token, body))
        job_id = str(self.store.next_job_id())
        te_id = "te_" + secrets.token_hex(8)
        self._accept(token, "telephone_encounter", job_id, body, te_id)
        outcome = telephone_encounter_outcome(request, self.seed, te_id)
        self._schedule_outcome(token, job_id, outcome)
        gateway = self._draw_gateway_after_queue("telephone_encounter")
        return Accepted(job_id, te_id, hang, gateway)

    def _parse_encounter(self, token: AccessTokenConfig, body: Any) -> TelephoneEncounterRequest:
        request = parse_telephone_encounter(body, self.seed)
        if self.store.is_unsupported_emr(token.access_token):
            raise unsupported_emr()
        refused = medication_not_found(request, self.seed)
        if refused is not None and self.store.chance("sync_medication_not_found_rate"):
            raise refused
        return request

    def hold_reply(self, accepted: Accepted) -> None:
        """Sit out a submit_hang fault before replying; shutdown cuts it short."""
        if accepted.hang_seconds > 0:
            self.runner.wait(accepted.hang_seconds)

    def _draw_submit_fault(self, kind: str) -> float:
        """Faults that answer before anything is queued; returns the hang, if one fired."""
        if self.store.chance("submit_error_rate"):
            logger.info("sandbox_fault_submit_error", extra={"kind": kind})
            raise InjectedServerError
        if self.store.chance("submit_hang_rate"):
            logger.info("sandbox_fault_submit_hang", extra={"kind": kind})
            return self.store.faults().hang_seconds
        if self.store.chance("gateway_error_rate"):
            logger.info("sandbox_fault_gateway_error", extra={"kind": kind})
            raise InjectedServerError(self.store.faults().gateway_status, gateway=True)
        if self.store.chance("success_false_rate"):
            logger.info("sandbox_fault_success_false", extra={"kind": kind})
            raise InjectedRefusal
        return 0.0

    def _draw_gateway_after_queue(self, kind: str) -> int | None:
        if not self.store.chance("gateway_error_after_queue_rate"):
            return None
        logger.info("sandbox_fault_gateway_error_after_queue", extra={"kind": kind})
        return self.store.faults().gateway_status

    def _validate(self, kind: str, parse: Callable[[], T]) -> T:
        try:
            return parse()
        except SubmissionRejected as exc:
            logger.info("submission_rejected", extra={"kind": kind, "code": exc.code})
            raise

    def _accept(
        self,
        token: AccessTokenConfig,
        kind: Literal["note", "telephone_encounter"],
        job_id: str,
        body: Any,
        te_id: str | None,
    ) -> None:
        ref = token.access_token_reference_id
        self.store.add_submission(Submission(kind, job_id, body, ref, self.clock(), te_id))
        logger.info(
            "submission_accepted",
            extra={"kind": kind, "job_id": job_id, "access_token_reference_id": ref},
        )

    def set_unsupported_emr(self, access_token: str, unsupported: bool) -> bool:
        """Make a token's EMR unsupported (or supported again); False for an unknown token."""
        token = self._find_token(access_token)
        if token is None:
            return False
        self.store.set_unsupported_emr(token.access_token, unsupported)
        return True

    def inject_event(
        self, access_token: str, event_type: str, data: dict[str, Any], job_id: str | None
    ) -> str | None:
        """Emit any event for a token's clinic, as if another Cobalt operation produced it;
        its id, or None for an unknown token."""
        token = self._find_token(access_token)
        if token is None:
            return None
        return self.emit_event(token.access_token_reference_id, Outcome(event_type, data), job_id)

    def _schedule_outcome(self, token: AccessTokenConfig, job_id: str, outcome: Outcome) -> None:
        generation = self.store.generation()

        def produce() -> None:
            # A reset since acceptance wiped the job: its outcome would belong to nobody.
            if self.store.generation() == generation:
                self.emit_event(token.access_token_reference_id, outcome, job_id)

        self.runner.schedule(self.config.processing_seconds, produce, f"sandbox-job-{job_id}")

    # --- events and delivery ----------------------------------------------------------------

    def emit_event(self, reference_id: str, outcome: Outcome, job_id: str | None) -> str:
        """Record an event and deliver it in the background, faults applied; returns its id."""
        now = self.clock()
        payload: dict[str, Any] = {
            "id": "evt_" + secrets.token_hex(12),
            "access_token_reference_id": reference_id,
            "object": "event",
            "created": iso_utc(now),
            "type": outcome.event_type,
        }
        if job_id is not None:
            payload["job_id"] = job_id
        payload["data"] = outcome.data
        message_id = "msg_" + secrets.token_hex(12)
        event_id: str = payload["id"]
        # Faults are drawn before the event becomes visible, so nobody can change them between.
        dropped = self.store.chance("drop_rate")
        delay = self.store.faults().delay_seconds if self.store.chance("reorder_rate") else 0.0
        duplicate = self.store.chance("duplicate_rate")
        self.store.add_event(payload, message_id, now)
        logger.info(
            "event_produced",
            extra={"event_id": event_id, "event_type": outcome.event_type, "job_id": job_id},
        )
        if dropped:
            logger.info("sandbox_fault_drop", extra={"event_id": event_id})
            self.store.finish_event(event_id, "failed")
            return event_id
        if delay:
            logger.info("sandbox_fault_reorder", extra={"event_id": event_id, "delay": delay})
        if duplicate:
            logger.info("sandbox_fault_duplicate", extra={"event_id": event_id})
        send = partial(self._deliver, payload, message_id, duplicate)
        self.runner.schedule(delay, send, f"sandbox-deliver-{event_id}")
        return event_id

    def _deliver(self, payload: dict[str, Any], message_id: str, duplicate: bool) -> None:
        event_id: str = payload["id"]
        body = compact_json(payload)
        targets = self.store.delivery_targets()
        delivered_everywhere = bool(targets)
        for webhook_id, url in targets:
            if not self.store.has_event(event_id):
                return  # the sandbox was reset meanwhile
            ok = deliver(
                url=url,
                body=body,
                message_id=message_id,
                timestamp=payload["created"],
                secret_for=partial(self.store.signing_secret, webhook_id),
                policy=self.policy,
                wait=self.runner.wait,
                on_attempt=partial(self._record_attempt, event_id, url, False),
            )
            delivered_everywhere = delivered_everywhere and ok
            if duplicate:
                self._send_duplicate(event_id, url, webhook_id, body, message_id, payload)
        self.store.finish_event(event_id, "success" if delivered_everywhere else "failed")

    def _send_duplicate(
        self,
        event_id: str,
        url: str,
        webhook_id: str,
        body: bytes,
        message_id: str,
        payload: dict[str, Any],
    ) -> None:
        # An at-least-once redelivery: same bytes and webhook-id, sent as attempt 2.
        secret = self.store.signing_secret(webhook_id)
        if secret is None:
            return
        headers = signed_headers(secret, body, message_id, payload["created"], 2)
        result = post_once(url, body, headers, self.policy.retry_timeout)
        self._record_attempt(event_id, url, True, result)

    def _record_attempt(
        self, event_id: str, url: str, duplicate: bool, result: AttemptResult
    ) -> None:
        self.store.record_attempt(
            event_id,
            {
                "webhook_url": url,
                "attempt": result.attempt,
                "status_code": result.status_code,
                "error": result.error,
                "duplicate": duplicate,
                "at": iso_utc(self.clock()),
            },
        )
        logger.info(
            "webhook_attempt",
            extra={
                "event_id": event_id,
                "attempt": result.attempt,
                "status_code": result.status_code,
                "error": result.error,
                "duplicate": duplicate,
            },
        )

    # --- lifecycle --------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every event, submission and webhook; restore configured faults and tokens."""
        self.store.reset(self.clock())
        logger.info("sandbox_reset")

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every scheduled outcome and delivery has finished."""
        return self.runner.drain(timeout)

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Stop background work: pending waits end at once, running attempts finish."""
        return self.runner.shutdown(timeout)


def _same(given: str, expected: str) -> bool:
    # Bytes, because compare_digest refuses non-ASCII str and headers may carry anything.
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
