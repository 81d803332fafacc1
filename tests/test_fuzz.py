"""Schemathesis against `/openapi.json`: every documented operation, on SQLite and PostgreSQL.

The Flask app runs in-process (WSGI) on the migrated test database. Each request carries a
valid bearer token for its route's role, and every generated webhook body a valid Cobalt
signature, so generated data gets past authentication into the code behind it. Three rounds
per operation: valid data, invalid data, and valid data aimed at a job and a delivery that
exist (path parameters fixed to real ids). Every response must be no 5xx and conform to the
spec: status code documented, content type, headers, body schema.

Bounded: `FUZZ_EXAMPLES` examples per operation and round (default 25; about 25 s for both
databases), derandomized, no shrinking. Cobalt is a `responses` mock answering an empty
webhook-events log, behind a closed loopback port: nothing leaves the machine.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
import responses
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import func, select

from tests.conftest import WEBHOOK_SECRET, event, make_settings, new_token, sign
from tests.processes import free_port
from webhook_service.db import SessionFactory
from webhook_service.models import WebhookDelivery
from webhook_service.settings import Settings
from webhook_service.signatures import compact_json, compute_signature

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
# Routes a front end calls; every other /v1 route is support staff's.
FRONTEND_OPERATIONS = {("POST", "/v1/notes"), ("POST", "/v1/telephone-encounters")}
# Flask rules that are not part of the JSON API: the spec itself, and HTML pages (the support
# console, the development demo page) with their static files, and the site's icon.
NOT_API = re.compile(r"^/(openapi\.json$|favicon\.ico$|console(/|$)|static/|$)")
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def settings(database_url: str) -> Settings:
    """The conftest settings, with Cobalt on a closed loopback port instead of cobalt.test."""
    return make_settings(database_url, COBALT_API_URL=f"http://127.0.0.1:{free_port()}/v1")


@pytest.fixture
def fake_cobalt(settings: Settings) -> Iterator[responses.RequestsMock]:
    """Cobalt's webhook-events log, empty; any other outbound call fails at once."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(
            responses.GET,
            f"{settings.cobalt_api_url}/webhook-events",
            json={
                "success": True,
                "webhook_events": [],
                "pagination": {"current_page": 1, "total_pages": 0, "total_count": 0},
            },
        )
        yield mock


@pytest.fixture
def support_token(app: Flask, sessions: SessionFactory) -> str:
    return new_token(sessions, "fuzz-support", "support")


@pytest.fixture
def known_ids(app: Flask, sessions: SessionFactory) -> dict[str, str]:
    """A real job (a failed note, so support may act on it) and a real stored delivery."""
    client = app.test_client()
    job = client.post("/v1/notes", json={"appointment_id": "fuzz-1", "note": "Fuzz note."})
    assert job.status_code == 202, job.get_data(as_text=True)
    body, signature = sign(event("note.failed", appointment_id="fuzz-1", failure_reason="x"))
    stored = client.post(
        "/webhooks/cobalt",
        data=body,
        headers={
            "content-type": "application/json",
            "cobalt-verification": signature,
            "webhook-id": "msg_fuzz_known",
        },
    )
    assert stored.status_code == 200, stored.get_data(as_text=True)
    with sessions() as session:
        delivery_id = session.scalar(select(func.max(WebhookDelivery.id)))
    return {"job_id": job.get_json()["id"], "delivery_id": str(delivery_id)}


@pytest.mark.slow
def test_every_operation_conforms_and_never_5xx(
    app: Flask,
    support_token: str,
    known_ids: dict[str, str],
    fake_cobalt: responses.RequestsMock,
) -> None:
    """Valid and invalid data for every operation: never a 5xx, always what the spec says."""
    # Event streams end after this long (they are read to their end), held polls answer.
    app.config["STREAM_SECONDS"] = 0.2
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    tokens = {"frontend": app.config["TEST_TOKEN"], "support": support_token}
    failures: list[str] = []
    rounds = with_real_ids = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        names = {p.name for p in operation.path_parameters}
        fixed = {name: known_ids[name] for name in names if name in known_ids}
        plan: list[tuple[GenerationMode, dict[str, str] | None]] = [
            (GenerationMode.POSITIVE, None),
            (GenerationMode.NEGATIVE, None),
        ]
        if fixed and set(fixed) == names:
            plan.append((GenerationMode.POSITIVE, fixed))
            with_real_ids += 1
        for mode, path_parameters in plan:
            rounds += 1
            try:
                _fuzz(operation, mode, path_parameters, tokens)
            except Unsatisfiable:
                # Nothing to make invalid (no parameters, no body): the valid round covers it.
                assert mode == GenerationMode.NEGATIVE, operation.path
            except (AssertionError, FailureGroup) as exc:  # every operation's, then report
                where = " with real ids" if path_parameters else ""
                failures.append(
                    f"{operation.method.upper()} {operation.path} ({mode.value}{where}): "
                    + " | ".join(_describe(exc)[:12])
                )
    assert rounds >= 12, "the spec lost operations"
    assert with_real_ids >= 1, "no operation takes a job or delivery id any more"
    assert failures == [], "\n\n".join(failures)


def _describe(exc: BaseException) -> list[str]:
    if isinstance(exc, FailureGroup):
        return [f"{type(f).__name__}: {f.title}: {f.message}"[:400] for f in exc.exceptions]
    return str(exc).strip().splitlines()


def _fuzz(
    operation: Any,
    mode: GenerationMode,
    path_parameters: dict[str, str] | None,
    tokens: dict[str, str],
) -> None:
    key = (operation.method.upper(), operation.path)
    token = tokens["frontend" if key in FRONTEND_OPERATIONS else "support"]
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report the first failure fast
    )
    @given(case=strategy)
    def check(case: Any) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        if case.path == "/webhooks/cobalt":
            # Sign what is sent, so fuzzed payloads get past the signature into storage.
            body = case.body if isinstance(case.body, dict | list) else {}
            headers["cobalt-verification"] = compute_signature(WEBHOOK_SECRET, compact_json(body))
        response = case.call(headers=headers)
        assert response.status_code < 500, (
            f"{response.status_code} for {case.method} {case.formatted_path}: {response.text[:300]}"
        )
        case.validate_response(response, checks=CHECKS, headers=headers)

    check()


def test_every_route_is_in_the_spec(app: Flask) -> None:
    """Every API route the app serves is described in /openapi.json, with each method."""
    spec = app.test_client().get("/openapi.json").get_json()
    documented = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    served = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        if NOT_API.match(path):
            continue
        for method in rule.methods or ():
            if method not in {"HEAD", "OPTIONS"}:
                served.add((method, path))
    assert sorted(served - documented) == []
