"""The support staff's API: find jobs, read their story, and act on them (role `support`).

Views only parse, call a service and shape the answer; services audit every read of PHI and
every action.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import TypeVar

from flask import Blueprint, Response, request
from pydantic import BaseModel, ValidationError

from webhook_service import services
from webhook_service.cobalt import CobaltClient, CobaltError
from webhook_service.db import SessionFactory, transaction
from webhook_service.errors import FieldError, UpstreamFailed, ValidationFailed
from webhook_service.http.api import _json_body
from webhook_service.http.auth import current_client, require
from webhook_service.http.context import request_transaction, sessions, settings, utcnow
from webhook_service.lifecycle import JobKind
from webhook_service.schemas import (
    ChartOutcomeRequest,
    InboxOut,
    InboxQuery,
    JobFilters,
    JobListOut,
    JobPageQuery,
    JobSearchRequest,
    ReconcileLookupOut,
    ReconcileOut,
    ReplayRequest,
    RetryRequest,
    StaffAction,
    encode_cursor,
    field_errors,
)

log = logging.getLogger(__name__)
bp = Blueprint("support", __name__)

Model = TypeVar("Model", bound=BaseModel)
PHI_PARAMETERS = ("patient_mrn", "appointment_id")
EXPORT_BATCH = 500


@bp.get("/v1/jobs")
@require("support")
def list_jobs() -> Response:
    """List jobs newest first, filtered, one keyset page at a time."""
    return _job_page(_query(JobPageQuery))


@bp.post("/v1/jobs/search")
@require("support")
def search_jobs() -> Response:
    """Find jobs by MRN or appointment id, sent in the body so PHI stays out of URLs."""
    return _job_page(_body(JobSearchRequest))


@bp.get("/v1/jobs.csv")
@require("support")
def export_jobs() -> Response:
    """Stream every job matching the filters as CSV (ids, statuses, times: no PHI)."""
    filters = _query(JobFilters)
    now, expected = utcnow(), expected_durations()
    with request_transaction() as session:
        services.audit_staff(
            session, _staff(), "jobs.export", now, filters=services.filters_detail(filters)
        )
    return Response(
        _csv_lines(sessions(), filters, now, expected),
        mimetype="text/csv",
        headers={
            "Content-Disposition": 'attachment; filename="jobs.csv"',
            "Cache-Control": "no-store",
        },
    )


@bp.get("/v1/jobs/<job_id>/events")
@require("support")
def job_events(job_id: str) -> Response:
    """A job's whole timeline, in order, and the webhook deliveries that concern it."""
    with request_transaction() as session:
        timeline = services.job_timeline(session, _staff(), job_id, utcnow())
    return _json(timeline)


@bp.post("/v1/jobs/<job_id>/retry")
@require("support")
def retry_job(job_id: str) -> Response:
    """Resubmit a failed job as a new job; 409 when the first try may be in the chart."""
    action = _body(RetryRequest)
    with request_transaction() as session:
        new = services.retry_job(
            session,
            _staff(),
            job_id,
            reason=action.reason,
            confirm_not_in_emr=action.confirm_not_in_emr,
            now=utcnow(),
        )
        response = _json(services.support_job_view(services.job_row(session, new.id)), 202)
    response.headers["Location"] = f"/v1/jobs/{new.id}"
    return response


@bp.post("/v1/jobs/<job_id>/chart-outcome")
@require("support")
def record_chart_outcome(job_id: str) -> Response:
    """Settle a processing job from what support saw in the chart; 409 if it cannot be."""
    action = _body(ChartOutcomeRequest)
    with request_transaction() as session:
        job = services.record_chart_outcome(
            session,
            _staff(),
            job_id,
            found_in_chart=action.found_in_chart,
            reason=action.reason,
            now=utcnow(),
            expected=expected_durations(),
        )
        return _json(services.support_job_view(services.job_row(session, job.id)))


@bp.post("/v1/jobs/<job_id>/reconcile")
@require("support")
def reconcile_job(job_id: str) -> Response:
    """Look the job up in Cobalt's webhook-events log now and apply what is found."""
    action = _body(StaffAction)
    result = reconcile_now(_staff(), job_id, reason=action.reason)
    with request_transaction() as session:
        job = services.support_job_fields(services.job_row(session, result.job_id))
    lookup = ReconcileLookupOut(
        found=result.found,
        event_type=result.event_type,
        applied=result.applied,
        events_searched=result.events_searched,
        status_before=result.status_before,
        status_after=result.status_after,
        summary=result.summary,
    )
    return _json(ReconcileOut.model_validate({**job, "lookup": lookup}))


