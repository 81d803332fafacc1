"""The sandbox's in-memory state behind one lock: webhooks, events, submissions, faults.

Readers get copies or plain dicts built under the lock, never live records, so HTTP threads
and delivery threads cannot see half-made changes.
"""

from __future__ import annotations

import math
import random
import secrets
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

from webhook_service.sandbox.config import FaultSettings, SandboxConfig

DeliveryStatus = Literal["pending", "success", "failed"]
FaultName = Literal[
    "duplicate_rate",
    "drop_rate",
    "reorder_rate",
    "submit_error_rate",
    "submit_hang_rate",
    "gateway_error_rate",
    "gateway_error_after_queue_rate",
    "success_false_rate",
    "sync_medication_not_found_rate",
    "foreign_event_rate",
]


def iso_utc(moment: datetime) -> str:
    """Format like JavaScript's `toISOString()`: UTC, milliseconds, `Z`."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


@dataclass
class Submission:
    kind: Literal["note", "telephone_encounter"]
    job_id: str
    body: Any
    access_token_reference_id: str
    received_at: datetime
    telephone_encounter_id: str | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "job_id": self.job_id,
            "telephone_encounter_id": self.telephone_encounter_id,
            "access_token_reference_id": self.access_token_reference_id,
            "received_at": iso_utc(self.received_at),
            "body": self.body,
        }


@dataclass
class WebhookSecret:
    secret: str
    created_at: datetime
    expires_at: datetime | None = None


@dataclass
class Webhook:
    webhook_id: str
    url: str
    created_at: datetime
    secrets: list[WebhookSecret]  # newest first; deliveries are signed with secrets[0]

    def to_api(self, now: datetime) -> dict[str, Any]:
        valid = [s for s in self.secrets if s.expires_at is None or s.expires_at > now]
        return {
            "webhook_id": self.webhook_id,
            "webhook_url": self.url,
            "created_at": iso_utc(self.created_at),
            "secret": self.secrets[0].secret,
            "valid_secrets": [
                {
                    "secret": s.secret,
                    "expires_at": iso_utc(s.expires_at) if s.expires_at else None,
                }
                for s in valid
            ],
        }


@dataclass
class EventRecord:
    payload: dict[str, Any]
    message_id: str  # the `webhook-id` header: one per event, shared by every attempt
    created: datetime
    seq: int
    delivery_status: DeliveryStatus = "pending"
    delivery_attempts: int = 0
    deliveries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def event_id(self) -> str:
        return str(self.payload["id"])

    def to_api(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_type": self.payload["type"],
            "job_id": self.payload.get("job_id"),
            "access_token_reference_id": self.payload.get("access_token_reference_id"),
            "data": self.payload["data"],
            "created_at": self.payload["created"],
            "delivery_status": self.delivery_status,
            "delivery_attempts": self.delivery_attempts,
        }


@dataclass(frozen=True)
class EventQuery:
    access_token_reference_id: str
    job_id: str | None = None
    event_type: str | None = None
    delivery_status: DeliveryStatus | None = None
    start_date: date | None = None
    end_date: date | None = None
    page: int = 1
    page_size: int = 20
    newest_first: bool = True


class SandboxStore:
    """All mutable sandbox state; every method takes the one lock."""

    def __init__(self, config: SandboxConfig, now: datetime) -> None:
        self._config = config
        self._lock = threading.Lock()
        # Job ids start at the wall clock in ms so a restarted sandbox never reuses an id a
        # persistent service database still holds.
        self._next_job_id = int(now.timestamp() * 1000)
        self._generation = 0
        self._reset_locked(now)

    def _reset_locked(self, now: datetime) -> None:
        # Work started before a reset checks the generation and quietly gives up.
        self._generation += 1
        self._events: dict[str, EventRecord] = {}
        self._event_seq = 0
        self._submissions: list[Submission] = []
        self._webhooks: dict[str, Webhook] = {}
        self._faults = self._config.faults.model_copy()
        self._rng = random.Random(self._faults.seed)
        self._expired_tokens = {t.access_token for t in self._config.access_tokens if t.expired}
        self._unsupported_emr = {
            t.access_token for t in self._config.access_tokens if t.unsupported_emr
        }
        if self._config.webhook_url is not None:
            self._register_locked(self._config.webhook_url, self._config.webhook_secret, now)

    def reset(self, now: datetime) -> None:
        with self._lock:
            self._reset_locked(now)

    def generation(self) -> int:
        with self._lock:
            return self._generation

    # --- jobs and submissions -------------------------------------------------------------

    def next_job_id(self) -> int:
        with self._lock:
            self._next_job_id += 1
            return self._next_job_id

    def add_submission(self, submission: Submission) -> None:
        with self._lock:
            self._submissions.append(submission)

    def submissions(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [s.to_api() for s in self._submissions if kind is None or s.kind == kind]

    # --- tokens ----------------------------------------------------------------------------

    def is_expired(self, access_token: str) -> bool:
        with self._lock:
            return access_token in self._expired_tokens

    def set_expired(self, access_token: str, expired: bool) -> None:
        with self._lock:
            if expired:
                self._expired_tokens.add(access_token)
            else:
                self._expired_tokens.discard(access_token)

    def is_unsupported_emr(self, access_token: str) -> bool:
        with self._lock:
            return access_token in self._unsupported_emr

    def set_unsupported_emr(self, access_token: str, unsupported: bool) -> None:
        with self._lock:
            if unsupported:
                self._unsupported_emr.add(access_token)
            else:
                self._unsupported_emr.discard(access_token)

    # --- faults ----------------------------------------------------------------------------

    def faults(self) -> FaultSettings:
        with self._lock:
            return self._faults.model_copy()

    def update_faults(self, changes: dict[str, Any]) -> FaultSettings:
        """Apply a partial update; raises pydantic.ValidationError on bad knobs."""
        with self._lock:
            updated = FaultSettings.model_validate(self._faults.model_dump() | changes)
            if "seed" in changes:
                self._rng = random.Random(updated.seed)
            self._faults = updated
            return updated.model_copy()

    def chance(self, name: FaultName) -> bool:
        """Draw one fault; rates of exactly 0 or 1 do not consume the RNG."""
        with self._lock:
            rate: float = getattr(self._faults, name)
            if rate <= 0.0:
                return False
            if rate >= 1.0:
                return True
            return self._rng.random() < rate

    # --- webhooks --------------------------------------------------------------------------

    def _register_locked(self, url: str, secret: str | None, now: datetime) -> Webhook:
        for webhook in self._webhooks.values():
            if webhook.url == url:
                return webhook
        webhook = Webhook(
            webhook_id="wh_" + secrets.token_hex(8),
            url=url,
            created_at=now,
            secrets=[WebhookSecret(secret or new_secret(), now)],
        )
        self._webhooks[webhook.webhook_id] = webhook
        return webhook

    def register_webhook(self, url: str, now: datetime) -> dict[str, Any]:
        """Register `url`; registering a known URL returns its existing registration."""
        with self._lock:
            return self._register_locked(url, None, now).to_api(now)

    def list_webhooks(self, now: datetime) -> list[dict[str, Any]]:
        with self._lock:
            return [w.to_api(now) for w in self._webhooks.values()]

    def delete_webhooks(self, url: str | None) -> int:
        """Delete the registration for `url`, or every registration when `url` is None."""
        with self._lock:
            doomed = [k for k, w in self._webhooks.items() if url is None or w.url == url]
            for key in doomed:
                del self._webhooks[key]
            return len(doomed)

    def find_webhooks(self, url: str | None, webhook_id: str | None) -> list[str]:
        with self._lock:
            return [
                w.webhook_id
                for w in self._webhooks.values()
                if (url is None or w.url == url)
                and (webhook_id is None or w.webhook_id == webhook_id)
            ]

    def rotate_secret(self, webhook_id: str, now: datetime, grace_seconds: float) -> dict[str, Any]:
        """Put a new secret first; older ones stay reported as valid for the grace period."""
        with self._lock:
            webhook = self._webhooks[webhook_id]
            expires = now + timedelta(seconds=grace_seconds)
            for old in webhook.secrets:
                if old.expires_at is None or old.expires_at > expires:
                    old.expires_at = expires
            webhook.secrets = [
                WebhookSecret(new_secret(), now),
                *(s for s in webhook.secrets if s.expires_at is not None and s.expires_at > now),
            ]
            return webhook.to_api(now)

    def delivery_targets(self) -> list[tuple[str, str]]:
        """(webhook_id, url) of every registration: every URL receives every event."""
        with self._lock:
            return [(w.webhook_id, w.url) for w in self._webhooks.values()]

    def signing_secret(self, webhook_id: str) -> str | None:
        """The newest secret, read per attempt so a rotation applies at once."""
        with self._lock:
            webhook = self._webhooks.get(webhook_id)
            return webhook.secrets[0].secret if webhook else None

    # --- events ----------------------------------------------------------------------------

    def add_event(self, payload: dict[str, Any], message_id: str, created: datetime) -> None:
        with self._lock:
            self._event_seq += 1
            record = EventRecord(payload, message_id, created, self._event_seq)
            self._events[record.event_id] = record

    def has_event(self, event_id: str) -> bool:
        with self._lock:
            return event_id in self._events

    def record_attempt(self, event_id: str, attempt: dict[str, Any]) -> None:
        with self._lock:
            record = self._events.get(event_id)
            if record is not None:
                record.delivery_attempts += 1
                record.deliveries.append(attempt)

    def finish_event(self, event_id: str, status: DeliveryStatus) -> None:
        with self._lock:
            record = self._events.get(event_id)
            if record is not None:
                record.delivery_status = status

    def deliveries(self) -> list[dict[str, Any]]:
        with self._lock:
            ordered = sorted(self._events.values(), key=lambda r: r.seq)
            return [
                {"event_id": r.event_id, "webhook_id": r.message_id, **attempt}
                for r in ordered
                for attempt in r.deliveries
            ]

    def query_events(self, query: EventQuery) -> tuple[list[dict[str, Any]], int, int]:
        """Return (page of events, total count, total pages) for GET /v1/webhook-events."""
        with self._lock:
            matches = [
                r
                for r in self._events.values()
                if r.payload.get("access_token_reference_id") == query.access_token_reference_id
                and (query.job_id is None or r.payload.get("job_id") == query.job_id)
                and (query.event_type is None or r.payload["type"] == query.event_type)
                and (query.delivery_status is None or r.delivery_status == query.delivery_status)
                and (query.start_date is None or r.created.date() >= query.start_date)
                and (query.end_date is None or r.created.date() <= query.end_date)
            ]
            matches.sort(key=lambda r: (r.created, r.seq), reverse=query.newest_first)
            start = (query.page - 1) * query.page_size
            page = [r.to_api() for r in matches[start : start + query.page_size]]
            total = len(matches)
            return page, total, math.ceil(total / query.page_size)
