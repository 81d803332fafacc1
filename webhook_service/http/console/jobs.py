"""Console pages for jobs: the dashboard, the list and search, one job and its actions."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from flask import flash, redirect, request, url_for
from werkzeug.wrappers import Response

from webhook_service import services
from webhook_service.errors import Conflict, UpstreamFailed
from webhook_service.http.console import bp
from webhook_service.http.console.pages import (
    FieldProblems,
    page,
    sentence,
    staff,
    validated,
    values,
)
from webhook_service.http.context import request_transaction, utcnow
from webhook_service.http.support import PHI_PARAMETERS, expected_durations, reconcile_now
from webhook_service.lifecycle import JobStatus
from webhook_service.schemas import (
    ChartOutcomeRequest,
    JobPageQuery,
    JobSearchRequest,
    RetryRequest,
    StaffAction,
    encode_cursor,
)
from webhook_service.services import console as console_services
from webhook_service.services.clinics import list_clinics
from webhook_service.services.metrics import worker_status

log = logging.getLogger(__name__)

# What the next page and the search form carry over from the list's query.
CARRIED_FIELDS: Final = (
    "status",
    "kind",
    "clinic",
    "created_from",
    "created_to",
    "overdue",
    "flagged",
    "attention",
    "limit",
)
STATUSES: Final = tuple(str(s) for s in JobStatus)
# Page views are audited too (`job.events`), but listing them would bury the actions.
QUIET_AUDIT_ACTIONS: Final = ("job.events",)


# --- Dashboard ----------------------------------------------------------------------------------


@bp.get("/")
def dashboard() -> Response:
    """Counts by status, what needs a person, and a chart of the last seven days."""
    with request_transaction() as db:
        board = console_services.dashboard(db, now=utcnow(), expected=expected_durations())
        worker = worker_status(db.connection(), utcnow())
    return page(
        "dashboard.html", board=board, worker=worker, chart=chart(board.days), statuses=STATUSES
    )


@dataclass(frozen=True)
class Segment:
    status: str
    count: int
    y: float
    height: float


@dataclass(frozen=True)
class Column:
    label: str
    total: int
    x: float
    segments: list[Segment]


CHART_HEIGHT: Final = 160.0
CHART_COLUMN: Final = 80.0
# Stacked bottom to top: outcomes first, the jobs still open on top.
CHART_ORDER: Final = ("completed", "partial", "failed", "processing")


def chart(days: Iterable[console_services.DayCounts]) -> list[Column]:
    """Stacked bars for an inline SVG, drawn on the server: no script, no inline style."""
    days = list(days)
    tallest = max((sum(d.by_status.values()) for d in days), default=0) or 1
    columns = []
    for index, day in enumerate(days):
        y, segments = CHART_HEIGHT, []
        for status in CHART_ORDER:
            count = day.by_status.get(status, 0)
            height = CHART_HEIGHT * count / tallest
            y -= height
            if count:
                segments.append(Segment(status, count, round(y, 2), round(height, 2)))
        label = day.day.strftime("%a %d")
        columns.append(Column(label, sum(day.by_status.values()), index * CHART_COLUMN, segments))
    return columns


# --- List and search ----------------------------------------------------------------------------


@bp.get("/jobs")
def jobs() -> Response:
    """Jobs newest first, with the support API's filters (never PHI in this URL)."""
    given = values(request.args)
    leaked = [name for name in PHI_PARAMETERS if name in given]
    if leaked:
        problems = [(name, "is never put in a URL: use the search form") for name in leaked]
        return _job_list({}, problems=problems)
    return _job_list(given)


@bp.post("/jobs/search")
def search_jobs() -> Response:
    """Find jobs by MRN or appointment id, sent in the form body so PHI stays out of URLs."""
    return _job_list(values(request.form), searching=True)


def _job_list(
    given: dict[str, str], *, searching: bool = False, problems: FieldProblems | None = None
) -> Response:
    query = None
    if problems is None:
        query, problems = validated(JobSearchRequest if searching else JobPageQuery, given)
    with request_transaction() as db:
        found = (
            services.list_jobs(db, staff(), query, now=utcnow(), expected=expected_durations())
            if query is not None
            else services.JobPage([], None)
        )
        clinics = list_clinics(db)
    return page(
        "jobs.html",
        status=422 if problems else 200,
        rows=found.rows,
        given=given,
        filters={k: v for k, v in given.items() if k in CARRIED_FIELDS},
        searching=searching,
        problems=problems,
        next_cursor=encode_cursor(*found.next_key) if found.next_key else None,
        clinics=clinics,
        statuses=STATUSES,
    )


