"""Callbacks over HTTP: a front end registers its endpoint and rotates its secret (role
`frontend`); support lists endpoints and deliveries, reads attempts and resends (`support`)."""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, request
from pydantic import BaseModel

from webhook_service.callback_schemas import (
    CallbackDeliveryListOut,
    CallbackEndpointListOut,
    CallbackRequest,
    ResendRequest,
)
from webhook_service.errors import FieldError, ValidationFailed
from webhook_service.http.auth import current_client, require
from webhook_service.http.context import request_transaction, settings, utcnow
from webhook_service.http.support import _body, _staff
from webhook_service.services import callbacks

bp = Blueprint("callbacks", __name__)

DELIVERY_STATES = ("pending", "delivered", "failed", "cancelled")
MAX_LIST = 200


@bp.put("/v1/callback")
@require("frontend")
def register() -> Response:
    """Register (or change) where this client's job changes are POSTed; 201 with the secret
    when the endpoint is new, else 200 without it. Re-enables a disabled endpoint."""
    body = _body(CallbackRequest)
    now = utcnow()
    with request_transaction() as session:
        endpoint, secret, created = callbacks.register_endpoint(
            session,
            current_client(),
            body.url,
            allow_private=settings().callback_allow_private_networks,
            now=now,
        )
        view = callbacks.endpoint_view(endpoint, now, secret)
    return _json(view, 201 if created else 200)


@bp.get("/v1/callback")
@require("frontend")
def read() -> Response:
    """This client's callback endpoint (never its secret)."""
    now = utcnow()
    with request_transaction() as session:
        view = callbacks.endpoint_view(callbacks.read_endpoint(session, current_client()), now)
    return _json(view)


@bp.delete("/v1/callback")
@require("frontend")
def remove() -> Response:
    """Stop callbacks: pending deliveries are cancelled."""
    with request_transaction() as session:
        callbacks.remove_endpoint(session, current_client(), utcnow())
    return Response(status=204)


@bp.post("/v1/callback/rotate-secret")
@require("frontend")
def rotate() -> Response:
    """A new secret signs from now on (shown once); the old one signs alongside for 24 h."""
    now = utcnow()
    with request_transaction() as session:
        endpoint, secret = callbacks.rotate_secret(session, current_client(), now)
        view = callbacks.endpoint_view(endpoint, now, secret)
    return _json(view)


@bp.post("/v1/callback/enable")
@require("frontend")
def enable() -> Response:
    """Re-enable an endpoint disabled after failing for days; pending deliveries resume."""
    now = utcnow()
    with request_transaction() as session:
        view = callbacks.endpoint_view(
            callbacks.enable_endpoint(session, current_client(), now), now
        )
    return _json(view)


# --- Support ---------------------------------------------------------------------------------


@bp.get("/v1/callback-endpoints")
@require("support")
def list_endpoints() -> Response:
    """Every front end's endpoint: state, failing since when, deliveries pending."""
    with request_transaction() as session:
        body = CallbackEndpointListOut(endpoints=callbacks.list_endpoints(session))
    return _json(body)


@bp.get("/v1/callback-deliveries")
@require("support")
def list_deliveries() -> Response:
    """Deliveries newest first; filter by `client` (name), `job_id` or `state`."""
    errors: list[FieldError] = []
    job_id = None
    if "job_id" in request.args:
        try:
            job_id = uuid.UUID(request.args["job_id"])
        except ValueError:
            errors.append(FieldError("job_id", "must be a job id (a UUID)"))
    state = request.args.get("state")
    if state is not None and state not in DELIVERY_STATES:
        errors.append(FieldError("state", f"must be one of {', '.join(DELIVERY_STATES)}"))
    limit = request.args.get("limit", "50")
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= MAX_LIST:
        errors.append(FieldError("limit", f"must be a whole number from 1 to {MAX_LIST}"))
    unknown = set(request.args) - {"client", "job_id", "state", "limit"}
    errors += [FieldError(name, "is not a filter of this list") for name in sorted(unknown)]
    if errors:
        raise ValidationFailed("The query has invalid parameters; see `errors`.", errors)
    with request_transaction() as session:
        found = callbacks.list_deliveries(
            session,
            client=request.args.get("client"),
            job_id=job_id,
            state=state,
            limit=int(limit),
        )
    return _json(CallbackDeliveryListOut(deliveries=found))


@bp.get("/v1/callback-deliveries/<delivery_id>")
@require("support")
def read_delivery(delivery_id: str) -> Response:
    """One delivery and every attempt: status, latency, the start of the answer (audited)."""
    with request_transaction() as session:
        view = callbacks.read_callback_delivery(session, _staff(), delivery_id, utcnow())
    return _json(view)


@bp.post("/v1/callback-deliveries/<delivery_id>/resend")
@require("support")
def resend(delivery_id: str) -> Response:
    """Send a delivery again now (same `webhook-id` and body); 409 if its endpoint is off."""
    action = _body(ResendRequest)
    with request_transaction() as session:
        view = callbacks.resend_delivery(
            session, _staff(), delivery_id, reason=action.reason, now=utcnow()
        )
    return _json(view, 202)


def _json(model: BaseModel, status: int = 200) -> Response:
    response = Response(model.model_dump_json(), status=status, mimetype="application/json")
    # Secrets and job resources: never cached.
    response.headers["Cache-Control"] = "no-store"
    return response
