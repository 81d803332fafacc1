"""Console pages for webhook deliveries: one delivery, its replay, and the inbox."""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, request, url_for
from werkzeug.wrappers import Response

from webhook_service import services
from webhook_service.errors import Conflict
from webhook_service.http.console import bp
from webhook_service.http.console.pages import page, sentence, staff, validated, values
from webhook_service.http.context import request_transaction, utcnow
from webhook_service.schemas import (
    DeliveryOut,
    InboxQuery,
    ReplayRequest,
    SupportJobOut,
    encode_cursor,
)
from webhook_service.services import console as console_services
from webhook_service.services.support_inbox import (
    INBOX_ATTENTION_LIMIT,
    INBOX_STATES,
    get_delivery,
)
from webhook_service.services.support_replay import can_apply_replay


@bp.get("/deliveries/<delivery_id>")
def delivery(delivery_id: str) -> Response:
    """A stored webhook delivery: what it was and what became of it; its body stays hidden."""
    return _delivery_page(delivery_id)


@bp.post("/deliveries/<delivery_id>/details")
def delivery_details(delivery_id: str) -> Response:
    """The same page with the raw body and headers shown (an audited read)."""
    return _delivery_page(delivery_id, reveal=True)


@bp.post("/deliveries/<delivery_id>/replay")
def replay(delivery_id: str) -> Response:
    """Apply a stored delivery again: a dry run shows what would change, then apply it."""
    reason = request.form.get("reason", "")
    dry_run = request.form.get("dry_run") != "no"
    action, problems = validated(ReplayRequest, {"reason": reason, "dry_run": dry_run})
    if action is None:
        return _delivery_page(delivery_id, status=422, replay_error=sentence(problems))
    try:
        with request_transaction() as db:
            result = services.replay_delivery(
                db, staff(), delivery_id, reason=action.reason, dry_run=dry_run, now=utcnow()
            )
    except Conflict as exc:
        return _delivery_page(delivery_id, status=409, replay_error=exc.detail, reason=reason)
    if dry_run:
        return _delivery_page(delivery_id, result=result, reason=action.reason)
    job_change = (
        f"; its job {result.job_status_before} → {result.job_status_after}" if result.job_id else ""
    )
    flash(f"Replayed: the delivery went {result.state_before} → {result.state_after}{job_change}.")
    return redirect(url_for("console.delivery", delivery_id=result.delivery_id), 303)


def _delivery_page(
    delivery_id: str, *, status: int = 200, reveal: bool = False, **context: Any
) -> Response:
    body = headers = None
    with request_transaction() as db:
        view: DeliveryOut
        if reveal:
            view = shown = services.read_delivery(db, staff(), delivery_id, utcnow())
            body, headers = shown.body, shown.headers
        else:
            view = services.delivery_view(get_delivery(db, delivery_id))
        likely = console_services.likely_jobs(db, [get_delivery(db, delivery_id)]).get(view.id)
    return page(
        "delivery.html",
        status=status,
        delivery=view,
        likely=likely,
        # A dry run rolls back: the state shown is the state the replay started from.
        can_apply=can_apply_replay(view.state),
        revealed=reveal,
        body=body,
        headers=headers,
        **context,
    )


@bp.get("/inbox")
def inbox() -> Response:
    """What needs a person: jobs whose outcome nobody knows past their deadline (on the
    first page), and deliveries parked, failed, of unknown type, conflicting or held."""
    given = values(request.args)
    query, problems = validated(InboxQuery, given)
    found, next_key, likely = [], None, {}
    waiting: list[SupportJobOut] | None = None  # None: this page does not list them
    if query is not None:
        with request_transaction() as db:
            rows, next_key = services.list_inbox(db, query)
            found = [services.delivery_view(d) for d in rows]
            likely = console_services.likely_jobs(db, rows)
            if services.lists_attention_jobs(query):
                waiting = [services.support_job_view(row) for row in services.attention_jobs(db)]
    return page(
        "inbox.html",
        status=422 if problems else 200,
        deliveries=found,
        likely=likely,
        attention_jobs=waiting,
        attention_limit=INBOX_ATTENTION_LIMIT,
        problems=problems,
        given=given,
        states=[str(s) for s in INBOX_STATES],
        next_cursor=encode_cursor(*next_key) if next_key else None,
    )
