"""Support staff's reads of jobs: list, search and export them (a timeline, a delivery and the
inbox are `support_inbox`'s).

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
    ColumnElement,
    Integer,
    Select,
    bindparam,
    not_,
    select,
    tuple_,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from webhook_service.errors import NotFound
from webhook_service.models import ApiClient, Job
from webhook_service.phi import search_hash
from webhook_service.schemas import (
    JobFilters,
    JobPageQuery,
    JobSearchRequest,
    SupportJobOut,
)
from webhook_service.services.attention import (
    HAS_ATTENTION,
    _overdue,
    attention_condition,
    overdue_values,
)
from webhook_service.services.clients import audit
from webhook_service.services.job_views import RESOURCE_COLUMNS, JobColumns, job_fields

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
