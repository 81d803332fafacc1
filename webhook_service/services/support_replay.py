"""Support staff's replay: apply a stored delivery again through today's code (or, as a dry
run, report what it would do and roll back). Audited, and written on the job's timeline.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.orm import Session

from webhook_service.errors import Conflict
from webhook_service.models import Job
from webhook_service.schemas import ReplayOut
from webhook_service.services.applying import _apply_safely
from webhook_service.services.deliveries import DeliveryState, _parse
from webhook_service.services.jobs import add_event
from webhook_service.services.matching import match_job
from webhook_service.services.support import Staff, audit_staff
from webhook_service.services.support_inbox import get_delivery

_SETTLED_ONCE = (DeliveryState.APPLIED, DeliveryState.REPEAT)


def can_apply_replay(state: str) -> bool:
    """Whether a delivery in this state may be replayed for real (a dry run always may):
    one already settled once is never applied again."""
    return state not in _SETTLED_ONCE


def replay_delivery(
    session: Session, staff: Staff, delivery_id: str, *, reason: str, dry_run: bool, now: datetime
) -> ReplayOut:
    """Apply a stored delivery again through today's code; a dry run reports and rolls back."""
    delivery = get_delivery(session, delivery_id, lock=True)
    if delivery.raw_body is None:
        raise Conflict("The delivery's body was purged after the retention period.")
    if not dry_run and not can_apply_replay(delivery.state):
        raise Conflict(f"The delivery is {delivery.state} already: there is nothing to replay.")
    payload = _parse(delivery.raw_body)
    state_before = delivery.state
    # The job it would settle, found as applying finds it (`match_job`: the same rules).
    job = _job_of(session, delivery.job_id) or match_job(session, delivery)
    status_before = job.status if job is not None else None
    savepoint = session.begin_nested()
    try:
        _apply_safely(session, delivery, payload, now)
        session.flush()
        job = _job_of(session, delivery.job_id) or job
        result = ReplayOut(
            delivery_id=delivery.id,
            dry_run=dry_run,
            state_before=state_before,
            state_after=delivery.state,
            state_detail=delivery.state_detail,
            job_id=job.id if job is not None else None,
            job_status_before=status_before,
            job_status_after=job.status if job is not None else None,
        )
    except BaseException:
        savepoint.rollback()
        raise
    if dry_run:
        savepoint.rollback()  # expires what the replay touched: later reads see the database
    else:
        savepoint.commit()
        if job is not None:
            add_event(
                session,
                job,
                "webhook_replayed",
                now,
                delivery_id=delivery.id,
                state=result.state_after,
                by=staff.name,
            )
    audit_staff(
        session,
        staff,
        "delivery.replay",
        now,
        job_id=result.job_id,
        delivery_id=result.delivery_id,
        reason=reason,
        dry_run=dry_run,
        state_before=state_before,
        state_after=result.state_after,
    )
    return result


def _job_of(session: Session, job_id: uuid.UUID | None) -> Job | None:
    return session.get(Job, job_id) if job_id is not None else None
