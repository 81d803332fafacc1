"""Support API shapes: job filters and pages (with opaque cursors), staff actions with their
reasons, timelines, deliveries and the inbox.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from webhook_service.schemas.api import JobKind, JobOut, JobStatus, RequiredId, _not_blank, _Strict

# --- Support API -----------------------------------------------------------------------------

MAX_PAGE = 200
_CURSOR_SCHEMA = WithJsonSchema(
    {"type": "string", "description": "`next_cursor` of the previous page (opaque)."}
)


def _utc_instant(value: Any) -> Any:
    """An ISO 8601 date or time; without an offset it is UTC, a bare date is midnight UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                "must be an ISO 8601 date or time, e.g. 2026-11-23T12:00:00Z"
            ) from None
    if not isinstance(value, datetime):
        raise ValueError("must be an ISO 8601 date or time string")
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 with an offset
        raise ValueError("is out of range") from None


Instant = Annotated[
    datetime,
    BeforeValidator(_utc_instant),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


def encode_cursor(at: datetime, key: uuid.UUID | int) -> str:
    """The opaque cursor for the row after which the next page starts."""
    raw = json.dumps([at.isoformat(), str(key)], separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _cursor_parts(value: Any) -> tuple[datetime, str]:
    try:
        if not isinstance(value, str) or len(value) > 200:
            raise ValueError
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        at_text, key = json.loads(raw)
        at = datetime.fromisoformat(at_text)
        if at.tzinfo is None or not isinstance(key, str):
            raise ValueError
        return at.astimezone(UTC), key
    except (ValueError, TypeError, OverflowError):
        raise ValueError("is not a cursor this API gave out") from None


def _job_cursor(value: Any) -> Any:
    if isinstance(value, tuple):
        return value
    at, key = _cursor_parts(value)
    try:
        return at, uuid.UUID(key)
    except ValueError:
        raise ValueError("is not a cursor this API gave out") from None


def _delivery_cursor(value: Any) -> Any:
    if isinstance(value, tuple):
        return value
    at, key = _cursor_parts(value)
    if not (key.isascii() and key.isdigit()) or not 0 < int(key) < 2**63:
        raise ValueError("is not a cursor this API gave out")
    return at, int(key)


JobCursor = Annotated[tuple[datetime, uuid.UUID], BeforeValidator(_job_cursor), _CURSOR_SCHEMA]
DeliveryCursor = Annotated[tuple[datetime, int], BeforeValidator(_delivery_cursor), _CURSOR_SCHEMA]
SearchTerm = RequiredId  # what is searched for is an id a front end submitted


class _Query(BaseModel):
    # A misspelt filter is refused rather than ignored: it would silently widen the result.
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobFilters(_Query):
    """Filters shared by the support list, search and CSV export."""

    status: JobStatus | None = None
    kind: JobKind | None = None
    clinic: int | None = Field(default=None, ge=1, le=2**31 - 1, description="A clinic id.")
    created_from: Instant | None = Field(default=None, description="Created at or after.")
    created_to: Instant | None = Field(default=None, description="Created before (exclusive).")
    overdue: bool | None = Field(
        default=None, description="Processing past the expected time (false: all others)."
    )
    flagged: bool | None = Field(
        default=None,
        description="Needs a person: a conflicting outcome was recorded, the clinic must be "
        "re-linked (open or failed jobs), a delivery with its Cobalt ids is parked or "
        "failed, or the job has `attention` (false: all others).",
    )

    attention: bool | None = Field(
        default=None,
        description="Processing past the deadline with no outcome (`attention` set): someone "
        "should check the chart (false: all others).",
    )

    @field_validator("created_to")
    @classmethod
    def _after_from(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("created_from")
        if value is not None and start is not None and value <= start:
            raise ValueError("must be later than created_from")
        return value


class JobPageQuery(JobFilters):
    """Query of `GET /v1/jobs`."""

    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    cursor: JobCursor | None = None


class JobSearchRequest(JobPageQuery):
    """Body of `POST /v1/jobs/search`: PHI travels in the body, never in a URL."""

    patient_mrn: SearchTerm | None = None
    appointment_id: SearchTerm | None = None

    @model_validator(mode="after")
    def _has_term(self) -> JobSearchRequest:
        if self.patient_mrn is None and self.appointment_id is None:
            raise ValueError("give patient_mrn or appointment_id (or use GET /v1/jobs)")
        return self


class InboxQuery(_Query):
    """Query of `GET /v1/inbox`."""

    state: Literal["parked", "failed", "unknown_type", "conflict", "held"] | None = None
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    cursor: DeliveryCursor | None = None


def _no_nul(value: str) -> str:
    if "\x00" in value:  # PostgreSQL's JSON cannot store it, and no reason needs it
        raise ValueError("must not contain NUL characters")
    return value


# The cap comes first: after a validator, pydantic would check it as "items after validation".
StaffReason = Annotated[
    StrictStr,
    Field(
        max_length=500,
        description="Why, in at most 500 characters. Kept in the audit log for good and never "
        "purged: write no PHI in it (no names, MRNs or note text).",
    ),
    AfterValidator(_not_blank),
    AfterValidator(_no_nul),
]


class StaffAction(_Strict):
    """Body of a support action: why it is done (kept in the audit log; no PHI, please)."""

    reason: StaffReason


class RetryRequest(StaffAction):
    confirm_not_in_emr: StrictBool = Field(
        default=False,
        description="Staff checked the chart: the first submission is not in the EMR. Needed "
        "when it may have reached Cobalt, and only after a reconcile lookup since it failed.",
    )


class ChartOutcomeRequest(StaffAction):
    """Body of `POST /v1/jobs/{id}/chart-outcome`: what support saw in the EMR's chart."""

    found_in_chart: StrictBool = Field(
        description="true: the note or encounter is in the chart (the job completes); false: "
        "it is not (the job fails as `not_in_chart`, and may then be retried)."
    )


class ReplayRequest(StaffAction):
    dry_run: StrictBool = Field(default=True, description="Roll back and report instead.")


class SupportJobOut(JobOut):
    """A job as support sees it: the job resource plus what staff act on."""

    clinic_id: int
    flagged: bool = Field(description="Needs attention (see the `flagged` filter).")
    retry_of: uuid.UUID | None


class ReconcileLookupOut(BaseModel):
    """What a staff-requested lookup in Cobalt's log found, and what it changed."""

    found: bool = Field(description="Cobalt's log holds an outcome event for this job.")
    event_type: str | None = Field(description="The outcome found, e.g. `note.created`.")
    applied: bool = Field(description="The job took that outcome now.")
    events_searched: int = Field(description="Events Cobalt's log answered with.")
    status_before: str
    status_after: str
    summary: str = Field(description="The same, in plain words.")


class ReconcileOut(SupportJobOut):
    """The job after a staff-requested lookup, and what the lookup found."""

    lookup: ReconcileLookupOut


class JobListOut(BaseModel):
    jobs: list[SupportJobOut]
    next_cursor: str | None


class TimelineEntry(BaseModel):
    at: datetime
    type: str
    detail: dict[str, Any]


class DeliveryOut(BaseModel):
    id: int
    received_at: datetime
    event_type: str | None
    state: str
    state_detail: str | None
    signature_match: str
    attempt: int | None
    job_id: uuid.UUID | None
    cobalt_job_id: str | None
    telephone_encounter_id: str | None


class DeliveryBodyOut(DeliveryOut):
    headers: dict[str, Any]
    body: str | None = Field(description="The raw body as received; null once purged.")


class TimelineOut(BaseModel):
    job_id: uuid.UUID
    events: list[TimelineEntry]
    deliveries: list[DeliveryOut]


class InboxOut(BaseModel):
    deliveries: list[DeliveryOut]
    next_cursor: str | None
    attention_jobs: list[SupportJobOut] = Field(
        default_factory=list,
        description="Jobs processing past the deadline with no outcome, longest waiting first "
        "(first page only, at most 50; all of them: `GET /v1/jobs?attention=true`).",
    )


class ReplayOut(BaseModel):
    delivery_id: int
    dry_run: bool
    state_before: str
    state_after: str
    state_detail: str | None
    job_id: uuid.UUID | None
    job_status_before: str | None
    job_status_after: str | None
