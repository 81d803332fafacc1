"""The job state machine and Cobalt's event → status table: pure functions, no I/O.

Longer than 400 lines because the states, the codes a job carries and what each Cobalt event
does to a job are one set of rules, read and changed together.

Everything here is a function of its arguments (the clock and randomness are passed in), so
the rules that decide what happens to a patient's note carry most of the tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    PROCESSING = "processing"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.PARTIAL, JobStatus.FAILED})


class JobKind(StrEnum):
    NOTE = "note"
    TELEPHONE_ENCOUNTER = "telephone_encounter"


class Submission(StrEnum):
    """Where a processing job's request to Cobalt stands."""

    PENDING = "pending"  # waiting to be sent
    WAITING = "waiting"  # a note for the same appointment is in flight: wait for it
    SENDING = "sending"  # claimed by a worker, request under way
    ACCEPTED = "accepted"  # Cobalt answered 2xx
    RETRYING = "retrying"  # transient failure: Cobalt did not take it, resend when due
    UNKNOWN = "unknown"  # may or may not have reached Cobalt: reconcile, never resend blindly
    REJECTED = "rejected"  # Cobalt answered 4xx: the job failed
    GAVE_UP = "gave_up"  # transient failures past the attempt limit: the job failed


DUE = frozenset({Submission.PENDING, Submission.WAITING, Submission.RETRYING})

# --- The codes a job carries -------------------------------------------------------------------
# One registry of every `error.code` the service itself sets, with what it means and the
# request field `error.field` names with it, if any. The OpenAPI description is built from it
# and tests hold the README's table and every place that sets a code to it. A failure Cobalt
# reports by webhook carries Cobalt's own reason code instead when it gives one
# (`reasons[0].code`), which no list here can name: front ends treat an unknown code as
# "failed, read `error.message`".
COBALT_FAILED = "cobalt_failed"
REFILL_NOT_ADDED = "refill_not_added"
MEDICATION_NOT_FOUND = "medication_not_found"
LOGIN_REQUIRED = "login_required"
PROVIDER_NOT_FOUND = "provider_not_found"
LOCATION_NOT_FOUND = "location_not_found"
STAFF_NOT_FOUND = "staff_not_found"
PHARMACY_NOT_FOUND = "pharmacy_not_found"
USER_NOT_FOUND = "user_not_found"
UNSUPPORTED_EMR = "unsupported_emr"
COBALT_REJECTED = "cobalt_rejected"
COBALT_UNAVAILABLE = "cobalt_unavailable"
APPOINTMENT_BUSY = "appointment_busy"
NOT_IN_CHART = "not_in_chart"


@dataclass(frozen=True)
class ErrorCode:
    meaning: str
    field: str | None = None  # the request field `error.field` names with this code


ERROR_CODES: dict[str, ErrorCode] = {
    COBALT_FAILED: ErrorCode("Cobalt reported a failure without a reason code of its own."),
    REFILL_NOT_ADDED: ErrorCode(
        "`partial`: the encounter was created but the medication refill was not added; add "
        "it in the EMR."
    ),
    MEDICATION_NOT_FOUND: ErrorCode(
        "The medication to refill is not on the patient's list; "
        "`outcome.available_medications` lists what could be refilled (`error.field` is set "
        "when Cobalt refused at once).",
        "refill_medication_name",
    ),
    LOGIN_REQUIRED: ErrorCode(
        "Cobalt refused at once: the clinic's EMR link expired; re-link it in Cobalt."
    ),
    PROVIDER_NOT_FOUND: ErrorCode("Cobalt refused at once: provider not found.", "provider_id"),
    LOCATION_NOT_FOUND: ErrorCode("Cobalt refused at once: location not found.", "location_id"),
    STAFF_NOT_FOUND: ErrorCode("Cobalt refused at once: staff member not found.", "assigned_to_id"),
    PHARMACY_NOT_FOUND: ErrorCode("Cobalt refused at once: pharmacy not found.", "pharmacy_ehr_id"),
    # No field: Cobalt's docs do not say whose user (the patient, or the EMR login).
    USER_NOT_FOUND: ErrorCode("Cobalt refused at once: user not found."),
    UNSUPPORTED_EMR: ErrorCode(
        "Cobalt refused at once: the clinic's EMR is not supported for this."
    ),
    COBALT_REJECTED: ErrorCode(
        "Cobalt refused at once for another reason; `error.message` is Cobalt's."
    ),
    COBALT_UNAVAILABLE: ErrorCode(
        "The request never reached Cobalt (unreachable past the attempt limit, or still "
        "unsent at the deadline): nothing is in the chart; submitting again is safe."
    ),
    APPOINTMENT_BUSY: ErrorCode(
        "A note never sent: by its deadline an earlier note for the appointment still had "
        "no outcome. Check the chart for the earlier note before submitting again."
    ),
    NOT_IN_CHART: ErrorCode(
        "Support checked the chart and the note or encounter is not there; it may be retried."
    ),
}