def reconcile_now(staff: services.Staff, job_id: str, *, reason: str) -> services.ReconcileResult:
    """A staff-requested lookup in Cobalt's log (API and console): record it, ask Cobalt
    with no transaction open, apply what it found. Raises UpstreamFailed if Cobalt fails."""
    with request_transaction() as session:
        lookup = services.begin_reconcile(session, staff, job_id, reason=reason, now=utcnow())
    try:
        events = services.read_cobalt_log(CobaltClient.from_settings(settings()), lookup)
    except CobaltError as exc:
        log.warning(
            "reconcile lookup failed",
            extra={"job_id": str(lookup.job_id), "error": type(exc).__name__},
        )
        raise UpstreamFailed("Cobalt's webhook-events log could not be read; try again.") from None
    with request_transaction() as session:
        return services.finish_reconcile(session, lookup, events, utcnow())


@bp.get("/v1/deliveries/<delivery_id>")
@require("support")
def read_delivery(delivery_id: str) -> Response:
    """A stored webhook delivery with its raw body (PHI: audited)."""
    with request_transaction() as session:
        delivery = services.read_delivery(session, _staff(), delivery_id, utcnow())
    return _json(delivery)


@bp.post("/v1/deliveries/<delivery_id>/replay")
@require("support")
def replay_delivery(delivery_id: str) -> Response:
    """Apply a stored delivery again with today's code; by default a dry run."""
    action = _body(ReplayRequest)
    with request_transaction() as session:
        result = services.replay_delivery(
            session,
            _staff(),
            delivery_id,
            reason=action.reason,
            dry_run=action.dry_run,
            now=utcnow(),
        )
    return _json(result)


@bp.get("/v1/inbox")
@require("support")
def inbox() -> Response:
    """Deliveries that need a person: parked, failed, unknown type, conflicting; and, on the
    first page, the jobs whose fate is unknown past their deadline (attention)."""
    query = _query(InboxQuery)
    with request_transaction() as session:
        deliveries, next_key = services.list_inbox(session, query)
        jobs = services.attention_jobs(session) if services.lists_attention_jobs(query) else []
        body = InboxOut(
            deliveries=[services.delivery_view(d) for d in deliveries],
            next_cursor=encode_cursor(*next_key) if next_key else None,
            attention_jobs=[services.support_job_view(row) for row in jobs],
        )
    return _json(body)


def _job_page(query: JobPageQuery) -> Response:
    with request_transaction() as session:
        page = services.list_jobs(
            session, _staff(), query, now=utcnow(), expected=expected_durations()
        )
        body = JobListOut.model_validate(
            {
                "jobs": [services.support_job_fields(row) for row in page.rows],
                "next_cursor": encode_cursor(*page.next_key) if page.next_key else None,
            }
        )
    return _json(body)


def _csv_lines(
    factory: SessionFactory, filters: JobFilters, now: datetime, expected: dict[str, timedelta]
) -> Iterator[str]:
    """The export, a batch at a time, each read in its own short transaction."""
    yield _csv([services.CSV_COLUMNS])
    after = None
    while True:
        with transaction(factory) as session:
            page = services.find_jobs(
                session,
                filters,
                now=now,
                expected=expected,
                limit=EXPORT_BATCH,
                after=after,
                with_phi=False,
            )
            rows = [services.csv_row(row) for row in page.rows]
        yield _csv(rows)
        if page.next_key is None:
            return
        after = page.next_key


def _staff() -> services.Staff:
    return services.Staff.from_client(current_client())


def expected_durations() -> dict[str, timedelta]:
    return {str(kind): settings().expected_duration(kind) for kind in JobKind}


def _query(model: type[Model]) -> Model:
    """Validate the query string; each parameter at most once, PHI never."""
    errors = [
        FieldError(name, "is PHI and must not be in a URL: use POST /v1/jobs/search")
        for name in PHI_PARAMETERS
        if name in request.args
    ]
    values = {}
    for name, given in request.args.lists():
        if len(given) > 1:
            errors.append(FieldError(name, "must be given once"))
        values[name] = given[0]
    if errors:
        raise ValidationFailed("The query has invalid parameters; see `errors`.", errors)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ValidationFailed(
            "The query has invalid parameters; see `errors`.", field_errors(exc)
        ) from None


def _body(model: type[Model]) -> Model:
    try:
        return model.model_validate(_json_body())
    except ValidationError as exc:
        raise ValidationFailed(
            "The request has invalid fields; see `errors`.", field_errors(exc)
        ) from None


def _json(model: BaseModel, status: int = 200) -> Response:
    response = Response(model.model_dump_json(), status=status, mimetype="application/json")
    # Support answers can carry PHI: keep them out of every cache.
    response.headers["Cache-Control"] = "no-store"
    return response


def _csv(rows: Iterable[Iterable[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()
