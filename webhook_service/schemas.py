"""Request and response shapes at the HTTP edge, with Cobalt's limits checked first.

The same pydantic models validate requests and generate `/openapi.json`, so the published
contract cannot drift from what the service enforces.
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
    Discriminator,
    Field,
    StrictBool,
    StrictStr,
    Tag,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from typing_extensions import TypeAliasType, TypedDict  # pydantic reads these on 3.11

from webhook_service.errors import FieldError
from webhook_service.lifecycle import ATTENTION_MESSAGES, ERROR_CODES


def _utf16_length(value: str) -> int:
    # Cobalt runs on Node.js, where a string's length counts UTF-16 code units: an emoji is 2.
    return len(value.encode("utf-16-le")) // 2


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _text_when_given(value: str) -> str:
    # An optional string is left out by omitting it (or sending null). Sent blank, Cobalt would
    # still act on it: look up pharmacy "", partially match a medication named "  " against
    # the patient's list, or write an empty reason or caller into the chart.
    if not value.strip():
        raise ValueError("must not be blank: leave the field out instead")
    return value


def _length_check(minimum: int, maximum: int) -> AfterValidator:
    """A length check counted as Cobalt counts (UTF-16 code units)."""

    def check(value: str) -> str:
        length = _utf16_length(value)
        if length > maximum:
            raise ValueError(f"must be at most {maximum} characters")
        if length < minimum:
            raise ValueError(f"must be at least {minimum} characters")
        return value

    return AfterValidator(check)


def _length_schema(minimum: int, maximum: int) -> WithJsonSchema:
    """Publish the same limit in the OpenAPI schema."""
    schema: dict[str, Any] = {"type": "string", "maxLength": maximum}
    if minimum:
        schema["minLength"] = minimum
    schema["description"] = "Length counted in UTF-16 code units, as Cobalt counts it."
    return WithJsonSchema(schema)


Reason = Annotated[
    StrictStr, AfterValidator(_text_when_given), _length_check(0, 50), _length_schema(0, 50)
]
MedicationName = Annotated[
    StrictStr, AfterValidator(_text_when_given), _length_check(2, 50), _length_schema(2, 50)
]
Caller = Annotated[
    StrictStr, AfterValidator(_text_when_given), _length_check(0, 100), _length_schema(0, 100)
]
OptionalText = Annotated[StrictStr, AfterValidator(_text_when_given)]

# The service's own cap on an id (Cobalt documents none), counted as every other length here.
RequiredId = Annotated[
    StrictStr, AfterValidator(_not_blank), _length_check(0, 200), _length_schema(1, 200)
]


class _Strict(BaseModel):
    # Unknown fields are refused rather than forwarded: Cobalt's shape is the contract, and a
    # typo such as "reasons" should be a 422 here, not a silently dropped field in the EMR.
    model_config = ConfigDict(extra="forbid", frozen=True)


SOAP_SECTIONS = ("subjective", "objective", "assessment", "plan")


class SoapNote(_Strict):
    """A structured note: the four SOAP sections, as Cobalt documents the structured form.

    A section may be empty, but not all four: that would write an empty note into a chart.
    """

    subjective: StrictStr
    objective: StrictStr
    assessment: StrictStr
    plan: StrictStr

    @model_validator(mode="after")
    def _has_text(self) -> SoapNote:
        if not any(getattr(self, section).strip() for section in SOAP_SECTIONS):
            raise ValueError(
                "must have text in at least one of subjective, objective, assessment and plan"
            )
        return self


def _note_form(value: Any) -> str:
    return "text" if isinstance(value, str) else "soap"


NoteBody = Annotated[
    Annotated[StrictStr, AfterValidator(_not_blank), Tag("text")]
    | Annotated[SoapNote, Tag("soap")],
    Discriminator(_note_form),
]


class NoteRequest(_Strict):
    """Body of `POST /v1/notes`, exactly Cobalt's."""

    appointment_id: RequiredId = Field(
        description="Cobalt's appointment id, from GET /v1/appointments."
    )
    note: NoteBody = Field(
        description="Text (sections separated by newlines) or the four SOAP sections."
    )
    icd_10_codes: list[StrictStr] | None = Field(
        default=None, description="Only with a structured (SOAP) note."
    )
    cpt_codes: list[StrictStr] | None = Field(
        default=None, description="Only with a structured (SOAP) note."
    )

    @field_validator("icd_10_codes", "cpt_codes")
    @classmethod
    def _only_with_soap(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        # Cobalt documents the codes for structured notes only and drops them from a text
        # note without a word: the clinic would believe the codes were written.
        if value is not None and isinstance(info.data.get("note"), str):
            raise ValueError(
                "is only accepted with a structured (SOAP) note: Cobalt ignores codes sent "
                "with a text note"
            )
        return value


# Named, so a generated client has one `HighPriority` enum rather than an anonymous one.
HighPriority = TypeAliasType("HighPriority", Literal["true", "false"])


class TelephoneEncounterRequest(_Strict):
    """Body of `POST /v1/telephone-encounters`, exactly Cobalt's, with its limits."""

    patient_mrn: RequiredId
    provider_id: RequiredId
    location_id: RequiredId
    assigned_to_id: RequiredId
    reason: Reason | None = None
    refill_medication_name: MedicationName | None = None
    pharmacy_ehr_id: OptionalText | None = None
    caller: Caller | None = None
    message: OptionalText | None = None
    is_high_priority: HighPriority | None = Field(
        default=None, description='The strings "true" or "false", as Cobalt expects.'
    )
    template_name: OptionalText | None = None


class CobaltIds(BaseModel):
    job_id: str | None
    telephone_encounter_id: str | None


class SubmissionOut(BaseModel):
    state: str = Field(description="pending, waiting, sending, accepted, retrying, unknown…")
    attempts: int
    next_attempt_at: datetime | None


# The descriptions of a job's codes are built from the registry (`lifecycle.ERROR_CODES`,
# `ATTENTION_MESSAGES`), so the OpenAPI document cannot list a code the service does not set.
_ERROR_CODE_DESCRIPTION = (
    "What went wrong, for a front end to switch on. The service's codes:\n\n"
    + "".join(f"- `{code}`: {entry.meaning}\n" for code, entry in ERROR_CODES.items())
    + "\nA failure Cobalt reports by webhook carries Cobalt's own reason code instead when it "
    "gives one (`outcome.reasons[0].code`; the sandbox's `appointment_not_found` or "
    "`chart_locked`, for instance): treat any code not listed here as failed, and show "
    "`message`."
)
_ERROR_FIELD_DESCRIPTION = (
    "The request field the error is about, for the codes that name one: "
    + ", ".join(
        f"`{entry.field}` with `{code}`"
        for code, entry in ERROR_CODES.items()
        if entry.field is not None
    )
    + "; otherwise null."
)
_ATTENTION_CODE_DESCRIPTION = (
    "Why the job needs a person:\n\n"
    + "".join(f"- `{code}`: {message}\n" for code, message in ATTENTION_MESSAGES.items())
    + "\nTreat an unknown code the same way: the job is not settled; show `message`."
)


class JobError(BaseModel):
    code: str = Field(description=_ERROR_CODE_DESCRIPTION)
    message: str
    field: str | None = Field(default=None, description=_ERROR_FIELD_DESCRIPTION)


class Attention(BaseModel):
    code: str = Field(description=_ATTENTION_CODE_DESCRIPTION)
    message: str
    since: datetime


# Named, so the OpenAPI document (and clients generated from it) share one enum for each,
# also where a filter makes it optional.
JobKind = TypeAliasType("JobKind", Literal["note", "telephone_encounter"])
JobStatus = TypeAliasType("JobStatus", Literal["processing", "completed", "partial", "failed"])


class JobOutcome(TypedDict, total=False):
    """What Cobalt said when the job settled (`lifecycle.outcome_from_event` builds it).

    The named keys appear when Cobalt gave them; every other key of the event's data is
    passed through beside them as Cobalt sent it.
    """

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]

    event: str
    message: str
    failure_reason: str
    reasons: list[dict[str, Any]]
    available_medications: list[Any]
    refill_medication_name: str
    telephone_encounter_id: str
    appointment_id: str
    note_id: str
    omitted_keys: list[str]