# `attention` codes: a processing job that needs a person, and what it tells the user.
NO_OUTCOME = "no_outcome"
ATTENTION_MESSAGES = {
    NO_OUTCOME: (
        "No outcome from Cobalt by the deadline. The note or encounter may or may not be in "
        "the EMR: check the chart before resubmitting. The job is still being looked up."
    ),
}


def attention_message(code: str) -> str:
    return ATTENTION_MESSAGES.get(code, "This job needs a person's attention.")


def status_for_event(event_type: str) -> JobStatus | None:
    """Map a Cobalt event type to the job status it settles, or None if it settles nothing.

    Only events of the resources this service writes (`note.*`, `telephone_encounter.*`)
    settle anything: an `appointment.failed` from another Cobalt operation on the account is
    no note's outcome. `login_required` is about a clinic, not a job (`CLINIC_EVENTS`).
    """
    if kind_for_event(event_type) is None:
        return None
    if event_type in {"note.created", "note.uploaded", "telephone_encounter.created"}:
        return JobStatus.COMPLETED
    if event_type == "telephone_encounter.created_partial":
        return JobStatus.PARTIAL
    if event_type.endswith((".failed", "_failed")):
        return JobStatus.FAILED
    return None


# Events about a linked clinic rather than a job: stored and acted on for the clinic.
CLINIC_EVENTS = frozenset({LOGIN_REQUIRED})


def kind_for_event(event_type: str) -> JobKind | None:
    """The job kind an event type is about, when it says: its resource, `<kind>.…`.

    (`parking.EVENT_KIND` states this rule in SQL for the parked sweep; a test checks both.)
    """
    for kind in JobKind:
        if event_type.startswith(f"{kind}."):
            return kind
    return None


def settles(kind: str, event_type: str) -> bool:
    """Whether an event of `event_type` can be the outcome of a job of `kind`.

    A note is settled only by `note.*` outcomes and an encounter only by
    `telephone_encounter.*` ones, however the event was matched: Cobalt's job id names an
    RPA job, and an event of another resource carrying it is not this job's outcome.
    """
    return kind_for_event(event_type) == kind and status_for_event(event_type) is not None


# The outcome event types Cobalt documents for each kind: what a lookup of Cobalt's log by
# event type asks for (its `event_type` filter takes one type). Each settles its kind.
DOCUMENTED_OUTCOMES = {
    JobKind.NOTE: ("note.created", "note.uploaded", "note.failed"),
    JobKind.TELEPHONE_ENCOUNTER: (
        "telephone_encounter.created",
        "telephone_encounter.created_partial",
        "telephone_encounter.failed",
    ),
}


def matches_by_appointment(kind: str) -> bool:
    """Whether a job of `kind` may be found by the event's `data.appointment_id`.

    Only notes: at most one note per (clinic, appointment) is at Cobalt at a time, so the
    match is never ambiguous; nothing of that kind holds for any other resource.
    """
    return kind == JobKind.NOTE


# Statuses in which a job still takes an outcome. Terminal is terminal, with no exception:
# a job whose fate is unknown past its deadline stays `processing` (with `attention`).
OPEN_TO_OUTCOME = frozenset({JobStatus.PROCESSING})


