"""Parked deliveries (no job matched yet): applied once a job learns the Cobalt ids they
carry, right away (`apply_parked_for`) or by the worker's sweep (`match_parked`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, exists, or_, select
from sqlalchemy.orm import Session

from webhook_service.lifecycle import JobKind
from webhook_service.models import Job, WebhookDelivery
from webhook_service.services.applying import _apply_safely
from webhook_service.services.deliveries import DeliveryState, _parse


def apply_parked_for(session: Session, job: Job, now: datetime) -> int:
    """Apply, in arrival order, the parked deliveries that match a job's new Cobalt ids."""
    conditions = []
    if job.cobalt_job_id:
        conditions.append(WebhookDelivery.cobalt_job_id == job.cobalt_job_id)
    if job.cobalt_telephone_encounter_id:
        conditions.append(
            WebhookDelivery.telephone_encounter_id == job.cobalt_telephone_encounter_id
        )
    if not conditions:
        return 0
    parked = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.state == DeliveryState.PARKED, or_(*conditions))
        .order_by(WebhookDelivery.received_at, WebhookDelivery.id)
        .with_for_update(skip_locked=True)
    ).all()
    for delivery in parked:
        _apply_safely(session, delivery, _parse(delivery.raw_body or b""), now)
    return len(parked)


# `lifecycle.kind_for_event` of a stored delivery's type, in SQL (a test checks they agree).
EVENT_KIND = case(
    *(
        (WebhookDelivery.event_type.startswith(f"{kind}.", autoescape=True), str(kind))
        for kind in JobKind
    ),
    else_=None,
)


def match_parked(session: Session, now: datetime, limit: int = 100) -> int:
    """Sweep: apply parked deliveries whose job has since learned its ids.

    Closes the race where a webhook is parked in the instant a worker records the ids.
    """
    # Driven from the (few) parked deliveries, each checked against the jobs' unique-ish id
    # indexes: `IN (SELECT … FROM jobs)` read every job's ids (375 ms at 1M jobs, with
    # nothing parked).
    # Only jobs of the event's kind (`find_job` would pass over the others): a parked event
    # sharing an id with a job of another kind would otherwise be taken up, and parked
    # again, on every sweep, ahead of the rest.
    has_job = exists().where(
        Job.cobalt_job_id.is_not(None),
        Job.cobalt_job_id == WebhookDelivery.cobalt_job_id,
        Job.kind == EVENT_KIND,
    )
    has_encounter = exists().where(
        Job.cobalt_telephone_encounter_id.is_not(None),
        Job.cobalt_telephone_encounter_id == WebhookDelivery.telephone_encounter_id,
        Job.kind == EVENT_KIND,
    )
    parked = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.state == DeliveryState.PARKED, or_(has_job, has_encounter))
        .order_by(WebhookDelivery.received_at, WebhookDelivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for delivery in parked:
        _apply_safely(session, delivery, _parse(delivery.raw_body or b""), now)
    return len(parked)
