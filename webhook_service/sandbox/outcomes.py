"""What Cobalt would say: request validation and each job's outcome, as pure functions.

Validation mirrors Cobalt's synchronous errors; the outcome is the event type and `data` the
webhook will carry, decided from the request and the seeded EMR.

Cobalt's docs name its synchronous errors but not their statuses. The sandbox answers a
malformed request (missing field, wrong type, a length over Cobalt's limits, an empty note)
with 400, an id the EMR does not know (provider, staff member, location, pharmacy, user, and
a medication not found when refused at once) with 404, and an EMR Cobalt does not support
with 422, always as `{"success": false, "message": ...}`: so a client that keys on 400 alone,
or on the status rather than the words, is caught here before it meets Cobalt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from webhook_service.sandbox.data import Patient, SeedData

NOTE_SECTIONS = ("subjective", "objective", "assessment", "plan")
CODE_LISTS = ("icd_10_codes", "cpt_codes")


BAD_REQUEST, NOT_FOUND, UNPROCESSABLE = 400, 404, 422


class SubmissionRejected(Exception):
    """A submission Cobalt refuses at once; `code` is safe to log, `message` may not be.

    `status` is the HTTP status of the answer; `extra` goes into the answer's body beside
    `success` and `message` (a medication not found lists the available medications).
    """

    def __init__(
        self,
        message: str,
        code: str,
        status: int = BAD_REQUEST,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"success": False, "message": self.message, **self.extra}


def node_length(value: str) -> int:
    """A string's length as Cobalt's Node.js counts it: UTF-16 code units ("😀" is 2).

    Deliberately the sandbox's own copy of Cobalt's rule, not the service's check: the
    sandbox stands in for Cobalt, so a wrong count in the service shows up against it.
    """
    return len(value.encode("utf-16-le")) // 2


@dataclass(frozen=True)
class NoteRequest:
    appointment_id: str


@dataclass(frozen=True)
class TelephoneEncounterRequest:
    patient_mrn: str
    provider_id: str
    location_id: str
    assigned_to_id: str
    reason: str | None = None
    refill_medication_name: str | None = None
    pharmacy_ehr_id: str | None = None
    caller: str | None = None
    message: str | None = None
    is_high_priority: str | None = None
    template_name: str | None = None


@dataclass(frozen=True)
class Outcome:
    event_type: str
    data: dict[str, Any]


def parse_note(body: Any) -> NoteRequest:
    """Check a POST /v1/notes body the way Cobalt does: shape only, not the appointment."""
    if not isinstance(body, dict):
        raise SubmissionRejected("Request body must be a JSON object", "invalid_body")
    appointment_id = body.get("appointment_id")
    if appointment_id is None or appointment_id == "":
        raise SubmissionRejected("Missing required field: appointment_id", "missing_field")
    if not isinstance(appointment_id, str):
        raise SubmissionRejected("appointment_id must be a string", "invalid_type")
    if "note" not in body or body["note"] is None:
        raise SubmissionRejected("Missing required field: note", "missing_field")
    note = body["note"]
    if isinstance(note, str):
        if not note.strip():
            raise SubmissionRejected("note must not be empty", "empty_note")
    elif isinstance(note, dict):
        _check_structured_note(note)
    else:
        raise SubmissionRejected("note must be a string or an object", "invalid_type")
    # Newer docs put the code lists beside the structured note; accept them at either level.
    _check_code_lists(body)
    return NoteRequest(appointment_id=appointment_id)


def _check_structured_note(note: dict[str, Any]) -> None:
    """Cobalt's structured note is its four SOAP sections: all four keys, each a string, and
    at least one with text (four blank sections would write an empty note into the chart)."""
    for section in NOTE_SECTIONS:
        if section not in note or note[section] is None:
            raise SubmissionRejected(f"Missing required field: note.{section}", "missing_field")
        if not isinstance(note[section], str):
            raise SubmissionRejected(f"note.{section} must be a string", "invalid_type")
    if not any(note[s].strip() for s in NOTE_SECTIONS):
        raise SubmissionRejected(
            "note must have text in at least one of: " + ", ".join(NOTE_SECTIONS), "empty_note"
        )
    _check_code_lists(note, prefix="note.")


def _check_code_lists(container: dict[str, Any], prefix: str = "") -> None:
    for name in CODE_LISTS:
        value = container.get(name)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise SubmissionRejected(f"{prefix}{name} must be an array of strings", "invalid_type")


_REQUIRED_TE = ("patient_mrn", "provider_id", "location_id", "assigned_to_id")
_OPTIONAL_TE = (
    "reason",
    "refill_medication_name",
    "pharmacy_ehr_id",
    "caller",
    "message",
    "is_high_priority",
    "template_name",
)


def parse_telephone_encounter(body: Any, seed: SeedData) -> TelephoneEncounterRequest:
    """Check a POST /v1/telephone-encounters body, in the order Cobalt's docs list errors."""
    if not isinstance(body, dict):
        raise SubmissionRejected("Request body must be a JSON object", "invalid_body")
    for name in _REQUIRED_TE:
        if body.get(name) is None or body.get(name) == "":
            raise SubmissionRejected(f"Missing required field: {name}", "missing_field")
    for name in (*_REQUIRED_TE, *_OPTIONAL_TE):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise SubmissionRejected(f"{name} must be a string", "invalid_type")
    fields: dict[str, Any] = {n: body.get(n) for n in (*_REQUIRED_TE, *_OPTIONAL_TE)}
    request = TelephoneEncounterRequest(**fields)

    if request.reason is not None and node_length(request.reason) > 50:
        raise SubmissionRejected("Reason must be 50 characters or less", "reason_too_long")
    medication = request.refill_medication_name
    if medication is not None and not 2 <= node_length(medication) <= 50:
        raise SubmissionRejected(
            "Medication name must be between 2 and 50 characters", "medication_name_length"
        )
    if request.caller is not None and node_length(request.caller) > 100:
        raise SubmissionRejected("Caller must be 100 characters or less", "caller_too_long")
    if request.is_high_priority is not None and request.is_high_priority not in ("true", "false"):
        raise SubmissionRejected(
            'is_high_priority must be "true" or "false"', "invalid_is_high_priority"
        )

    if request.provider_id not in seed.providers:
        raise SubmissionRejected(
            "Provider not found. Sync providers using GET /v1/providers.",
            "provider_not_found",
            NOT_FOUND,
        )
    if request.assigned_to_id not in seed.staff:
        raise SubmissionRejected(
            "Staff member not found: assigned_to_id is not in the staff list.",
            "staff_member_not_found",
            NOT_FOUND,
        )
    if request.location_id not in seed.locations:
        raise SubmissionRejected(
            "Location not found. Call GET /v1/locations to resolve this error.",
            "location_not_found",
            NOT_FOUND,
        )
    if request.pharmacy_ehr_id is not None and request.pharmacy_ehr_id not in seed.pharmacies:
        raise SubmissionRejected(
            "Pharmacy not found. Call GET /v1/pharmacies to see what available pharmacies "
            "there are.",
            "pharmacy_not_found",
            NOT_FOUND,
        )
    # The message deliberately does not echo the MRN: callers log these messages.
    if request.patient_mrn not in seed.patients:
        raise SubmissionRejected(
            "User not found: no patient has that MRN.", "user_not_found", NOT_FOUND
        )
    return request


