"""Tables: clinics, jobs, the job timeline, every webhook delivery received, and the
callbacks sent to front ends.

Longer than 400 lines because it is the schema at a glance: every table in one file, beside
the migrations that build them, with no behaviour to split along.

Tables only: behaviour lives in `lifecycle.py` (pure) and `services/` (use cases).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from webhook_service.phi import EncryptedBytes, EncryptedJSON, EncryptedText

# Named constraints keep Alembic migrations deterministic across PostgreSQL and SQLite.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Partial indexes' predicates; the queries they serve spell them the same way (literals, not
# bound parameters), so PostgreSQL can prove the index applies even to a prepared statement.
DUE_PREDICATE = "status = 'processing' AND submission_state IN ('pending', 'waiting', 'retrying')"
PURGE_PREDICATE = "purged_at IS NULL AND status IN ('completed', 'partial', 'failed')"
ATTENTION_PREDICATE = "attention_code IS NOT NULL"

JsonType = JSON().with_variant(JSONB(), "postgresql")
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JsonType}


class Clinic(Base):
    """A linked EMR login: one Cobalt access token, and the reference id webhooks carry."""

    __tablename__ = "clinics"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # A credential to write into the clinic's EMR: encrypted at rest like PHI.
    access_token: Mapped[str] = mapped_column("access_token_enc", EncryptedText)
    access_token_reference_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    needs_relink: Mapped[bool] = mapped_column(Boolean, default=False)
    # When the current access token was linked: a `login_required` created before it is
    # about an earlier link and must not flag the clinic again.
    linked_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ApiClient(Base):
    """A front end or a support tool holding a bearer token (only its hash is stored)."""

    __tablename__ = "api_clients"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    clinic_id: Mapped[int | None] = mapped_column(ForeignKey("clinics.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    # A console session carries the generation it signed in under; signing out bumps it,
    # so a cookie captured before then no longer works anywhere.
    session_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class AuditEvent(Base):
    """Append-only record of support staff reading PHI or acting on a job."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    client_id: Mapped[int | None] = mapped_column(ForeignKey("api_clients.id"), index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(60))
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Job(Base):
    """One note or telephone encounter on its way into the EMR."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("client_id", "idempotency_key", name="uq_jobs_client_idempotency_key"),
        # The worker's claim query: due submissions of open jobs.
        Index("ix_jobs_due", "submission_state", "next_attempt_at"),
        # Support's status filter in its keyset order (migration 0007): the first page comes
        # from the index, with no sort of every job in that status.
        Index("ix_jobs_status_created_id", "status", "created_at", "id"),
        # And its kind filter, the same way (migration 0008).
        Index("ix_jobs_kind_created_id", "kind", "created_at", "id"),
        Index("ix_jobs_note_appointment", "clinic_id", "appointment_hash"),
        Index("ix_jobs_patient_mrn_hash", "patient_mrn_hash"),
        Index("ix_jobs_client_created", "client_id", "created_at"),
        # Support's list: keyset pages on (created_at DESC, id DESC), and search by appointment.
        Index("ix_jobs_created_id", "created_at", "id"),
        Index("ix_jobs_appointment_hash", "appointment_hash"),
        # The claim, in the order it takes jobs, whatever the backlog (migration 0006).
        Index(
            "ix_jobs_due_next",
            "next_attempt_at",
            postgresql_where=text(DUE_PREDICATE),
            sqlite_where=text(DUE_PREDICATE),
        ),
        # The PHI purge: settled jobs not purged yet, oldest first (migration 0006).
        Index(
            "ix_jobs_purge_due",
            "finished_at",
            postgresql_where=text(PURGE_PREDICATE),
            sqlite_where=text(PURGE_PREDICATE),
        ),
        # Jobs needing a person's attention (support's inbox, late lookups): few rows
        # (migration 0009).
        Index(
            "ix_jobs_attention",
            "attention_since",
            postgresql_where=text(ATTENTION_PREDICATE),
            sqlite_where=text(ATTENTION_PREDICATE),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinics.id"))
    client_id: Mapped[int | None] = mapped_column(ForeignKey("api_clients.id"))
    # PHI: encrypted at rest, erased after the retention period (purged_at). Not deferred in
    # the model (support's views read it from detached rows); the hot paths (poll, claim,
    # webhook apply) leave it out of their queries instead.
    request_body: Mapped[dict[str, Any] | None] = mapped_column("request_body_enc", EncryptedJSON)
    request_hash: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # Keyed hashes: searchable and matchable, not readable.
    appointment_hash: Mapped[str | None] = mapped_column(String(64))
    patient_mrn_hash: Mapped[str | None] = mapped_column(String(64))

    submission_state: Mapped[str] = mapped_column(String(16))
    submit_attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    claimed_until: Mapped[datetime | None]
    # When Cobalt's webhook-events log was last searched for this job's outcome.
    reconciled_at: Mapped[datetime | None]
    # Set while a note is at Cobalt: the unique index is what keeps two notes for one
    # appointment from being in flight at once, even with many workers.
    inflight_key: Mapped[str | None] = mapped_column(String(250), unique=True)

    cobalt_job_id: Mapped[str | None] = mapped_column(String(200), index=True)
    cobalt_telephone_encounter_id: Mapped[str | None] = mapped_column(String(200), index=True)

    outcome: Mapped[dict[str, Any] | None] = mapped_column("outcome_enc", EncryptedJSON)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column("error_message_enc", EncryptedText)
    # The request field Cobalt's synchronous error names (`error.field`), when it names one.
    error_field: Mapped[str | None] = mapped_column(String(64))
    # Set while a processing job needs a person (`attention`): e.g. `no_outcome`, past the
    # deadline with its request possibly at Cobalt. Cleared when the job settles.
    attention_code: Mapped[str | None] = mapped_column(String(32))
    attention_since: Mapped[datetime | None]
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    # The failed job support resubmitted as this one; unique, so a job is retried at most once
    # even when two staff press "retry" at the same moment.
    retry_of: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id"), unique=True)
    # And the other way: the job support resubmitted this one as (set with `retry_of`, in the
    # same transaction), so a front end polling this job learns of the retry.
    retried_as: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id"))
    purged_at: Mapped[datetime | None]

    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]

    clinic: Mapped[Clinic] = relationship(lazy="raise")


class JobEvent(Base):
    """One line of a job's timeline: what happened, when, with ids and statuses."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[datetime]
    type: Mapped[str] = mapped_column(String(40))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class WebhookDelivery(Base):
    """A signed delivery from Cobalt, kept whatever happened when it was applied."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_state", "state", "received_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # `webhook-id`, or the payload's `id` when the header is missing or odd.
    dedup_key: Mapped[str] = mapped_column(String(300), unique=True)
    webhook_id: Mapped[str | None] = mapped_column(String(200))
    attempt: Mapped[int | None] = mapped_column(Integer)
    event_timestamp: Mapped[datetime | None]
    event_id: Mapped[str | None] = mapped_column(String(200))
    # The signed body's `created`: the event's one trustworthy time.
    event_created_at: Mapped[datetime | None]
    event_type: Mapped[str | None] = mapped_column(String(200))
    cobalt_job_id: Mapped[str | None] = mapped_column(String(200), index=True)
    telephone_encounter_id: Mapped[str | None] = mapped_column(String(200), index=True)
    appointment_hash: Mapped[str | None] = mapped_column(String(64))
    access_token_reference_id: Mapped[str | None] = mapped_column(String(200))
    headers: Mapped[dict[str, Any]]
    raw_body: Mapped[bytes | None] = mapped_column("raw_body_enc", EncryptedBytes)
    signature_match: Mapped[str] = mapped_column(String(40))
    received_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(20))
    state_detail: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id"), index=True)


class RateCounter(Base):
    """A fixed-window counter shared by every process: submissions per client, sign-in
    failures per address. One row per key, reset in place when its window has passed."""

    __tablename__ = "rate_counters"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    # Start of the current window, in whole seconds since the Unix epoch.
    window_start: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(Integer)


class MetricCounter(Base):
    """A counter's total across every process and restart: one sample (a counter, or a
    histogram's bucket, count or sum) with its labels; processes add what they counted."""

    __tablename__ = "metric_counters"

    sample: Mapped[str] = mapped_column(String(100), primary_key=True)
    # The labels as compact JSON with sorted keys: one spelling per set of labels.
    labels: Mapped[str] = mapped_column(String(300), primary_key=True)
    value: Mapped[float] = mapped_column(Double)


