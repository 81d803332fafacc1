"""The sandbox's HTTP face: Cobalt's /v1 API (the /_sandbox control plane is `control`'s).

Views only translate between HTTP and `Sandbox`; replies keep Cobalt's shapes
(`{"success": false, "message": ...}` for every error Cobalt itself gives), except the
gateway faults, which answer with a proxy's HTML error page as one in front of Cobalt would.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, g, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from webhook_service.sandbox.config import AccessTokenConfig, SandboxConfig
from webhook_service.sandbox.control import control
from webhook_service.sandbox.outcomes import SubmissionRejected
from webhook_service.sandbox.reference import reference_reply
from webhook_service.sandbox.replies import _http_error, _json_body, fail, get_sandbox
from webhook_service.sandbox.simulator import (
    Accepted,
    AuthFailure,
    Clock,
    InjectedRefusal,
    InjectedServerError,
    Sandbox,
)
from webhook_service.sandbox.store import DeliveryStatus, EventQuery, iso_utc

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20

cobalt = Blueprint("cobalt_v1", __name__, url_prefix="/v1")


def create_sandbox_app(config: SandboxConfig | None = None, *, clock: Clock | None = None) -> Flask:
    """Create the sandbox app; its `Sandbox` is `app.extensions["sandbox"]`."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 5 * 1024 * 1024
    app.extensions["sandbox"] = Sandbox(config or SandboxConfig(), clock=clock)
    app.register_blueprint(cobalt)
    app.register_blueprint(control)
    # Beside the simulated Cobalt: a front end's callback endpoint (receiver.py).
    from webhook_service.sandbox.receiver import CallbackReceiver, receiver

    app.extensions["callback_receiver"] = CallbackReceiver()
    app.register_blueprint(receiver)
    app.register_error_handler(HTTPException, _http_error)
    return app


def _caller() -> AccessTokenConfig:
    return cast(AccessTokenConfig, g.cobalt_token)


# --- Cobalt /v1 ------------------------------------------------------------------------------


@cobalt.before_request
def authenticate() -> ResponseReturnValue | None:
    try:
        g.cobalt_token = get_sandbox().authenticate(
            request.headers.get("client_id"),
            request.headers.get("client_secret"),
            request.headers.get("access_token"),
        )
    except AuthFailure as exc:
        return jsonify(exc.body), exc.status
    return None


@cobalt.get("/settings")
def settings() -> ResponseReturnValue:
    sandbox = get_sandbox()
    token = _caller()
    return {
        "success": True,
        "access_token_reference_id": token.access_token_reference_id,
        "emr": sandbox.config.emr,
        "practice_name": token.practice_name,
        "timezone": "UTC",
    }


@cobalt.get("/providers")
def providers() -> ResponseReturnValue:
    return _reference("providers")


@cobalt.get("/staff")
def staff() -> ResponseReturnValue:
    return {"success": True, "staff": [s.to_api() for s in get_sandbox().seed.staff.values()]}


@cobalt.get("/locations")
def locations() -> ResponseReturnValue:
    return _reference("locations")


@cobalt.get("/pharmacies")
def pharmacies() -> ResponseReturnValue:
    return _reference("pharmacies")


def _reference(resource: str) -> ResponseReturnValue:
    sandbox = get_sandbox()
    return reference_reply(sandbox.seed, resource, sandbox.store.faults())


@cobalt.get("/appointments")
def appointments() -> ResponseReturnValue:
    sandbox = get_sandbox()
    try:
        start = _date_arg("start_date") or sandbox.clock().date()
        end = _date_arg("end_date") or start
    except ValueError as exc:
        return fail(400, str(exc))
    if end < start:
        return fail(400, "end_date must not be before start_date")
    found = sandbox.seed.appointments_between(start, end)
    return {"success": True, "appointments": [a.to_api() for a in found]}


@cobalt.post("/notes")
def create_note() -> ResponseReturnValue:
    sandbox = get_sandbox()
    try:
        accepted = sandbox.submit_note(_caller(), _json_body())
    except (InjectedServerError, InjectedRefusal, SubmissionRejected) as exc:
        return _refusal(exc)
    sandbox.hold_reply(accepted)
    if accepted.gateway_status is not None:
        return _gateway_page(accepted.gateway_status)
    reply: dict[str, Any] = {"success": True, "message": "Note upload in progress."}
    if sandbox.config.notes_return_job_id:
        reply["job_id"] = accepted.job_id
    return reply


@cobalt.post("/telephone-encounters")
def create_telephone_encounter() -> ResponseReturnValue:
    sandbox = get_sandbox()
    try:
        accepted = sandbox.submit_telephone_encounter(_caller(), _json_body())
    except (InjectedServerError, InjectedRefusal, SubmissionRejected) as exc:
        return _refusal(exc)
    sandbox.hold_reply(accepted)
    return _encounter_reply(accepted)