# --- One job ------------------------------------------------------------------------------------


@bp.get("/jobs/<job_id>")
def job(job_id: str) -> Response:
    """A job's status, timeline, deliveries and audit entries; its PHI stays hidden."""
    return _job_page(job_id)


@bp.post("/jobs/<job_id>/details")
def job_details(job_id: str) -> Response:
    """The same page with the PHI shown: every click is an audited read."""
    return _job_page(job_id, reveal=True)


@bp.post("/jobs/<job_id>/retry")
def retry(job_id: str) -> Response:
    """Resubmit a failed job as a new one, or show why the service refuses."""
    reason = request.form.get("reason", "")
    confirmed = request.form.get("confirm_not_in_emr") == "yes"
    action, problems = validated(RetryRequest, {"reason": reason, "confirm_not_in_emr": confirmed})
    if action is None:
        return _job_page(job_id, status=422, retry_error=sentence(problems), reason=reason)
    try:
        with request_transaction() as db:
            new = services.retry_job(
                db,
                staff(),
                job_id,
                reason=action.reason,
                confirm_not_in_emr=action.confirm_not_in_emr,
                now=utcnow(),
                steps=console_services.CONSOLE_STEPS,
            )
    except Conflict as exc:
        return _job_page(job_id, status=409, retry_error=exc.detail, reason=reason)
    flash(f"Retried job {job_id} as this new job; the worker will submit it.")
    return redirect(url_for("console.job", job_id=new.id), 303)


@bp.post("/jobs/<job_id>/reconcile")
def reconcile(job_id: str) -> Response:
    """Look the job up in Cobalt's webhook-events log now and apply what is found."""
    action, problems = validated(StaffAction, {"reason": request.form.get("reason", "")})
    if action is None:
        return _job_page(job_id, status=422, reconcile_error=sentence(problems))
    try:
        result = reconcile_now(staff(), job_id, reason=action.reason)
    except UpstreamFailed:
        message = "Cobalt's webhook-events log could not be read; try again in a moment."
        return _job_page(job_id, status=502, reconcile_error=message)
    flash(result.summary)
    return redirect(url_for("console.job", job_id=result.job_id), 303)


@bp.post("/jobs/<job_id>/chart-outcome")
def chart_outcome(job_id: str) -> Response:
    """Settle a processing job from what the support person saw in the chart."""
    reason = request.form.get("reason", "")
    seen = request.form.get("found_in_chart")
    found = {"yes": True, "no": False}.get(seen or "")
    if found is None:
        return _job_page(job_id, status=422, chart_error="Say what the chart shows.")
    action, problems = validated(ChartOutcomeRequest, {"reason": reason, "found_in_chart": found})
    if action is None:
        return _job_page(job_id, status=422, chart_error=sentence(problems))
    try:
        with request_transaction() as db:
            job = services.record_chart_outcome(
                db,
                staff(),
                job_id,
                found_in_chart=action.found_in_chart,
                reason=action.reason,
                now=utcnow(),
                expected=expected_durations(),
            )
            status = job.status
    except Conflict as exc:
        return _job_page(job_id, status=409, chart_error=exc.detail)
    flash(f"Recorded what the chart shows: the job is {status}.")
    return redirect(url_for("console.job", job_id=job_id), 303)


def _job_page(job_id: str, *, status: int = 200, reveal: bool = False, **context: Any) -> Response:
    now, by = utcnow(), staff()
    with request_transaction() as db:
        timeline = services.job_timeline(db, by, job_id, now)
        row = services.job_row(db, timeline.job_id)
        # The job as `job_timeline` loaded it (the session's identity map: no second read).
        job = services.get_job(db, str(timeline.job_id))
        outlook = console_services.retry_outlook(job, timeline.events)
        details, bodies = None, {}
        if reveal:
            details = console_services.read_job_details(db, by, job_id, now)
            bodies = {
                d.id: services.read_delivery(db, by, str(d.id), now).body
                for d in timeline.deliveries
            }
        audit = console_services.job_audit(db, row.job.id, skip=QUIET_AUDIT_ACTIONS)
    return page(
        "job.html",
        status=status,
        job=services.support_job_view(row),
        timeline=timeline,
        outlook=outlook,
        details=details,
        bodies=bodies,
        audit=audit,
        **context,
    )