class WorkerHeartbeat(Base):
    """One worker process, and when it was last seen alive (refreshed every few seconds)."""

    __tablename__ = "worker_heartbeats"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]


class ReferenceList(Base):
    """The state of one clinic's copy of one of Cobalt's lists (providers, locations,
    pharmacies): when it was last fetched whole, and what went wrong with the last try."""

    __tablename__ = "reference_lists"

    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinics.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    # The last fetch that succeeded: the copy in `reference_items` is as of then.
    fetched_at: Mapped[datetime | None]
    # The last try, successful or not (the worker's schedule goes by it).
    attempted_at: Mapped[datetime | None]
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    # Why the last try failed (no PHI: a class of error and a status), None after a success.
    error: Mapped[str | None] = mapped_column(String(200))


class ReferenceItem(Base):
    """One entry of a clinic's copy of a Cobalt list: the EMR id front ends send, and what a
    picker shows. No PHI: providers, locations and pharmacies, never patients."""

    __tablename__ = "reference_items"

    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinics.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    ehr_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    status: Mapped[str | None] = mapped_column(String(40))


class JobChange(Base):
    """One change of a job, as the job resource then was: what every push sends.

    Written only by the triggers of migration 0017 (see `services/changes.py`), in the
    transaction that changed the job; read in `seq` order.
    """

    __tablename__ = "job_changes"
    __table_args__ = (
        # A job's changes after a seq (its stream, a long poll's re-check).
        Index("ix_job_changes_job_seq", "job_id", "seq"),
        # A client's changes after a position (its stream, its callbacks).
        Index("ix_job_changes_client_txid_seq", "client_id", "txid", "seq"),
        {"sqlite_autoincrement": True},
    )

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    txid: Mapped[int] = mapped_column(BigInteger)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    client_id: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    cobalt_job_id: Mapped[str | None] = mapped_column(String(200))
    cobalt_telephone_encounter_id: Mapped[str | None] = mapped_column(String(200))
    error_code: Mapped[str | None] = mapped_column(String(64))
    submission_state: Mapped[str] = mapped_column(String(16))
    submit_attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None]
    purged_at: Mapped[datetime | None]
    error_field: Mapped[str | None] = mapped_column(String(64))
    attention_code: Mapped[str | None] = mapped_column(String(32))
    attention_since: Mapped[datetime | None]
    retried_as: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # PHI, encrypted as in `jobs`; replaced by the purged value when the job is purged.
    outcome: Mapped[dict[str, Any] | None] = mapped_column("outcome_enc", EncryptedJSON)
    error_message: Mapped[str | None] = mapped_column("error_message_enc", EncryptedText)


