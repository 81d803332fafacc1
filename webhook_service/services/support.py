"""Support staff's reads: list, search and export jobs, read a timeline, a delivery, the inbox.

Every read that returns PHI, and every export, is written to the audit log; search terms are
matched through their keyed hashes and never written anywhere.
"""

from __future__ import annotations

import functools
import uuid
from collections import namedtuple
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Integer,
    Select,
    and_,
    bindparam,
    not_,
    or_,
    select,
    tuple_,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from webhook_service.errors import NotFound
from webhook_service.lifecycle import JobStatus
from webhook_service.models import ApiClient, Clinic, Job, JobEvent, WebhookDelivery
from webhook_service.phi import search_hash
from webhook_service.schemas import (
    DeliveryBodyOut,
    DeliveryOut,
    InboxQuery,
    JobFilters,
    JobPageQuery,
    JobSearchRequest,
    SupportJobOut,
    TimelineEntry,
    TimelineOut,
)
from webhook_service.services.clients import audit
from webhook_service.services.deliveries import DeliveryState
from webhook_service.services.jobs import RESOURCE_COLUMNS, JobColumns, get_job, job_fields

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
# A job with `attention`: processing past its deadline with no outcome. Spelt as the partial
# index ix_jobs_attention's predicate, so that the filter, the inbox and counts use it.
HAS_ATTENTION = Job.attention_code.is_not(None)
CSV_COLUMNS = (
    "id",
    "kind",
    "status",
    "created_at",
    "finished_at",
    "error_code",
    "cobalt_job_id",
    "telephone_encounter_id",
    "flagged",
)
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

JobKey = tuple[datetime, uuid.UUID]
DeliveryKey = tuple[datetime, int]


@dataclass(frozen=True)
class Staff:
    """Who acts: a support API client, or a person at a terminal (`via="cli"`)."""

    name: str
    client: ApiClient | None = None
    via: str = "api"

    @classmethod
    def from_client(cls, client: ApiClient) -> Staff:
        return cls(name=client.name, client=client)


class JobSummary(JobColumns, Protocol):
    """A job as support's lists and job pages read it: a row of `_SUMMARY_COLUMNS`.

    The request body is never read, and nothing is loaded into the session: a page of 50
    jobs is 50 plain rows.
    """

    clinic_id: int
    retry_of: uuid.UUID | None


@dataclass(frozen=True)
class JobRow:
    job: JobSummary
    flagged: bool
    retried_as: uuid.UUID | None


@dataclass(frozen=True)
class JobPage:
    rows: list[JobRow]
    next_key: JobKey | None


def audit_staff(session: Session, staff: Staff, action: str, now: datetime, **detail: Any) -> None:
    """Audit one staff read or action."""
    if staff.via != "api":
        detail["via"] = staff.via
    audit(session, client=staff.client, actor=staff.name, action=action, now=now, **detail)


# --- Jobs -------------------------------------------------------------------------------------


def list_jobs(
    session: Session,
    staff: Staff,
    query: JobPageQuery,
    *,
    now: datetime,
    expected: dict[str, timedelta],
) -> JobPage:
    """One page of jobs, newest first; a search (MRN, appointment) when the query has one."""
    searched: dict[str, str | None] = {}
    if isinstance(query, JobSearchRequest):
        searched = {"patient_mrn": query.patient_mrn, "appointment_id": query.appointment_id}
    page = find_jobs(
        session,
        query,
        now=now,
        expected=expected,
        limit=query.limit,
        after=query.cursor,
        patient_mrn=searched.get("patient_mrn"),
        appointment_id=searched.get("appointment_id"),
    )
    detail: dict[str, Any] = {"filters": filters_detail(query)}
    if searched:
        # Which fields were searched, never their values (nor their hashes).
        detail["searched_by"] = sorted(name for name, value in searched.items() if value)
    audit_staff(
        session,
        staff,
        "jobs.search" if searched else "jobs.list",
        now,
        count=len(page.rows),
        job_ids=[str(row.job.id) for row in page.rows],
        **detail,
    )
    return page