def open_to_outcome(status: str) -> bool:
    """Whether a job in `status` still takes an outcome (SQL filters use `OPEN_TO_OUTCOME`)."""
    return status in OPEN_TO_OUTCOME


class Verdict(StrEnum):
    APPLY = "apply"  # the job takes this outcome
    REPEAT = "repeat"  # the job already has this outcome: nothing changes
    CONFLICT = "conflict"  # a different outcome than the one applied: record and flag


def judge_outcome(current: JobStatus, incoming: JobStatus) -> Verdict:
    """Decide what an outcome from Cobalt does to a job in status `current`."""
    if open_to_outcome(current):
        return Verdict.APPLY
    if current == incoming:
        return Verdict.REPEAT
    return Verdict.CONFLICT


def learned_ids(
    known: tuple[str | None, str | None], seen: tuple[str | None, str | None]
) -> tuple[str | None, str | None]:
    """A job's Cobalt (job id, encounter id) once `seen` in a reply or an event: an id the
    job already learned is kept (the first one Cobalt gave binds it), a missing one is taken."""
    return known[0] or seen[0], known[1] or seen[1]


# A signed body created longer ago than this when it reached us is held for a person: Cobalt
# retries a delivery once, a second later, so an old one is a replay (anyone holding a
# captured body can re-send it, and the signature still holds).
REPLAY_WINDOW = timedelta(days=1)


def held_reason(
    event_created_at: datetime | None,
    *,
    received_at: datetime | None,
    job_created_at: datetime | None,
) -> str | None:
    """Why an event must not be applied automatically (plain words), or None.

    Only the signed `created` decides, never an unsigned header. An event without one (older
    payloads) is taken as current: it is signed, but neither rule can then apply to it.
    `received_at`: when a body pushed to us arrived (None for an event found by asking
    Cobalt's log about a job, which is no replay). `job_created_at`: the job the event would
    settle, once matched; an event created before the job cannot be its outcome (it is an
    earlier job's, replayed).
    """
    if event_created_at is None:
        return None
    created = event_created_at.strftime("%Y-%m-%d %H:%M UTC")
    if received_at is not None and received_at - event_created_at > REPLAY_WINDOW:
        return (
            f"Held for support: the event was created {created}, more than a day before it "
            "reached us, so it may be a replay. Check the chart before applying it."
        )
    if job_created_at is not None and event_created_at < job_created_at:
        return (
            f"Held for support: the event was created {created}, before the job it would "
            "settle was submitted, so it is an earlier job's outcome, not this job's."
        )
    return None


@dataclass(frozen=True)
class Outcome:
    """What the job shows once settled: Cobalt's words, reasons and, for refills, meds."""

    status: JobStatus
    event: str
    detail: dict[str, Any]
    error: dict[str, str] | None


# Ids the outcome carries as strings (Cobalt sends some as numbers).
_ID_KEYS = ("refill_medication_name", "telephone_encounter_id", "appointment_id", "note_id")
# The keys the job's outcome has always carried, each in its documented shape. A value of
# another shape under one of these names is left out rather than passed through as it came:
# a front end relies on `reasons` being a list.
KNOWN_OUTCOME_KEYS = frozenset(
    {"event", "message", "failure_reason", "reasons", "available_medications", *_ID_KEYS}
)
# Cobalt's bookkeeping rather than what it says about the chart: the event envelope's fields
# (older or odd payloads repeat them inside `data`) and the webhook-events log's. The job
# resource already shows Cobalt's job id (`cobalt.job_id`); the rest only identify the event.
BOOKKEEPING_KEYS = frozenset(
    {
        "id",
        "object",
        "type",
        "created",
        "job_id",
        "access_token_reference_id",
        "event_id",
        "event_type",
        "created_at",
        "delivery_status",
        "delivery_attempts",
    }
)
# Where the outcome lists what it left out for size (a reserved key, like the known ones).
OMITTED_KEYS = "omitted_keys"
# Bounds on what is passed through, so a hostile (if signed) body cannot bloat every poll of
# the job: total compact-JSON size of the passed-through keys, and nesting depth of any kept
# value (the API's serializer refuses very deep values, and a poll would then fail).
MAX_PASSED_THROUGH_BYTES = 16 * 1024
MAX_DEPTH = 8
MAX_OMITTED_NAMES = 20


