"""Plain words for the states and timeline entries the console shows, for support staff.

The names stay on the page (they are what the API, the logs and the README use); these
short explanations go beside them. A test checks every job status, submission state,
delivery state and attention code has one, so a new state cannot reach the console
unexplained.
"""

from __future__ import annotations

from typing import Final

JOB_STATUSES: Final = {
    "processing": "waiting for Cobalt to report what happened in the chart",
    "completed": "Cobalt reported it written to the chart",
    "partial": "Cobalt wrote it, but not all of it: the error says what is missing",
    "failed": "Cobalt reported a failure, or never received the request",
}

SUBMISSIONS: Final = {
    "pending": "waiting to be sent to Cobalt",
    "waiting": "waiting for an earlier note for the same appointment to finish",
    "sending": "being sent to Cobalt now",
    "accepted": "Cobalt accepted the request",
    "retrying": "Cobalt did not take it (a passing error): it will be sent again",
    "unknown": "it may or may not have reached Cobalt (no answer came back): "
    "it is looked up in Cobalt's log, never resent blindly",
    "rejected": "Cobalt refused it",
    "gave_up": "it never reached Cobalt, after several tries",
}

DELIVERY_STATES: Final = {
    "received": "stored, not applied yet",
    "applied": "its job took this outcome",
    "parked": "waits for a job with the same Cobalt ids; if none comes, a person must find its job",
    "repeat": "its job already had this outcome: nothing changed",
    "conflict": "a different outcome from the one its job already has: kept, not applied",
    "unknown_type": "kept for the record; it changes no job",
    "failed": "applying it hit an error, so nothing of it was applied: replay it",
    "held": "signed, but older than a day or than its job: kept for a person, never applied",
    "clinic_event": "about the clinic (its EMR login), not a job: the clinic was flagged",
}

# What a person does about a job with `attention`, by its code.
ATTENTION: Final = {
    "no_outcome": "Open the job, look for it in the EMR's chart and record what you see with "
    "the form on its page, or press Reconcile now to ask Cobalt again",
}

# Only the timeline entries whose name alone says little to someone outside engineering.
TIMELINE: Final = {
    "submission_unknown": "no answer from Cobalt: the request may or may not have reached it",
    "submission_gave_up": "Cobalt could not be reached after several tries",
    "submission_waiting": "waits for an earlier note for the same appointment",
    "claim_expired": "a worker stopped mid-way; another takes over",
    "reconcile_requested": "someone pressed Reconcile now",
    "reconcile_lookup": "looked for this job's outcome in Cobalt's log",
    "reconciled": "the outcome found in Cobalt's log was applied",
    "deadline_passed": "no outcome from Cobalt by the deadline",
    "outcome_conflict": "Cobalt reported a different outcome than the job shows",
    "webhook_repeat": "the same outcome again: nothing changed",
    "phi_purged": "the request and outcome details were erased after the retention period",
}
