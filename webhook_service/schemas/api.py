"""Front ends' request and response shapes (and the problem document), with Cobalt's limits
checked first.

The same pydantic models validate requests and generate `/openapi.json`, so the published
contract cannot drift from what the service enforces.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    StrictStr,
    Tag,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from typing_extensions import TypeAliasType, TypedDict  # pydantic reads these on 3.11

from webhook_service import lifecycle
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


# The lifecycle's own enums (one list of kinds and statuses), accepted as plain strings in
# strict models too; named, so the OpenAPI document (and clients generated from it) share
# one enum for each, also where a filter makes it optional.
JobKind = Annotated[lifecycle.JobKind, Strict(False)]
JobStatus = Annotated[lifecycle.JobStatus, Strict(False)]


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