def unsupported_emr() -> SubmissionRejected:
    """What Cobalt answers a clinic whose EMR it cannot write telephone encounters into."""
    return SubmissionRejected(
        "Unsupported EMR: telephone encounters are not available for this EMR.",
        "unsupported_emr",
        UNPROCESSABLE,
    )


def medication_not_found(
    request: TelephoneEncounterRequest, seed: SeedData
) -> SubmissionRejected | None:
    """The synchronous form of "medication not found" (Cobalt's docs give both: an error
    "returned with a list of available medications", and a failure webhook), or None when
    the requested medication is refillable for the patient or none was requested."""
    if request.refill_medication_name is None:
        return None
    patient = seed.patients[request.patient_mrn]
    if match_refillable_medication(patient, request.refill_medication_name) is not None:
        return None
    return SubmissionRejected(
        "Medication not found in the patient's refillable medications.",
        "medication_not_found",
        NOT_FOUND,
        {"available_medications": list(patient.refillable_medications)},
    )


def foreign_appointment_event(appointment_id: str) -> Outcome:
    """An event of another Cobalt resource that shares a note's appointment id (an
    appointment update that failed): it says nothing about the note."""
    return Outcome(
        "appointment.failed",
        {
            "appointment_id": appointment_id,
            "failure_reason": "The appointment could not be updated in the EMR.",
            "reasons": [
                {"code": "appointment_locked", "description": "The appointment is locked."}
            ],
        },
    )


