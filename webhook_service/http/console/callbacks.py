"""Console pages for callbacks: front ends' endpoints, deliveries, one delivery's attempts,
and resending it."""

from __future__ import annotations

import uuid
from typing import Any

from flask import flash, redirect, request, url_for
from werkzeug.wrappers import Response

from webhook_service.callback_schemas import ResendRequest
from webhook_service.errors import Conflict
from webhook_service.http.console import bp
from webhook_service.http.console.pages import page, sentence, staff, validated, values
from webhook_service.http.context import request_transaction, utcnow
from webhook_service.services import callbacks as service

STATES = ("pending", "delivered", "failed", "cancelled")


@bp.get("/callbacks")
def callbacks() -> Response:
    """Every endpoint (state, failing since, pending) and the latest deliveries."""
    given = values(request.args)
    problems: list[tuple[str, str]] = []
    state = given.get("state")
    if state is not None and state not in STATES:
        problems.append(("state", f"must be one of {', '.join(STATES)}"))
        state = None
    job_id = None
    if "job_id" in given:
        try:
            job_id = uuid.UUID(given["job_id"])
        except ValueError:
            problems.append(("job_id", "must be a job id"))
    with request_transaction() as db:
        endpoints = service.list_endpoints(db)
        found = (
            []
            if problems
            else service.list_deliveries(
                db, client=given.get("client"), job_id=job_id, state=state, limit=100
            )
        )
    return page(
        "callbacks.html",
        status=422 if problems else 200,
        endpoints=endpoints,
        deliveries=found,
        problems=problems,
        given=given,
        states=STATES,
    )


@bp.get("/callbacks/<delivery_id>")
def callback_delivery(delivery_id: str) -> Response:
    """One delivery and every attempt; the answers' excerpts stay hidden."""
    return _delivery_page(delivery_id)


@bp.post("/callbacks/<delivery_id>/details")
def callback_delivery_details(delivery_id: str) -> Response:
    """The same page with the answers' excerpts shown (an audited read)."""
    return _delivery_page(delivery_id, reveal=True)


@bp.post("/callbacks/<delivery_id>/resend")
def resend_callback(delivery_id: str) -> Response:
    """Send the delivery again now: same webhook-id and body; the worker sends it."""
    reason = request.form.get("reason", "")
    action, problems = validated(ResendRequest, {"reason": reason})
    if action is None:
        return _delivery_page(delivery_id, status=422, resend_error=sentence(problems))
    try:
        with request_transaction() as db:
            view = service.resend_delivery(
                db, staff(), delivery_id, reason=action.reason, now=utcnow()
            )
    except Conflict as exc:
        return _delivery_page(delivery_id, status=409, resend_error=exc.detail, reason=reason)
    flash(f"Resend queued: the worker sends delivery {view.id} again now.")
    return redirect(url_for("console.callback_delivery", delivery_id=view.id), 303)


def _delivery_page(
    delivery_id: str, *, status: int = 200, reveal: bool = False, **context: Any
) -> Response:
    with request_transaction() as db:
        if reveal:
            view = service.read_callback_delivery(db, staff(), delivery_id, utcnow())
        else:
            view = service.callback_delivery(db, delivery_id)
    return page("callback.html", status=status, delivery=view, revealed=reveal, **context)
