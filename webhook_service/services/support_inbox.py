"""Support staff's reads of a job's timeline, of deliveries and of the inbox (deliveries and
jobs that need a person). Reads that return PHI are written to the audit log.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, Integer, bindparam, or_, select, tuple_
from sqlalchemy.orm import Session

from webhook_service.errors import NotFound
from webhook_service.models import Job, JobEvent, WebhookDelivery
from webhook_service.schemas import (
    DeliveryBodyOut,
    DeliveryOut,
    InboxQuery,
    TimelineEntry,
    TimelineOut,
)
from webhook_service.services.attention import HAS_ATTENTION
from webhook_service.services.deliveries import DeliveryState
from webhook_service.services.jobs import get_job
from webhook_service.services.support import _JOB_ROWS, JobRow, Staff, _fetch, audit_staff

# Deliveries that need a person: nothing was applied, or what arrived contradicts the job.
INBOX_STATES = (
    DeliveryState.PARKED,
    DeliveryState.FAILED,
    DeliveryState.UNKNOWN_TYPE,
    DeliveryState.CONFLICT,
    DeliveryState.HELD,
)
# Jobs with attention listed on the inbox's first page (all of them: the `attention` filter).
INBOX_ATTENTION_LIMIT = 50


DeliveryKey = tuple[datetime, int]


_ATTENTION_ROWS = (
    _JOB_ROWS.where(HAS_ATTENTION)
    .order_by(Job.attention_since, Job.id)
    .limit(bindparam("limit", type_=Integer))
)


# --- Timeline, deliveries, inbox ---------------------------------------------------------------


def job_timeline(session: Session, staff: Staff, job_id: str, now: datetime) -> TimelineOut:
    """Everything that happened to a job, in order, and every delivery that concerns it.

    Deliveries that failed to apply are not linked to a job, so those carrying the job's
    Cobalt ids are listed too.
    """
    job = get_job(session, job_id)
    events = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.at, JobEvent.id)
    )
    mine = [WebhookDelivery.job_id == job.id]
    if job.cobalt_job_id:
        mine.append(WebhookDelivery.cobalt_job_id == job.cobalt_job_id)
    if job.cobalt_telephone_encounter_id:
        mine.append(WebhookDelivery.telephone_encounter_id == job.cobalt_telephone_encounter_id)
    deliveries = session.scalars(
        select(WebhookDelivery)
        .where(or_(*mine))
        .order_by(WebhookDelivery.received_at, WebhookDelivery.id)
    )
    audit_staff(session, staff, "job.events", now, job_id=job.id)
    return TimelineOut(
        job_id=job.id,
        events=[TimelineEntry(at=e.at, type=e.type, detail=e.detail) for e in events],
        deliveries=[delivery_view(d) for d in deliveries],
    )


def get_delivery(session: Session, delivery_id: str, *, lock: bool = False) -> WebhookDelivery:
    """The stored delivery with this id, or NotFound (also for ids that are not ids)."""
    if not (delivery_id.isascii() and delivery_id.isdigit()) or not 0 < int(delivery_id) < 2**63:
        raise NotFound(f"No delivery with id {delivery_id!r}.")
    query = select(WebhookDelivery).where(WebhookDelivery.id == int(delivery_id))
    delivery = session.scalar(query.with_for_update() if lock else query)
    if delivery is None:
        raise NotFound(f"No delivery with id {delivery_id!r}.")
    return delivery


def read_delivery(
    session: Session, staff: Staff, delivery_id: str, now: datetime
) -> DeliveryBodyOut:
    """A delivery with its raw body (PHI: the read is audited)."""
    delivery = get_delivery(session, delivery_id)
    audit_staff(
        session, staff, "delivery.read", now, job_id=delivery.job_id, delivery_id=delivery.id
    )
    body = delivery.raw_body
    return DeliveryBodyOut(
        **dict(delivery_view(delivery)),
        headers=delivery.headers,
        body=body.decode("utf-8", "replace") if body is not None else None,
    )


def list_inbox(
    session: Session, query: InboxQuery
) -> tuple[list[WebhookDelivery], DeliveryKey | None]:
    """Deliveries that need a person, newest first, keyset-paginated like the job list."""
    states = [query.state] if query.state else list(INBOX_STATES)
    conditions: list[ColumnElement[bool]] = [WebhookDelivery.state.in_(states)]
    if query.cursor is not None:
        conditions.append(
            tuple_(WebhookDelivery.received_at, WebhookDelivery.id) < tuple_(*query.cursor)
        )
    found = list(
        session.scalars(
            select(WebhookDelivery)
            .where(*conditions)
            .order_by(WebhookDelivery.received_at.desc(), WebhookDelivery.id.desc())
            .limit(query.limit + 1)
        )
    )
    page = found[: query.limit]
    last = page[-1] if page and len(found) > query.limit else None
    return page, (last.received_at, last.id) if last is not None else None


def attention_jobs(session: Session, limit: int = INBOX_ATTENTION_LIMIT) -> list[JobRow]:
    """Jobs with `attention` (past the deadline, fate unknown), longest waiting first."""
    return _fetch(session, _ATTENTION_ROWS, {"limit": limit})


def lists_attention_jobs(query: InboxQuery) -> bool:
    """Whether an inbox page lists the jobs with attention: its first page only, and not when
    filtered to one delivery state (they are not deliveries, and are not paged)."""
    return query.cursor is None and query.state is None


def delivery_view(delivery: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=delivery.id,
        received_at=delivery.received_at,
        event_type=delivery.event_type,
        state=delivery.state,
        state_detail=delivery.state_detail,
        signature_match=delivery.signature_match,
        attempt=delivery.attempt,
        job_id=delivery.job_id,
        cobalt_job_id=delivery.cobalt_job_id,
        telephone_encounter_id=delivery.telephone_encounter_id,
    )