def note_outcome(request: NoteRequest, seed: SeedData, success_event: str) -> Outcome:
    """A note is written when its appointment exists in the EMR, and fails otherwise."""
    if request.appointment_id in seed.appointments:
        return Outcome(
            success_event,
            {"appointment_id": request.appointment_id, "message": "Note uploaded to the EMR."},
        )
    return Outcome(
        "note.failed",
        {
            "appointment_id": request.appointment_id,
            "failure_reason": "Appointment not found in the EMR.",
            "reasons": [
                {
                    "code": "appointment_not_found",
                    "description": "No appointment with this id exists in the EMR.",
                }
            ],
        },
    )


def telephone_encounter_outcome(
    request: TelephoneEncounterRequest, seed: SeedData, telephone_encounter_id: str
) -> Outcome:
    """Decide created, created_partial or failed for an accepted telephone encounter."""
    patient = seed.patients[request.patient_mrn]
    data: dict[str, Any] = {"telephone_encounter_id": telephone_encounter_id}
    if patient.chart_locked:
        return Outcome(
            "telephone_encounter.failed",
            data
            | {
                "failure_reason": "The EMR could not open the patient's chart.",
                "reasons": [
                    {
                        "code": "chart_locked",
                        "description": "The chart is locked by another EMR user.",
                    }
                ],
            },
        )
    if request.refill_medication_name is None:
        return Outcome(
            "telephone_encounter.created",
            data | {"message": "Telephone encounter created successfully."},
        )

    medication = match_refillable_medication(patient, request.refill_medication_name)
    if medication is None:
        # Cobalt does not create the encounter and lists what could have been refilled.
        return Outcome(
            "telephone_encounter.failed",
            data
            | {
                "failure_reason": "Medication not found in the patient's refillable medications.",
                "reasons": [
                    {
                        "code": "medication_not_found",
                        "description": "No refillable medication matched the requested name.",
                    }
                ],
                "available_medications": patient.refillable_medications,
            },
        )
    if request.pharmacy_ehr_id is not None:
        data["pharmacy_ehr_id"] = request.pharmacy_ehr_id
        if seed.pharmacies[request.pharmacy_ehr_id].fails_refill_step:
            return Outcome(
                "telephone_encounter.created_partial",
                data
                | {
                    "message": "Telephone encounter created, but the medication refill could "
                    "not be added; add it manually.",
                    "refill_medication_name": medication,
                    "failure_reason": "The medication refill could not be added.",
                    "reasons": [
                        {
                            "code": "pharmacy_step_failed",
                            "description": "The EMR rejected the pharmacy for this refill.",
                        }
                    ],
                },
            )
    return Outcome(
        "telephone_encounter.created",
        data
        | {
            "message": "Telephone encounter created successfully.",
            "refill_medication_name": medication,
        },
    )


def match_refillable_medication(patient: Patient, requested: str) -> str | None:
    """Return the first refillable medication whose name contains `requested`, ignoring case."""
    wanted = " ".join(requested.lower().split())
    for name in patient.refillable_medications:
        if wanted in " ".join(name.lower().split()):
            return name
    return None
