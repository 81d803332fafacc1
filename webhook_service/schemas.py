"""Request and response shapes at the HTTP edge, with Cobalt's limits checked first.

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
    StrictStr,
    Tag,
    ValidationError,
    WithJsonSchema,
)

from webhook_service.errors import FieldError


def _utf16_length(value: str) -> int:
    # Cobalt runs on Node.js, where a string's length counts UTF-16 code units: an emoji is 2.
    return len(value.encode("utf-16-le")) // 2


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
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


Reason = Annotated[StrictStr, _length_check(0, 50), _length_schema(0, 50)]
MedicationName = Annotated[StrictStr, _length_check(2, 50), _length_schema(2, 50)]
Caller = Annotated[StrictStr, _length_check(0, 100), _length_schema(0, 100)]


RequiredId = Annotated[StrictStr, AfterValidator(_not_blank), Field(max_length=200)]


class _Strict(BaseModel):
    # Unknown fields are refused rather than forwarded: Cobalt's shape is the contract, and a
    # typo such as "reasons" should be a 422 here, not a silently dropped field in the EMR.
    model_config = ConfigDict(extra="forbid", frozen=True)


class SoapNote(_Strict):
    """A structured note: the four SOAP sections."""

    subjective: StrictStr
    objective: StrictStr
    assessment: StrictStr
    plan: StrictStr


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
    icd_10_codes: list[StrictStr] | None = None
    cpt_codes: list[StrictStr] | None = None


class TelephoneEncounterRequest(_Strict):
    """Body of `POST /v1/telephone-encounters`, exactly Cobalt's, with its limits."""

    patient_mrn: RequiredId
    provider_id: RequiredId
    location_id: RequiredId
    assigned_to_id: RequiredId
    reason: Reason | None = None
    refill_medication_name: MedicationName | None = None
    pharmacy_ehr_id: StrictStr | None = None
    caller: Caller | None = None
    message: StrictStr | None = None
    is_high_priority: Literal["true", "false"] | None = Field(
        default=None, description='The strings "true" or "false", as Cobalt expects.'
    )
    template_name: StrictStr | None = None


class CobaltIds(BaseModel):
    job_id: str | None
    telephone_encounter_id: str | None


class SubmissionOut(BaseModel):
    state: str = Field(description="pending, waiting, sending, accepted, retrying, unknown…")
    attempts: int
    next_attempt_at: datetime | None


class JobError(BaseModel):
    code: str
    message: str


class JobOut(BaseModel):
    """A job as front ends see it (the contract resource)."""

    id: uuid.UUID
    kind: Literal["note", "telephone_encounter"]
    status: Literal["processing", "completed", "partial", "failed"]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    cobalt: CobaltIds
    outcome: dict[str, Any] | None = Field(
        description="When settled: event, message, reasons, available_medications, …"
    )
    error: JobError | None
    submission: SubmissionOut
    purged_at: datetime | None = Field(
        default=None,
        description="When the job's PHI (request, outcome details) was erased after the "
        "retention period; ids, statuses and the timeline remain.",
    )


class FieldProblem(BaseModel):
    field: str
    message: str


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
    return str(err["msg"]).lower()
