"""The sandbox's /_sandbox control plane (no auth: dev and tests only): faults, state, tokens,
injected events, and a drain for tests.
"""

from __future__ import annotations

from flask import Blueprint, request
from flask.typing import ResponseReturnValue
from pydantic import ValidationError

from webhook_service.sandbox.data import DEMO_IDS
from webhook_service.sandbox.replies import _json_body, fail, get_sandbox

control = Blueprint("sandbox_control", __name__, url_prefix="/_sandbox")


@control.get("")
def overview() -> ResponseReturnValue:
    sandbox = get_sandbox()
    return {
        "success": True,
        "demo_ids": DEMO_IDS,
        "faults": sandbox.store.faults().model_dump(),
        "processing_seconds": sandbox.config.processing_seconds,
        "notes_return_job_id": sandbox.config.notes_return_job_id,
        "note_success_event": sandbox.config.note_success_event,
    }


@control.get("/faults")
def read_faults() -> ResponseReturnValue:
    return {"success": True, "faults": get_sandbox().store.faults().model_dump()}


@control.post("/faults")
def update_faults() -> ResponseReturnValue:
    body = _json_body()
    if not isinstance(body, dict):
        return fail(400, "Request body must be a JSON object of fault settings")
    try:
        faults = get_sandbox().store.update_faults(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return fail(400, problems)
    return {"success": True, "faults": faults.model_dump()}


@control.post("/reset")
def reset() -> ResponseReturnValue:
    get_sandbox().reset()
    return {"success": True}


@control.get("/submissions")
def submissions() -> ResponseReturnValue:
    found = get_sandbox().store.submissions(request.args.get("kind") or None)
    return {"success": True, "submissions": found}


@control.get("/deliveries")
def deliveries() -> ResponseReturnValue:
    return {"success": True, "deliveries": get_sandbox().store.deliveries()}


@control.post("/tokens/<token>/expire")
def expire_token(token: str) -> ResponseReturnValue:
    notify = request.args.get("notify", "true") != "false"
    if not get_sandbox().set_token_expired(token, True, notify=notify):
        return fail(404, "Unknown access token")
    return {"success": True, "expired": True}


@control.post("/tokens/<token>/renew")
def renew_token(token: str) -> ResponseReturnValue:
    if not get_sandbox().set_token_expired(token, False):
        return fail(404, "Unknown access token")
    return {"success": True, "expired": False}


@control.post("/tokens/<token>/emr")
def set_emr_support(token: str) -> ResponseReturnValue:
    """`{"supported": false}` makes the token's EMR unsupported (telephone encounters are
    refused with "Unsupported EMR"); `{"supported": true}` undoes it."""
    body = _json_body()
    supported = body.get("supported") if isinstance(body, dict) else None
    if not isinstance(supported, bool):
        return fail(400, 'Request body must be {"supported": true|false}')
    if not get_sandbox().set_unsupported_emr(token, not supported):
        return fail(404, "Unknown access token")
    return {"success": True, "supported": supported}


@control.post("/events")
def inject_event() -> ResponseReturnValue:
    """Emit any event as Cobalt would (signed, delivered, listed by GET /v1/webhook-events):
    `{"type", "data", "job_id"?, "access_token"?}`, the token defaulting to the first one.
    For events of other resources, such as an `appointment.failed` sharing a note's
    `data.appointment_id`."""
    sandbox = get_sandbox()
    body = _json_body()
    if not isinstance(body, dict):
        return fail(400, "Request body must be a JSON object")
    event_type, data, job_id = body.get("type"), body.get("data", {}), body.get("job_id")
    token = body.get("access_token", sandbox.config.access_tokens[0].access_token)
    if not isinstance(event_type, str) or not event_type or not isinstance(data, dict):
        return fail(400, "type must be a non-empty string and data an object")
    if job_id is not None and not isinstance(job_id, str):
        return fail(400, "job_id must be a string")
    if not isinstance(token, str):
        return fail(400, "access_token must be a string")
    event_id = sandbox.inject_event(token, event_type, data, job_id)
    if event_id is None:
        return fail(404, "Unknown access token")
    return {"success": True, "event_id": event_id}


@control.post("/drain")
def drain() -> ResponseReturnValue:
    timeout = request.args.get("timeout", "10")
    try:
        seconds = min(float(timeout), 60.0)
    except ValueError:
        return fail(400, "timeout must be a number of seconds")
    return {"success": True, "idle": get_sandbox().drain(seconds)}
