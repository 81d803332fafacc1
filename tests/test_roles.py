"""The role and scoping matrix: every /v1 route for every kind of caller."""

from __future__ import annotations

import pytest
import responses

from tests.conftest import COBALT, event, new_token
from tests.test_lifecycle_http import NOTE
from webhook_service.db import transaction
from webhook_service.services import revoke_client

ENCOUNTER = {"patient_mrn": "M1", "provider_id": "p", "location_id": "l", "assigned_to_id": "s"}
FRONTEND_ROUTES = [
    ("POST", "/v1/notes", NOTE),
    ("POST", "/v1/telephone-encounters", ENCOUNTER),
    ("GET", "/v1/jobs/{job}", None),
]
SUPPORT_ROUTES = [
    ("GET", "/v1/jobs", None),
    ("POST", "/v1/jobs/search", {"appointment_id": "728948"}),
    ("GET", "/v1/jobs.csv", None),
    ("GET", "/v1/jobs/{job}/events", None),
    ("POST", "/v1/jobs/{job}/retry", {"reason": "matrix"}),
    ("POST", "/v1/jobs/{job}/reconcile", {"reason": "matrix"}),
    ("GET", "/v1/deliveries/{delivery}", None),
    ("POST", "/v1/deliveries/{delivery}/replay", {"reason": "matrix", "dry_run": True}),
    ("GET", "/v1/inbox", None),
]
CALLERS = ["owner", "other_frontend", "support", "none", "revoked"]


@pytest.fixture
def world(app, client, sessions, post_webhook, cobalt, clock):
    """One job created by `owner`, one stored delivery, and a client of each kind."""
    cobalt.add(responses.GET, f"{COBALT}/webhook-events", json={"webhook_events": []})
    job = client.post("/v1/notes", json=NOTE).json["id"]
    post_webhook(event("appointment.created"))
    from webhook_service.models import WebhookDelivery

    with sessions() as session:
        delivery = session.query(WebhookDelivery).one().id
    revoked_token = new_token(sessions, "revoked", "frontend")
    with transaction(sessions) as session:
        revoke_client(session, "revoked", clock())
    callers = {
        "owner": client,
        "other_frontend": app.test_client(token=new_token(sessions, "other", "frontend")),
        "support": app.test_client(token=new_token(sessions, "staff", "support")),
        "none": app.test_client(token=""),
        "revoked": app.test_client(token=revoked_token),
    }
    return {"job": job, "delivery": delivery, "callers": callers}


def call(world, caller, method, path, body):
    url = path.format(job=world["job"], delivery=world["delivery"])
    return world["callers"][caller].open(url, method=method, json=body)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("method", "path", "body"), FRONTEND_ROUTES + SUPPORT_ROUTES)
def test_every_route_answers_each_caller_as_its_role_allows(world, caller, method, path, body):
    response = call(world, caller, method, path, body)
    status = response.status_code
    is_support_route = (method, path, body) in SUPPORT_ROUTES
    if caller in ("none", "revoked"):
        expected = {401}
    elif caller == "support":
        # Support may do everything but submit; a domain refusal (409) is still "allowed in".
        expected = (
            {403}
            if method == "POST" and path in ("/v1/notes", "/v1/telephone-encounters")
            else None
        )
    elif is_support_route:
        expected = {403}
    elif caller == "other_frontend" and path == "/v1/jobs/{job}":
        expected = {404}
    else:
        expected = {200, 202}
    if expected is None:
        assert status not in (401, 403, 404), (status, response.get_data(as_text=True))
        assert status < 500
    else:
        assert status in expected, (status, response.get_data(as_text=True))
    if status in (401, 403, 404):
        assert response.mimetype == "application/problem+json"
        # Nothing about the job: a 404 reads exactly like the one for an id never issued.
        text = response.get_data(as_text=True).replace(f"'{world['job']}'", "'ID'")
        assert world["job"] not in text
        assert "processing" not in text