class CallbackEndpoint(Base):
    """A front-end client's one callback URL and its signing secrets (issue 20)."""

    __tablename__ = "callback_endpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("api_clients.id"), unique=True)
    url: Mapped[str] = mapped_column(String(2000))
    # `enabled`, `disabled` (failing for days, until its owner re-enables it) or `removed`.
    state: Mapped[str] = mapped_column(String(16))
    # Credentials (`whsec_…`): encrypted at rest like the clinics' access tokens.
    secret: Mapped[str] = mapped_column("secret_enc", EncryptedText)
    # The secret before the last rotation, which signs alongside until `previous_until`.
    previous_secret: Mapped[str | None] = mapped_column("previous_secret_enc", EncryptedText)
    previous_until: Mapped[datetime | None]
    # Since when every attempt has failed (cleared by a success): how disabling is decided.
    failing_since: Mapped[datetime | None]
    disabled_at: Mapped[datetime | None]
    # How far the client's job changes have been turned into deliveries: a position in the
    # record of changes, (txid, seq) as `services/changes.py` orders it. Each endpoint's
    # row is locked (SKIP LOCKED) by the worker fanning out its changes.
    fanned_out_txid: Mapped[int] = mapped_column(BigInteger)
    fanned_out_seq: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class CallbackDelivery(Base):
    """One change of one job, to be POSTed to one endpoint: sent until it succeeds or its
    schedule ends, always with the same `webhook-id` and body."""

    __tablename__ = "callback_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "change_seq", name="uq_callback_deliveries_change"),
        # The sender's claim: due deliveries, soonest first.
        Index("ix_callback_deliveries_due", "state", "next_attempt_at"),
        # In order per job: the earliest pending delivery of a job goes first.
        Index("ix_callback_deliveries_job", "endpoint_id", "job_id", "change_seq"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("callback_endpoints.id"))
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id"), index=True)
    # The change's `seq` in the record of job changes.
    change_seq: Mapped[int] = mapped_column(BigInteger)
    webhook_id: Mapped[str] = mapped_column(String(64), unique=True)
    # The signed body as sent (the job resource can carry PHI): encrypted, and erased by the
    # PHI purge once the delivery has finished.
    body: Mapped[bytes | None] = mapped_column("body_enc", EncryptedBytes)
    # `pending`, `delivered`, `failed` (its schedule ran out) or `cancelled` (endpoint removed).
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    claimed_until: Mapped[datetime | None]
    # Who asked support's resend that is waiting to go (the attempt is then a `resend`).
    resend_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class CallbackAttempt(Base):
    """One POST of a callback delivery: what the receiver answered, and how fast."""

    __tablename__ = "callback_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("callback_deliveries.id"), index=True)
    at: Mapped[datetime]
    # `schedule`, or `resend` (support asked for it).
    trigger: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(String(2000))
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    succeeded: Mapped[bool] = mapped_column(Boolean)
    # Why no answer counted (`timeout`, `connection failed`, `refused: …`), in our words.
    error: Mapped[str | None] = mapped_column(String(300))
    # The start of the receiver's answer (bounded): a receiver may echo what it was sent.
    response_excerpt: Mapped[str | None] = mapped_column("response_excerpt_enc", EncryptedText)
