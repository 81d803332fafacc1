"""The deadline: past it, a job with no outcome says what is known, and no more.

A job whose request may be at Cobalt stays `processing` with `attention` (and is looked up
less often: `reconcile.py`); one whose request certainly never reached Cobalt fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from webhook_service.lifecycle import (
    APPOINTMENT_BUSY,
    COBALT_UNAVAILABLE,
    NO_OUTCOME,
    JobStatus,
    Outcome,
    Submission,
)
from webhook_service.models import Job
from webhook_service.services.jobs import add_event, settle
from webhook_service.services.reconcile import LOOKUP_STATES

# Codes of a job failed at its deadline because its request certainly never reached Cobalt.
NOT_SENT_CODES = {
    Submission.PENDING: COBALT_UNAVAILABLE,
    Submission.RETRYING: COBALT_UNAVAILABLE,
    # Waiting behind an earlier note for the same appointment whose outcome is not known.
    Submission.WAITING: APPOINTMENT_BUSY,
}


@dataclass(frozen=True)
class PastDeadline:
    """What `mark_past_deadline` did: jobs given `attention`, jobs failed as never sent."""

    attention: int
    failed: int


def mark_past_deadline(session: Session, *, now: datetime, deadline: timedelta) -> PastDeadline:
    """Processing jobs with no outcome past the deadline: say what is known, and no more.

    A job whose request may be at Cobalt (accepted, unknown, or being sent: a `sending` job
    may be mid-call) stays `processing` with `attention: no_outcome` and is looked up less
    often; a note keeps its appointment slot, so an outcome for the appointment still has
    exactly one note to match. A job whose request certainly never reached Cobalt fails.
    """
    jobs = session.scalars(
        select(Job)
        .where(
            Job.status == JobStatus.PROCESSING,
            Job.attention_code.is_(None),
            Job.created_at < now - deadline,
        )
        .limit(100)
        .with_for_update(skip_locked=True)
    ).all()
    attention = 0
    minutes = int(deadline.total_seconds() // 60)
    for job in jobs:
        state = job.submission_state
        add_event(session, job, "deadline_passed", now, submission=state)
        if state in LOOKUP_STATES:
            job.attention_code = NO_OUTCOME
            job.attention_since = now
            job.updated_at = now
            attention += 1
        else:
            settle(session, job, _not_sent(state, minutes), now)
    return PastDeadline(attention=attention, failed=len(jobs) - attention)


def _not_sent(state: str, minutes: int) -> Outcome:
    """The failure of a job whose request never reached Cobalt by the deadline."""
    code = NOT_SENT_CODES.get(Submission(state), COBALT_UNAVAILABLE)
    if code == APPOINTMENT_BUSY:
        message = (
            f"Not sent to Cobalt within {minutes} minutes: an earlier note for this "
            "appointment has no outcome yet, and Cobalt cannot tell two notes for one "
            "appointment apart. Nothing of this note was written to the chart; check the chart "
            "for the earlier note before submitting again."
        )
    else:
        message = (
            f"Cobalt could not be reached within {minutes} minutes: the request never reached "
            "it, so nothing was written to the chart. It is safe to submit again."
        )
    return Outcome(
        status=JobStatus.FAILED,
        event="deadline_passed",
        detail={"event": "deadline_passed", "message": message},
        error={"code": code, "message": message},
    )