def find_jobs(
    session: Session,
    filters: JobFilters,
    *,
    now: datetime,
    expected: dict[str, timedelta],
    limit: int,
    after: JobKey | None = None,
    patient_mrn: str | None = None,
    appointment_id: str | None = None,
    with_phi: bool = True,
) -> JobPage:
    """Jobs matching `filters`, newest first, starting after the key `after` (keyset paging).

    Paging by key rather than offset is what keeps pages stable while jobs are created: a new
    job sorts before the first page, never into a page already read. Without `with_phi` the
    encrypted columns are neither read nor decrypted (the CSV export needs none of them).
    """
    values: dict[str, Any] = {
        name: value
        for name, value in (
            ("status", filters.status),
            ("kind", filters.kind),
            ("clinic", filters.clinic),
            ("created_from", filters.created_from),
            ("created_to", filters.created_to),
        )
        if value is not None
    }
    if patient_mrn is not None:
        values["patient_mrn_hash"] = search_hash(patient_mrn)
    if appointment_id is not None:
        values["appointment_hash"] = search_hash(appointment_id)
    if after is not None:
        values["after_created_at"], values["after_id"] = after
    kinds = tuple(expected)
    query = _job_query(
        frozenset(values), filters.overdue, filters.flagged, filters.attention, kinds, with_phi
    )
    if filters.overdue is not None:
        values.update(overdue_values(now, expected))
    rows = _fetch(session, query, {**values, "limit": limit + 1})
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1].job if rows and more else None
    return JobPage(rows, (last.created_at, last.id) if last is not None else None)


@functools.cache
def _job_query(
    bound: frozenset[str],
    overdue: bool | None,
    flagged: bool | None,
    attention: bool | None,
    kinds: tuple[str, ...],
    with_phi: bool,
) -> Select[Any]:
    """The list statement for the filters named in `bound`, built once and kept.

    Built per request, the statement's cache key was generated anew each time, over every
    column and the flagged subqueries: a sixth of a search's CPU. A kept statement keeps its
    key; its values are bound by name (`bound`, `late_<kind>` and `oldest_young` with
    `overdue`, and `limit`). Filters combine into a few dozen statements at most.
    """
    conditions: list[ColumnElement[bool]] = []
    # One status (or else one kind) is written as a range over its (column, created_at, id)
    # index, and the page is ordered by that column too, so that it is read straight from
    # that index. Written as `status = s`, PostgreSQL drops the constant from the order, may
    # prefer the created index, and then walks it past every job of the other statuses or
    # kinds: thousands, when a batch's new notes sit on top of the telephone encounters.
    lead = next((name for name in ("status", "kind") if name in bound), None)
    key: list[InstrumentedAttribute[Any]] = [Job.created_at, Job.id]
    after: list[ColumnElement[Any]] = [
        bindparam("after_created_at", type_=Job.created_at.type),
        bindparam("after_id", type_=Job.id.type),
    ]
    if lead is not None:
        column = Job.status if lead == "status" else Job.kind
        value = bindparam(lead, type_=column.type)
        conditions.append(column >= value)
        if "after_id" not in bound:
            conditions.append(column <= value)
        key.insert(0, column)
        after.insert(0, value)
    if "after_id" in bound:
        conditions.append(tuple_(*key) < tuple_(*after))
    if "kind" in bound and lead != "kind":
        conditions.append(Job.kind == bindparam("kind"))
    if "clinic" in bound:
        conditions.append(Job.clinic_id == bindparam("clinic"))
    if "created_from" in bound:
        conditions.append(Job.created_at >= bindparam("created_from"))
    if "created_to" in bound:
        conditions.append(Job.created_at < bindparam("created_to"))
    if overdue is not None:
        late = _overdue(kinds)
        conditions.append(late if overdue else not_(late))
    if flagged is not None:
        needs_person = attention_condition()
        conditions.append(needs_person if flagged else not_(needs_person))
    if attention is not None:
        conditions.append(HAS_ATTENTION if attention else Job.attention_code.is_(None))
    if "patient_mrn_hash" in bound:
        conditions.append(Job.patient_mrn_hash == bindparam("patient_mrn_hash"))
    if "appointment_hash" in bound:
        conditions.append(Job.appointment_hash == bindparam("appointment_hash"))
    rows = _JOB_ROWS if with_phi else _JOB_ROWS_WITHOUT_PHI
    query = rows.where(*conditions).order_by(*(column.desc() for column in key))
    return query.limit(bindparam("limit", type_=Integer))


