"""The OpenAPI 3.1 description, generated from the pydantic models that validate requests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from webhook_service.schemas import (
    JobOut,
    NoteRequest,
    Problem,
    TelephoneEncounterRequest,
    WebhookAck,
)

_MODELS: list[type[BaseModel]] = [
    NoteRequest,
    TelephoneEncounterRequest,
    JobOut,
    Problem,
    WebhookAck,
]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref(Problem)}},
    }


def build_spec() -> dict[str, Any]:
    """Return the whole OpenAPI document (computed once per process by the caller)."""
    _, defs = models_json_schema(
        [
            (m, "validation" if m in (NoteRequest, TelephoneEncounterRequest) else "serialization")
            for m in _MODELS
        ],
        ref_template="#/components/schemas/{model}",
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

    def submit(model: type[BaseModel], summary: str) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "parameters": [idem],
                "requestBody": {"required": True, "content": _json(model)},
                "responses": {
                    "202": {
                        "description": "Accepted: the job, status `processing`.",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": _json(JobOut),
                    },
                    "400": _problem("Malformed JSON."),
                    "413": _problem("Body too large."),
                    "415": _problem("Not JSON."),
                    "422": _problem("Invalid fields (listed in `errors`), or key reused."),
                },
            }
        }

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "webhook_service",
            "version": "1",
            "description": "Submits notes and telephone encounters to Cobalt and tracks them.",
        },
        "paths": {
            "/v1/notes": submit(NoteRequest, "Submit a clinical note"),
            "/v1/telephone-encounters": submit(
                TelephoneEncounterRequest, "Submit a telephone encounter"
            ),
            "/v1/jobs/{job_id}": {
                "get": {
                    "summary": "Poll a job",
                    "parameters": [
                        job_id,
                        {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "The job.",
                            "headers": {
                                "ETag": {"schema": {"type": "string"}},
                                "Retry-After": {"schema": {"type": "integer"}},
                            },
                            "content": _json(JobOut),
                        },
                        "304": {"description": "Unchanged since the ETag given."},
                        "404": _problem("No such job."),
                    },
                }
            },
            "/webhooks/cobalt": {
                "post": {
                    "summary": "Receive a signed Cobalt webhook",
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
            "/healthz": {
                "get": {"summary": "Liveness", "responses": {"200": {"description": "Up"}}}
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: database reachable, schema at head",
                    "responses": {
                        "200": {"description": "Ready"},
                        "503": _problem("Not ready."),
                    },
                }
            },
        },
        "components": {"schemas": schemas},
    }