def outcome_from_event(event_type: str, data: dict[str, Any]) -> Outcome | None:
    """Build the job's outcome from an event, or None if the event settles nothing.

    The known keys keep their documented shape; every other key of `data`, bookkeeping
    aside, is passed through beside them, so whatever Cobalt tells the clinic (a partial's
    reason under a key this service has never seen) reaches the front end.
    """
    status = status_for_event(event_type)
    if status is None:
        return None
    detail: dict[str, Any] = {"event": event_type}
    message = _first_text(data, "message", "failure_reason", "description")
    if message is not None:
        detail["message"] = message
    if isinstance(data.get("failure_reason"), str):
        detail["failure_reason"] = data["failure_reason"]
    reasons = data.get("reasons")
    if isinstance(reasons, list):
        detail["reasons"] = [r for r in reasons if isinstance(r, dict) and _shallow(r)]
    meds = data.get("available_medications")
    if isinstance(meds, list):
        detail["available_medications"] = [m for m in meds if _shallow(m)]
    for key in _ID_KEYS:
        if isinstance(data.get(key), str | int):
            detail[key] = str(data[key])
    detail.update(_passed_through(data))
    error = None
    if status != JobStatus.COMPLETED:
        code = _error_code(status, detail)
        error = {"code": code, "message": message or _default_message(status)}
        # The field a code names is the registry's, whichever way the code arrived (webhook
        # or a synchronous refusal), so a front end can rely on it.
        registered = ERROR_CODES.get(code)
        if registered is not None and registered.field is not None:
            error["field"] = registered.field
    return Outcome(status=status, event=event_type, detail=detail, error=error)


def _passed_through(data: dict[str, Any]) -> dict[str, Any]:
    """The keys of `data` not known or bookkeeping, in Cobalt's order, within the bounds."""
    kept: dict[str, Any] = {}
    omitted: list[str] = []
    budget = MAX_PASSED_THROUGH_BYTES
    for key, value in data.items():
        if key in KNOWN_OUTCOME_KEYS or key in BOOKKEEPING_KEYS or key == OMITTED_KEYS:
            continue
        # Depth first: it bounds the recursion that measuring the size then needs.
        size = len(_compact({key: value})) if _shallow(value) else budget + 1
        if size > budget:
            omitted.append(key if len(key) <= 100 else key[:99] + "…")
            continue
        kept[key] = value
        budget -= size
    if omitted:
        kept[OMITTED_KEYS] = omitted[:MAX_OMITTED_NAMES]
    return kept


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _shallow(value: Any, depth: int = 1) -> bool:
    """Whether a JSON value nests no deeper than MAX_DEPTH."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, dict):
        return all(_shallow(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return all(_shallow(v, depth + 1) for v in value)
    return True


def _error_code(status: JobStatus, detail: dict[str, Any]) -> str:
    if status == JobStatus.PARTIAL:
        return REFILL_NOT_ADDED
    reasons = detail.get("reasons") or []
    if reasons and isinstance(reasons[0].get("code"), str):
        return str(reasons[0]["code"])[:64]
    if "available_medications" in detail:
        return MEDICATION_NOT_FOUND
    return COBALT_FAILED


def _default_message(status: JobStatus) -> str:
    if status == JobStatus.PARTIAL:
        return "Created, but the medication refill could not be added; add it in the EMR."
    return "Cobalt reported a failure."


def _first_text(data: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def retry_delay(attempt: int, *, base: float, cap: float, jitter: float) -> timedelta:
    """Capped exponential backoff with jitter; `jitter` in [0, 1) comes from the caller.

    Half the delay is fixed and half random ("equal jitter"), so retries from a burst of
    failures spread out without ever retrying immediately.
    """
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    return timedelta(seconds=ceiling / 2 + ceiling / 2 * jitter)


def is_overdue(status: str, created_at: datetime, expected: timedelta, now: datetime) -> bool:
    return status == JobStatus.PROCESSING and now - created_at > expected
