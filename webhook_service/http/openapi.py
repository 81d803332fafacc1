"""The OpenAPI 3.1 description, generated from the pydantic models that validate requests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from webhook_service.http import reference
from webhook_service.http.openapi_push import PREFER, PREFERENCE_APPLIED, push_paths
from webhook_service.http.openapi_refs import _REF_TEMPLATE, _header, _json, _problem
from webhook_service.http.openapi_support import _support_paths
from webhook_service.schemas import (
    ChartOutcomeRequest,
    DeliveryBodyOut,
    InboxOut,
    JobListOut,
    JobOut,
    JobSearchRequest,
    NoteRequest,
    Problem,
    ReconcileOut,
    ReplayOut,
    ReplayRequest,
    RetryRequest,
    StaffAction,
    SupportJobOut,
    TelephoneEncounterRequest,
    TimelineOut,
    WebhookAck,
)

_REQUESTS: list[type[BaseModel]] = [
    NoteRequest,
    TelephoneEncounterRequest,
    JobSearchRequest,
    StaffAction,
    RetryRequest,
    ReplayRequest,
    ChartOutcomeRequest,
]
_MODELS: list[type[BaseModel]] = [
    *_REQUESTS,
    JobOut,
    Problem,
    WebhookAck,
    SupportJobOut,
    JobListOut,
    TimelineOut,
    DeliveryBodyOut,
    InboxOut,
    ReconcileOut,
    ReplayOut,
    *reference.OPENAPI_MODELS,
]


def build_spec() -> dict[str, Any]:
    """Return the whole OpenAPI document (computed once per process by the caller)."""
    from webhook_service.http import openapi_callbacks as callbacks

    requests = [*_REQUESTS, *callbacks.REQUESTS]
    _, defs = models_json_schema(
        [
            (m, "validation" if m in requests else "serialization")
            for m in _MODELS + callbacks.MODELS
        ],
        ref_template=_REF_TEMPLATE,
    )
    schemas = defs.get("$defs", {})
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }
    idem = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "maxLength": 255},
        "description": "Same key and body return the same job; same key, other body is 422.",
    }

    def submit(model: type[BaseModel], operation_id: str, summary: str) -> dict[str, Any]:
        return {
            "post": {
                "operationId": operation_id,
                "tags": ["submissions"],
                "summary": summary,
                "parameters": [idem],
                "requestBody": {"required": True, "content": _json(model)},
                "responses": {
                    "202": {
                        "description": "Accepted: the job, status `processing`.",
                        "headers": {
                            "Location": _header("Location"),
                            "Idempotent-Replayed": _header("IdempotentReplayed"),
                        },
                        "content": _json(JobOut),
                    },
                    "400": _problem("Malformed JSON."),
                    "413": _problem("Body too large."),
                    "415": _problem("Not JSON."),
                    "422": _problem(
                        "Invalid fields (listed in `errors`), or key reused. For a telephone "
                        "encounter, also an id the clinic's EMR lists lack (pre-flight: type "
                        "`.../not-in-emr-list`, each entry of `errors` with its `code`)."
                    ),
                    "429": _problem(
                        "Over RATE_LIMIT_SUBMISSIONS_PER_MINUTE for this client; see Retry-After."
                    ),
                    "503": _problem(
                        "BACKLOG_MAX_JOBS jobs already wait to be sent, or the database is "
                        "unavailable; see Retry-After."
                    ),
                },
            }
        }

    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "webhook_service",
            "version": "1",
            "description": "Submits notes and telephone encounters to Cobalt and tracks them.",
        },
        # Relative: the document describes the origin that serves it.
        "servers": [{"url": "/", "description": "The service that serves this document."}],
        "tags": [
            {"name": "submissions", "description": "Front ends submit notes and poll jobs."},
            {"name": "support", "description": "The support role's reads and actions."},
            {"name": "webhooks", "description": "Cobalt's signed webhooks."},
            {"name": "reference", "description": "The clinic's EMR lists, for pickers."},
            {"name": "health", "description": "Probes for the platform."},
            callbacks.TAG,
        ],
        "paths": {
            "/v1/notes": submit(NoteRequest, "submit_note", "Submit a clinical note"),
            "/v1/telephone-encounters": submit(
                TelephoneEncounterRequest,
                "submit_telephone_encounter",
                "Submit a telephone encounter",
            ),
            "/v1/jobs/{job_id}": {
                "get": {
                    "operationId": "get_job",
                    "tags": ["submissions"],
                    "summary": "Poll a job",
                    "parameters": [
                        job_id,
                        {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
                        PREFER,
                    ],
                    "responses": {
                        "200": {
                            "description": "The job.",
                            "headers": {
                                "ETag": _header("ETag"),
                                "Retry-After": _header("PollRetryAfter"),
                                "Preference-Applied": PREFERENCE_APPLIED,
                            },
                            "content": _json(JobOut),
                        },
                        "304": {
                            "description": "Unchanged since the ETag given.",
                            "headers": {
                                "ETag": _header("ETag"),
                                "Retry-After": _header("PollRetryAfter"),
                                "Preference-Applied": PREFERENCE_APPLIED,
                            },
                        },
                        "404": _problem("No such job."),
                    },
                }
            },
            "/webhooks/cobalt": {
                "post": {
                    "operationId": "receive_cobalt_webhook",
                    "tags": ["webhooks"],
                    "summary": "Receive a signed Cobalt webhook",
                    # Authenticated by its signature header, not by a bearer token.
                    "security": [],
                    "parameters": [
                        {
                            "name": "cobalt-verification",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {"name": "webhook-id", "in": "header", "schema": {"type": "string"}},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "responses": {
                        "200": {"description": "Stored.", "content": _json(WebhookAck)},
                        "401": _problem("Signature missing or wrong."),
                        "413": _problem("Body too large."),
                        "503": _problem("Storage unavailable: Cobalt will retry once."),
                    },
                }
            },
            **reference.openapi_paths(_problem, _json, _header),
            **push_paths(job_id, _problem),
            **_support_paths(job_id),
            **callbacks.paths(),
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "tags": ["health"],
                    "summary": "Liveness",
                    "security": [],
                    "responses": {"200": {"description": "Up"}},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "tags": ["health"],
                    "summary": "Prometheus metrics (the metrics or the support role)",
                    "description": "The service's metrics in Prometheus's text format, or "
                    "OpenMetrics when asked for in Accept; see README, Operating, Metrics.",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {
                            "description": "The metrics.",
                            "content": {
                                "text/plain": {"schema": {"type": "string"}},
                                "application/openmetrics-text": {"schema": {"type": "string"}},
                            },
                        },
                        "401": _problem("No bearer token, or an unknown or revoked one."),
                        "403": _problem("The token's role may not read the metrics."),
                    },
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "tags": ["health"],
                    "summary": "Readiness: database reachable, schema at head",
                    # Open to anyone; a support token only adds detail to the answer.
                    "security": [],
                    "description": "Anyone gets ready or 503; with a support token, the "
                    "schema revision (`schema`) and why it is not ready.",
                    "responses": {
                        "200": {"description": "Ready"},
                        "503": _problem("Not ready."),
                    },
                }
            },
        },
        "webhooks": callbacks.webhooks(),
        "components": {
            "schemas": schemas,
            "headers": _HEADERS | reference.OPENAPI_HEADERS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    _require_bearer(spec["paths"])
    _declare_common_answers(spec["paths"])
    return spec


_HEADERS: dict[str, dict[str, Any]] = {
    "Location": {
        "description": "The job's URL, `/v1/jobs/{id}`.",
        "schema": {"type": "string"},
    },
    "IdempotentReplayed": {
        "description": "`true` when the Idempotency-Key matched an earlier submission: this is "
        "that job, not a new one.",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "ETag": {
        "description": "The job's version (weak: it changes with the job's status, outcome, "
        "attention or retry, not with the submission's progress); send it back as "
        "If-None-Match to poll for a 304.",
        "schema": {"type": "string"},
    },
    "PollRetryAfter": {
        "description": "While the job is processing: seconds to wait before polling again.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RetryAfter": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RequestId": {
        "description": "This request's id (the caller's `X-Request-ID`, or a new one), as logged.",
        "schema": {"type": "string", "maxLength": 100},
    },
}


def _declare_common_answers(paths: dict[str, Any]) -> None:
    """Answers any operation can give: 500 for a bug, 503 when the database is unavailable.

    Every answer carries X-Request-ID; a 429 or 503 says when to come back in Retry-After.
    """
    for path, item in paths.items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            if path != "/healthz":  # liveness never touches the database
                responses.setdefault("503", _problem("The database is unavailable."))
            responses.setdefault("500", _problem("A bug: X-Request-ID finds it in the logs."))
            for status, response in responses.items():
                headers = response.setdefault("headers", {})
                if status in ("429", "503"):
                    headers["Retry-After"] = _header("RetryAfter")
                headers["X-Request-ID"] = _header("RequestId")


def _require_bearer(paths: dict[str, Any]) -> None:
    """Every `/v1/*` operation needs a bearer token: say so, and list its 401 and 403."""
    for path, item in paths.items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in item.items():
            if method == "parameters":
                continue
            operation["security"] = [{"bearer": []}]
            responses = operation.setdefault("responses", {})
            responses.setdefault("401", _problem("No, unknown or revoked bearer token."))
            responses.setdefault("403", _problem("This client's role may not do this."))