def job_row(session: Session, job_id: uuid.UUID) -> JobRow:
    """One job with the facts support sees beside it (flagged, retried as)."""
    rows = _fetch(session, _ONE_JOB_ROW, {"job_id": job_id})
    if not rows:
        raise NotFound(f"No job with id {str(job_id)!r}.")
    return rows[0]


def support_job_view(row: JobRow) -> SupportJobOut:
    return SupportJobOut.model_validate(support_job_fields(row))


def support_job_fields(row: JobRow) -> dict[str, Any]:
    """A `SupportJobOut`'s fields (a page validates all of its jobs' at once)."""
    job = row.job
    return {
        **job_fields(job),
        "clinic_id": job.clinic_id,
        "flagged": row.flagged,
        "retry_of": job.retry_of,
    }


def filters_detail(filters: JobFilters) -> dict[str, Any]:
    """The filters of a query, for the audit log: never PHI, never paging."""
    return filters.model_dump(mode="json", exclude_none=True, include=set(JobFilters.model_fields))


def csv_row(row: JobRow) -> list[str]:
    """One CSV line of a job: ids, statuses and times only (no PHI), formula-safe."""
    job = row.job
    values = (
        job.id,
        job.kind,
        job.status,
        job.created_at,
        job.finished_at,
        job.error_code,
        job.cobalt_job_id,
        job.cobalt_telephone_encounter_id,
        row.flagged,
    )
    return [csv_cell(value) for value in values]


def csv_cell(value: object) -> str:
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, datetime):
        text = value.isoformat().replace("+00:00", "Z")
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _fetch(session: Session, query: Select[Any], values: dict[str, Any]) -> list[JobRow]:
    result = session.connection().execute(query, values)
    make = _row_type(tuple(result.keys()))._make
    rows = []
    for row in result:
        job = make(row)
        rows.append(JobRow(cast(JobSummary, job), bool(job.flagged), job.retried_as))
    return rows


@functools.cache
def _row_type(names: tuple[str, ...]) -> Any:
    """Rows as named tuples: a page reads some 1,200 attributes from its rows, and a named
    tuple's cost a tenth of a SQLAlchemy `Row`'s (0.05 against 0.8 µs)."""
    return namedtuple("JobSummaryRow", names)


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


# Every column of `JobSummary`: the job resource's plain columns and support's two; the
# encrypted ones labelled with their attributes' names (stored under other column names),
# decrypted by their column types as rows are read.
_SUMMARY_COLUMNS = (*RESOURCE_COLUMNS, Job.clinic_id, Job.retry_of)
_ENCRYPTED_COLUMNS = (Job.outcome.label("outcome"), Job.error_message.label("error_message"))


def _build_job_rows(*columns: Any) -> Select[Any]:
    return select(*columns, attention_condition().label("flagged"))


# Built once: a job with the facts support sees beside it (and, for the CSV export, without
# its PHI). Statements are immutable, and shared objects let SQLAlchemy's compiled cache
# serve every list, search and job page. They select columns, so rows are plain rows.
_JOB_ROWS = _build_job_rows(*_SUMMARY_COLUMNS, *_ENCRYPTED_COLUMNS)
_JOB_ROWS_WITHOUT_PHI = _build_job_rows(*_SUMMARY_COLUMNS)
_ONE_JOB_ROW = _JOB_ROWS.where(Job.id == bindparam("job_id"))
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
