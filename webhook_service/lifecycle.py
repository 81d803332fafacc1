"""The job state machine and Cobalt's event → status table: pure functions, no I/O.

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

# Error codes the service itself sets (as opposed to Cobalt's outcome).
NO_OUTCOME = "no_outcome"
LOGIN_REQUIRED = "login_required"

# What a processing job's `attention` says to a front end's user, by code.
ATTENTION_MESSAGES = {
    NO_OUTCOME: (
        "No outcome from Cobalt by the deadline. The note or encounter may or may not be in "
        "the EMR: check the chart before resubmitting. The job is still being looked up."
    ),
}


def attention_message(code: str) -> str:
    return ATTENTION_MESSAGES.get(code, "This job needs a person's attention.")


def status_for_event(event_type: str) -> JobStatus | None:
    """Map a Cobalt event type to the job status it settles, or None if it settles nothing."""
    if event_type in {"note.created", "note.uploaded", "telephone_encounter.created"}:
        return JobStatus.COMPLETED
    if event_type == "telephone_encounter.created_partial":
        return JobStatus.PARTIAL
    if event_type == LOGIN_REQUIRED or event_type.endswith((".failed", "_failed")):
        return JobStatus.FAILED
    return None


def kind_for_event(event_type: str) -> JobKind | None:
    """The job kind an event type is about, when it says."""
    if event_type.startswith("note."):
        return JobKind.NOTE
    if event_type.startswith("telephone_encounter."):
        return JobKind.TELEPHONE_ENCOUNTER
    return None


class Verdict(StrEnum):
    APPLY = "apply"  # the job takes this outcome
    REPEAT = "repeat"  # the job already has this outcome: nothing changes
    CONFLICT = "conflict"  # a different outcome than the one applied: record and flag


def judge_outcome(
    current: JobStatus, current_error_code: str | None, incoming: JobStatus
) -> Verdict:
    """Decide what an outcome from Cobalt does to a job in status `current`.

    Terminal is terminal, with one exception: a job the service failed for lack of news
    (`no_outcome`) is settled by the real outcome when it finally turns up.
    """
    if current == JobStatus.PROCESSING:
        return Verdict.APPLY
    if current == JobStatus.FAILED and current_error_code == NO_OUTCOME:
        return Verdict.APPLY
    if current == incoming:
        return Verdict.REPEAT
    return Verdict.CONFLICT


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
        error = {"code": _error_code(event_type, status, detail), "message": message or ""}
        if not error["message"]:
            error["message"] = _default_message(status)
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


def _error_code(event_type: str, status: JobStatus, detail: dict[str, Any]) -> str:
    if event_type == LOGIN_REQUIRED:
        return LOGIN_REQUIRED
    if status == JobStatus.PARTIAL:
        return "refill_not_added"
    reasons = detail.get("reasons") or []
    if reasons and isinstance(reasons[0].get("code"), str):
        return str(reasons[0]["code"])[:64]
    if "available_medications" in detail:
        return "medication_not_found"
    return "cobalt_failed"


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
