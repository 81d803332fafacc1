"""`webhook-service jobs …`: support staff's list, show, retry and chart outcome, from a terminal.

The same services as the support API, audited under the person named by `--as` (or $USER).
Output carries ids, statuses and times only: never PHI on a terminal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click
from pydantic import BaseModel, ValidationError

from webhook_service.cli.base import session_factory
from webhook_service.clock import utcnow
from webhook_service.lifecycle import JobKind, JobStatus
from webhook_service.schemas import JobPageQuery, encode_cursor, field_errors

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from webhook_service.services import Staff

Model = TypeVar("Model", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])


def _acting_as(command: F) -> F:
    return click.option(
        "--as",
        "actor",
        default=None,
        help="Who is acting, for the audit log (default: $USER).",
    )(command)


@click.group()
def jobs() -> None:
    """Find jobs, read their timeline, retry failed ones (support staff; audited)."""


@jobs.command("list")
@click.option("--status", type=click.Choice([str(s) for s in JobStatus]))
@click.option("--kind", type=click.Choice([str(k) for k in JobKind]))
@click.option("--clinic", type=int, help="Clinic id.")
@click.option("--from", "created_from", help="Created at or after (ISO 8601).")
@click.option("--to", "created_to", help="Created before (ISO 8601).")
@click.option("--overdue/--not-overdue", default=None, help="Processing past expected time.")
@click.option("--flagged/--not-flagged", default=None, help="Needs a person.")
@click.option(
    "--attention/--no-attention",
    default=None,
    help="Processing past the deadline with no outcome: check the chart.",
)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--cursor", help="The `next` cursor printed by the previous page.")
@_acting_as
def jobs_list(actor: str | None, **options: Any) -> None:
    """List jobs newest first: id, kind, status, created, finished, error, Cobalt ids, flagged."""
    from webhook_service import services
    from webhook_service.settings import Settings

    query = _validated(JobPageQuery, {k: v for k, v in options.items() if v is not None})
    settings = Settings()
    expected = {str(kind): settings.expected_duration(kind) for kind in JobKind}
    with _transaction() as session:
        page = services.list_jobs(session, _staff(actor), query, now=utcnow(), expected=expected)
        lines = ["\t".join(services.csv_row(row)) for row in page.rows]
    click.echo("\t".join(services.CSV_COLUMNS))
    for line in lines:
        click.echo(line)
    if page.next_key is not None:
        click.echo(f"next: --cursor {encode_cursor(*page.next_key)}")


@jobs.command("show")
@click.argument("job_id")
@_acting_as
def jobs_show(job_id: str, actor: str | None) -> None:
    """Show a job's status, its whole timeline and its webhook deliveries."""
    from webhook_service import services

    with _transaction() as session:
        timeline = services.job_timeline(session, _staff(actor), job_id, utcnow())
        job = services.support_job_view(services.job_row(session, timeline.job_id))
    error = job.error.code if job.error else "-"
    click.echo(f"job {job.id}  {job.kind}  {job.status}  error: {error}")
    if job.attention is not None:
        click.echo(f"attention: {job.attention.code} since {job.attention.since.isoformat()}")
    click.echo(
        f"submission: {job.submission.state} ({job.submission.attempts} attempts)  "
        f"cobalt job: {job.cobalt.job_id or '-'}  "
        f"encounter: {job.cobalt.telephone_encounter_id or '-'}  "
        f"flagged: {'yes' if job.flagged else 'no'}"
    )
    if job.retry_of or job.retried_as:
        click.echo(f"retry of: {job.retry_of or '-'}  retried as: {job.retried_as or '-'}")
    click.echo("timeline:")
    for event in timeline.events:
        detail = json.dumps(event.detail, sort_keys=True, default=str)
        click.echo(f"  {event.at.isoformat()}  {event.type}  {detail}")
    click.echo("deliveries:")
    for delivery in timeline.deliveries:
        click.echo(
            f"  {delivery.id}  {delivery.received_at.isoformat()}  {delivery.event_type or '-'}"
            f"  {delivery.state}  {delivery.state_detail or ''}".rstrip()
        )


@jobs.command("retry")
@click.argument("job_id")
@click.option("--reason", required=True, help="Why (kept in the audit log; no PHI).")
@click.option(
    "--confirm-not-in-emr",
    is_flag=True,
    help="You checked the chart: the first try is not there (needed when it may have "
    "reached Cobalt, after a reconcile lookup).",
)
@_acting_as
def jobs_retry(job_id: str, reason: str, confirm_not_in_emr: bool, actor: str | None) -> None:
    """Resubmit a failed job as a new job, refusing when the first try may be in the chart."""
    from webhook_service import services
    from webhook_service.schemas import RetryRequest

    action = _validated(RetryRequest, {"reason": reason, "confirm_not_in_emr": confirm_not_in_emr})
    with _transaction() as session:
        new = services.retry_job(
            session,
            _staff(actor),
            job_id,
            reason=action.reason,
            confirm_not_in_emr=action.confirm_not_in_emr,
            now=utcnow(),
        )
    click.echo(f"retried {job_id} as {new.id}; the worker will submit it")


@jobs.command("chart-outcome")
@click.argument("job_id")
@click.option(
    "--found/--not-found",
    "found_in_chart",
    required=True,
    help="What you saw in the EMR's chart: the note or encounter is there, or it is not.",
)
@click.option("--reason", required=True, help="Why (kept in the audit log; no PHI).")
@_acting_as
def jobs_chart_outcome(job_id: str, found_in_chart: bool, reason: str, actor: str | None) -> None:
    """Settle a processing job from the chart: found → completed; not found → failed
    (`not_in_chart`), which may then be retried."""
    from webhook_service import services
    from webhook_service.schemas import ChartOutcomeRequest
    from webhook_service.settings import Settings

    action = _validated(ChartOutcomeRequest, {"reason": reason, "found_in_chart": found_in_chart})
    settings = Settings()
    expected = {str(kind): settings.expected_duration(kind) for kind in JobKind}
    with _transaction() as session:
        job = services.record_chart_outcome(
            session,
            _staff(actor),
            job_id,
            found_in_chart=action.found_in_chart,
            reason=action.reason,
            now=utcnow(),
            expected=expected,
        )
        status = job.status
    click.echo(f"job {job_id} is now {status}")


def _staff(actor: str | None) -> Staff:
    from webhook_service.services import Staff

    name = actor or os.environ.get("USER")
    if not name:
        raise click.UsageError("Say who is acting with --as NAME.")
    return Staff(name=name, via="cli")


def _validated(model: type[Model], values: dict[str, Any]) -> Model:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{e.field} {e.message}" for e in field_errors(exc))
        raise click.UsageError(problems) from None


@contextmanager
def _transaction() -> Iterator[Session]:
    """The command's one transaction; a service error becomes a message and exit status 1."""
    from webhook_service.db import transaction
    from webhook_service.errors import ServiceError

    try:
        with transaction(session_factory()) as session:
            yield session
    except ServiceError as exc:
        raise click.ClickException(exc.detail) from None