class JobOut(BaseModel):
    """A job as front ends see it (the contract resource)."""

    id: uuid.UUID
    kind: JobKind
    status: JobStatus = Field(
        description="`processing` until the job settles, then once and for good `completed`, "
        "`partial` (created, with part of it missing: see `error`) or `failed` (Cobalt said "
        "so, or the request certainly never reached it). A settled job never changes status "
        "again. A processing job past its deadline with no outcome carries `attention`."
    )
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    cobalt: CobaltIds
    outcome: JobOutcome | None = Field(
        description="When settled, what Cobalt said: event, message, failure_reason, reasons, "
        "available_medications, refill_medication_name, telephone_encounter_id, "
        "appointment_id, note_id when given; beside them, every other key of the event's "
        "data as Cobalt sent it (its bookkeeping aside), within 16 KiB, with omitted_keys "
        "naming any left out for size or depth."
    )
    error: JobError | None
    attention: Attention | None = Field(
        default=None,
        description="While processing, when the job needs a person: its status cannot be "
        "known yet (see `code`).",
    )
    retried_as: uuid.UUID | None = Field(
        default=None,
        description="On a failed job: the id of the job support resubmitted it as (the job's "
        "ETag changes when it is set). Follow that job instead.",
    )
    submission: SubmissionOut
    purged_at: datetime | None = Field(
        default=None,
        description="When the job's PHI (request, outcome details) was erased after the "
        "retention period; ids, statuses and the timeline remain.",
    )


