"""Which jobs need a person, as SQL conditions: overdue (processing past the kind's expected
time), with `attention` (past the deadline, fate unknown), flagged (any reason at all).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import BindParameter, ColumnElement, and_, bindparam, or_, select

from webhook_service.lifecycle import JobStatus
from webhook_service.models import Clinic, Job, WebhookDelivery
from webhook_service.services.deliveries import DeliveryState

# A job with `attention`: processing past its deadline with no outcome. Spelt as the partial
# index ix_jobs_attention's predicate, so that the filter, the inbox and counts use it.
HAS_ATTENTION = Job.attention_code.is_not(None)


def overdue_condition(now: datetime, expected: dict[str, timedelta]) -> ColumnElement[bool]:
    """Processing past the kind's expected time (the worker's reconcile threshold)."""
    return _overdue(tuple(expected), overdue_values(now, expected))


def overdue_values(now: datetime, expected: dict[str, timedelta]) -> dict[str, datetime]:
    """The values `_overdue(tuple(expected))` binds."""
    values = {f"late_{kind}": now - wait for kind, wait in expected.items()}
    values["oldest_young"] = now - min(expected.values())
    return values


def _overdue(
    kinds: tuple[str, ...], values: dict[str, datetime] | None = None
) -> ColumnElement[bool]:
    """Processing, and created before `late_<kind>` for its kind: bound to `values`, or by
    name when the statement runs.

    The bound `oldest_young` (the shortest wait's) repeats what the kinds' conditions imply,
    so that the (status, created_at, id) index starts at the first job old enough to be
    late instead of walking every open job from the newest.
    """

    def bound(name: str) -> BindParameter[datetime]:
        return bindparam(name) if values is None else bindparam(name, values[name])

    late = [and_(Job.kind == kind, Job.created_at < bound(f"late_{kind}")) for kind in kinds]
    return and_(
        Job.status == JobStatus.PROCESSING, Job.created_at < bound("oldest_young"), or_(*late)
    )


def attention_condition() -> ColumnElement[bool]:
    """Flagged: a conflicting outcome was recorded; or the job has `attention`; or the clinic
    must be re-linked and the job is open or failed; or a delivery carrying its Cobalt ids is
    parked or failed to apply.

    Every branch is NULL-free, so `not_()` of it is exactly "all the other jobs".
    """
    relink = select(Clinic.id).where(Clinic.needs_relink.is_(True))
    stuck = WebhookDelivery.state.in_([DeliveryState.PARKED, DeliveryState.FAILED])
    stuck_job_ids = select(WebhookDelivery.cobalt_job_id).where(
        stuck, WebhookDelivery.cobalt_job_id.is_not(None)
    )
    stuck_encounter_ids = select(WebhookDelivery.telephone_encounter_id).where(
        stuck, WebhookDelivery.telephone_encounter_id.is_not(None)
    )
    return or_(
        Job.flagged.is_(True),
        # Past the deadline with no outcome: someone should check the chart.
        HAS_ATTENTION,
        and_(
            Job.status.in_([JobStatus.PROCESSING, JobStatus.FAILED]),
            Job.clinic_id.in_(relink),
        ),
        and_(Job.cobalt_job_id.is_not(None), Job.cobalt_job_id.in_(stuck_job_ids)),
        and_(
            Job.cobalt_telephone_encounter_id.is_not(None),
            Job.cobalt_telephone_encounter_id.in_(stuck_encounter_ids),
        ),
    )
