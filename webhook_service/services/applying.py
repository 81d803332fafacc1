"""Applying a stored delivery to its job: settle it, note a repeat or a conflict, hold it for
support, park it until a job matches, or flag a clinic (`login_required`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.orm import Session

from webhook_service.lifecycle import (
    CLINIC_EVENTS,
    JobStatus,
    Outcome,
    Verdict,
    held_reason,
    judge_outcome,
    kind_for_event,
    learned_ids,
    outcome_from_event,
)
from webhook_service.logs import log_failure
from webhook_service.models import Clinic, Job, WebhookDelivery
from webhook_service.services.deliveries import RECONCILE_MATCH, Delivery, DeliveryState
from webhook_service.services.jobs import (
    INSERT_EVENT,
    JOBS,
    add_event,
    settle,
    settled_values,
    wake_waiting_notes,
)
from webhook_service.services.matching import _load_locked, find_job

log = logging.getLogger(__name__)


def _apply_safely(
    session: Session, delivery: WebhookDelivery, payload: dict[str, Any], now: datetime
) -> None:
    """Apply a stored delivery in a savepoint: if that raises, only its apply is undone."""
    try:
        with session.begin_nested():
            apply_delivery(session, delivery, payload, now)
    except Exception as exc:
        log_failure(log, "webhook apply failed", exc, delivery_id=delivery.id)
        _mark_failed(delivery, exc)


def _mark_failed(delivery: Delivery, exc: Exception) -> None:
    delivery.state = DeliveryState.FAILED
    delivery.state_detail = f"applying raised {type(exc).__name__}"
    delivery.job_id = None


def apply_delivery(
    session: Session,
    delivery: Delivery,
    payload: dict[str, Any],
    now: datetime,
    *,
    received: bool = False,
) -> None:
    """Match a stored delivery to its job and apply the event (or park or hold it).

    Every path that applies a delivery comes here (webhook, parked sweep, reconcile, support
    replay), so each rule is decided once: what an event can settle (`lifecycle.settles`,
    through `find_job`), when a signed event is held (`lifecycle.held_reason`), what an
    outcome does to a job (`lifecycle.judge_outcome`).

    `received`: the delivery has just been received, in a session that holds no job yet.
    Then the job found is settled, or noted as a repeat or a conflict, with plain statements
    on its row (`_apply_to_row`): nothing encrypted is read, and no ORM object is loaded and
    flushed. Elsewhere (replay, parked deliveries, reconcile) the session may hold the job,
    which those statements would leave stale, so the ORM loads the row found.
    """
    event_type = delivery.event_type or ""
    if event_type in CLINIC_EVENTS:
        _apply_clinic_event(session, delivery, now)
        return
    data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    assert isinstance(data, dict)
    outcome = outcome_from_event(event_type, data) if event_type else None
    kind = kind_for_event(event_type)
    if outcome is None or kind is None:
        delivery.state = DeliveryState.UNKNOWN_TYPE
        delivery.state_detail = (
            "not an outcome event this service acts on"
            if payload
            else "the body is not a JSON object (or not UTF-8): nothing to apply"
        )
        return
    if _hold(delivery, None):
        return
    row = find_job(session, delivery, kind)
    if row is None:
        delivery.state = DeliveryState.PARKED
        delivery.state_detail = "no job matches yet"
        return
    if _hold(delivery, row.created_at):
        return
    facts = {"delivery_id": delivery.id, "event_type": event_type, "status": outcome.status}
    if received:
        _apply_to_row(session, row, delivery, outcome, now, facts)
        return
    job = _load_locked(session, row.id)
    delivery.job_id = job.id
    job.cobalt_job_id, job.cobalt_telephone_encounter_id = learned_ids(
        (job.cobalt_job_id, job.cobalt_telephone_encounter_id),
        (delivery.cobalt_job_id, delivery.telephone_encounter_id),
    )
    verdict = judge_outcome(JobStatus(job.status), outcome.status)
    event_type, detail = _judged(delivery, verdict, job.status, outcome, facts)
    if verdict == Verdict.APPLY:
        settle(session, job, outcome, now)
    else:
        if verdict == Verdict.CONFLICT:
            job.flagged = True
        job.updated_at = now
    add_event(session, job, event_type, now, **detail)


def _hold(delivery: Delivery, job_created_at: datetime | None) -> bool:
    """Hold the delivery for support (True) when its signed `created` says it must not be
    applied automatically (`lifecycle.held_reason`); the job, if any, is left untouched."""
    # Found by asking Cobalt for a job's events, it is no replay, whatever its age.
    pushed = delivery.signature_match != RECONCILE_MATCH
    reason = held_reason(
        delivery.event_created_at,
        received_at=delivery.received_at if pushed else None,
        job_created_at=job_created_at,
    )
    if reason is None:
        return False
    delivery.state, delivery.state_detail, delivery.job_id = DeliveryState.HELD, reason, None
    return True


def _judged(
    delivery: Delivery,
    verdict: Verdict,
    status: str,
    outcome: Outcome,
    facts: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    """Set the delivery's state for the verdict on a job in `status`; return the job's
    timeline line for it (its type and detail). The job itself is written by the caller."""
    if verdict == Verdict.APPLY:
        delivery.state, delivery.state_detail = DeliveryState.APPLIED, None
        return "webhook_applied", facts
    if verdict == Verdict.REPEAT:
        delivery.state, delivery.state_detail = DeliveryState.REPEAT, f"job already {status}"
        return "webhook_repeat", facts
    delivery.state = DeliveryState.CONFLICT
    delivery.state_detail = f"job is {status}; this delivery says {outcome.status}"
    return "outcome_conflict", {"kept": status, **facts}


def _apply_to_row(
    session: Session,
    row: Row[*tuple[Any, ...]],
    delivery: Delivery,
    outcome: Outcome,
    now: datetime,
    facts: dict[str, Any],
) -> None:
    """What the ORM branch of `apply_delivery` does to a job, as one UPDATE of its row and
    one INSERT of its timeline line: settle it (`webhook_applied`), or note a repeat or a
    conflict. The rules are the same functions; only the transport differs."""
    status = JobStatus(row.status)
    verdict = judge_outcome(status, outcome.status)
    cobalt_job_id, encounter_id = learned_ids(
        (row.cobalt_job_id, row.cobalt_telephone_encounter_id),
        (delivery.cobalt_job_id, delivery.telephone_encounter_id),
    )
    values: dict[str, Any] = {
        "cobalt_job_id": cobalt_job_id,
        "cobalt_telephone_encounter_id": encounter_id,
        "updated_at": now,
        "job_key": row.id,
    }
    event_type, detail = _judged(delivery, verdict, status, outcome, facts)
    if verdict == Verdict.APPLY:
        settled = settled_values(outcome, now, row.submission_state)
        values.update({_JOB_COLUMN[key]: value for key, value in settled.items()})
        values["inflight_key"] = None
    elif verdict == Verdict.CONFLICT:
        values["flagged"] = True
    connection = session.connection()
    connection.execute(_UPDATE_JOB, values)
    if verdict == Verdict.APPLY and row.inflight_key is not None:
        wake_waiting_notes(connection, row.clinic_id, row.appointment_hash, now)
    connection.execute(
        INSERT_EVENT, {"job_id": row.id, "at": now, "type": event_type, "detail": detail}
    )
    delivery.job_id = row.id


# The columns to set are the parameters given (by column name), as in `_SETTLE_DELIVERY`.
_UPDATE_JOB = update(JOBS).where(JOBS.c.id == bindparam("job_key"))
_JOB_COLUMN = {key: column.name for key, column in Job.__mapper__.columns.items()}


def _apply_clinic_event(session: Session, delivery: Delivery, now: datetime) -> None:
    """`login_required`: the clinic's EMR link expired. It is no job's outcome: the clinic
    is flagged for re-linking, unless it was re-linked after the event was created (a
    replayed or late event must not undo the re-link)."""
    delivery.job_id = None
    if _hold(delivery, None):
        return
    delivery.state = DeliveryState.CLINIC_EVENT
    reference_id = delivery.access_token_reference_id
    clinic = None
    if reference_id is not None:
        clinic = session.scalar(
            select(Clinic).where(Clinic.access_token_reference_id == reference_id)
        )
    if clinic is None:
        delivery.state_detail = "no linked clinic has this access token: nothing flagged"
        return
    created = delivery.event_created_at
    if created is not None and clinic.linked_at is not None and clinic.linked_at > created:
        delivery.state_detail = (
            f"clinic {clinic.name!r} was re-linked after this event: nothing to do"
        )
        return
    if not clinic.needs_relink:
        clinic.needs_relink = True
        clinic.updated_at = now
    delivery.state_detail = f"clinic {clinic.name!r} flagged: it must be re-linked in Cobalt"