class FieldProblem(BaseModel):
    field: str
    message: str
    code: str | None = Field(
        default=None,
        description="For an id the clinic's EMR lists lack (pre-flight): the error code "
        "Cobalt's refusal would have had (`provider_not_found`, `location_not_found`, "
        "`pharmacy_not_found`).",
    )


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = None


class WebhookAck(BaseModel):
    received: Literal[True]


def field_errors(exc: ValidationError) -> list[FieldError]:
    """Turn pydantic's errors into `{field, message}` pairs a front-end developer can act on."""
    errors = []
    for err in exc.errors(include_url=False):
        # Drop the tag pydantic adds for the form `note` took ("text" or "soap").
        loc = [
            str(part)
            for index, part in enumerate(err["loc"])
            if not (index == 1 and err["loc"][0] == "note" and part in ("text", "soap"))
        ]
        field = ".".join(loc) or "(body)"
        errors.append(FieldError(field, _message(err)))
    return errors


def _message(err: Any) -> str:
    kind = err["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a field of this request"
    if kind == "string_type":
        return "must be a string"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        if tuple(err["loc"][:2]) == ("note", "soap"):
            return "must be text or an object with subjective, objective, assessment and plan"
        return "must be an object"
    if kind == "literal_error":
        return "must be one of " + str(err["ctx"]["expected"])
    if kind == "value_error":
        return str(err["ctx"]["error"])
    if kind == "string_too_long":
        return f"must be at most {err['ctx']['max_length']} characters"
    if kind == "string_too_short":
        return f"must be at least {err['ctx']['min_length']} characters"
    if kind == "less_than_equal":
        return f"must be at most {err['ctx']['le']}"
    if kind == "greater_than_equal":
        return f"must be at least {err['ctx']['ge']}"
    return str(err["msg"]).lower()


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