def _encounter_reply(accepted: Accepted) -> ResponseReturnValue:
    if accepted.gateway_status is not None:
        return _gateway_page(accepted.gateway_status)
    return {
        "success": True,
        "message": "Telephone encounter queued successfully",
        "telephone_encounter_id": accepted.telephone_encounter_id,
        # An integer, as in one of Cobalt's examples; webhooks carry it as a string.
        "job_id": int(accepted.job_id),
    }


def _refusal(
    exc: InjectedServerError | InjectedRefusal | SubmissionRejected,
) -> ResponseReturnValue:
    """A submission answered without being queued."""
    if isinstance(exc, SubmissionRejected):
        return jsonify(exc.body()), exc.status
    if isinstance(exc, InjectedRefusal):
        # Cobalt's "no" inside a 200, which a client must not read as accepted.
        return fail(200, "The request could not be processed.")
    if exc.gateway:
        return _gateway_page(exc.status)
    return fail(exc.status, "Internal server error")


_GATEWAY_TITLES = {502: "502 Bad Gateway", 504: "504 Gateway Time-out"}


def _gateway_page(status: int) -> ResponseReturnValue:
    """The HTML error page of a proxy in front of Cobalt (nginx's words)."""
    title = _GATEWAY_TITLES.get(status, f"{status} Error")
    page = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    return Response(page, status=status, content_type="text/html")


@cobalt.post("/webhook")
def register_webhook() -> ResponseReturnValue:
    sandbox = get_sandbox()
    body = _json_body()
    url = body.get("webhook_url") if isinstance(body, dict) else None
    if not isinstance(url, str) or not _is_http_url(url):
        return fail(400, "webhook_url must be an http(s) URL")
    webhook = sandbox.store.register_webhook(url, sandbox.clock())
    return {"success": True, **webhook}


@cobalt.get("/webhook")
def list_webhooks() -> ResponseReturnValue:
    sandbox = get_sandbox()
    return {"success": True, "webhooks": sandbox.store.list_webhooks(sandbox.clock())}


@cobalt.delete("/webhook")
def delete_webhook() -> ResponseReturnValue:
    url = _selector("webhook_url")
    deleted = get_sandbox().store.delete_webhooks(url)
    if url is not None and deleted == 0:
        return fail(404, "Webhook not found")
    return {"success": True, "deleted": deleted}


@cobalt.post("/webhook/rotate-secret")
def rotate_webhook_secret() -> ResponseReturnValue:
    sandbox = get_sandbox()
    matches = sandbox.store.find_webhooks(_selector("webhook_url"), _selector("webhook_id"))
    if not matches:
        return fail(404, "Webhook not found")
    if len(matches) > 1:
        return fail(400, "Several webhooks are registered; pass webhook_url or webhook_id")
    now = sandbox.clock()
    webhook = sandbox.store.rotate_secret(matches[0], now, sandbox.config.secret_grace_seconds)
    valid_until = now + timedelta(seconds=sandbox.config.secret_grace_seconds)
    return {"success": True, **webhook, "previous_secret_expires_at": iso_utc(valid_until)}


@cobalt.get("/webhook-events")
def webhook_events() -> ResponseReturnValue:
    try:
        query = _event_query(_caller().access_token_reference_id)
    except ValueError as exc:
        return fail(400, str(exc))
    events, total, pages = get_sandbox().store.query_events(query)
    return {
        "success": True,
        "webhook_events": events,
        "pagination": {
            "current_page": query.page,
            "total_pages": pages,
            "total_count": total,
            "page_size": query.page_size,
        },
    }


def _event_query(reference_id: str) -> EventQuery:
    args = request.args
    status = args.get("delivery_status") or None
    if status not in (None, "success", "failed", "pending"):
        raise ValueError("delivery_status must be success, failed or pending")
    sort = args.get("sort") or "-created_at"
    if sort not in ("created_at", "-created_at"):
        raise ValueError("sort must be created_at or -created_at")
    page = _int_arg("page", 1)
    page_size = _int_arg("page_size", DEFAULT_PAGE_SIZE)
    if page < 1:
        raise ValueError("page must be 1 or more")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
    start, end = _date_arg("start_date"), _date_arg("end_date")
    if start and end and end < start:
        raise ValueError("end_date must not be before start_date")
    return EventQuery(
        access_token_reference_id=reference_id,
        job_id=args.get("job_id") or None,
        event_type=args.get("event_type") or None,
        delivery_status=cast(DeliveryStatus | None, status),
        start_date=start,
        end_date=end,
        page=page,
        page_size=page_size,
        newest_first=sort == "-created_at",
    )


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer") from None


def _date_arg(name: str) -> date | None:
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        return datetime.strptime(raw, "%Y-%m-%d").date()  # noqa: DTZ007 - a bare date
    except ValueError:
        raise ValueError(f"{name} must be a date in YYYY-MM-DD form") from None


def _selector(name: str) -> str | None:
    body = _json_body()
    value = body.get(name) if isinstance(body, dict) else None
    value = value or request.args.get(name)
    return value if isinstance(value, str) and value else None


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
