"""The support API's part of the OpenAPI document: its routes, and query models as parameters."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from webhook_service.http.openapi_refs import _REF_TEMPLATE, _header, _json, _problem
from webhook_service.schemas import (
    ChartOutcomeRequest,
    DeliveryBodyOut,
    InboxOut,
    InboxQuery,
    JobListOut,
    JobPageQuery,
    JobSearchRequest,
    ReconcileOut,
    ReplayOut,
    ReplayRequest,
    RetryRequest,
    StaffAction,
    SupportJobOut,
    TimelineOut,
)


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """A query model's fields as OpenAPI query parameters (the same model validates them)."""
    parameters = []
    schema_of = model.model_json_schema(mode="validation", ref_template=_REF_TEMPLATE)
    for name, schema in schema_of["properties"].items():
        # An absent parameter is "no filter": publish the value's type, not `T | null`.
        value = next(
            (s for s in schema.get("anyOf", []) if s.get("type") != "null"),
            {k: v for k, v in schema.items() if k not in ("title", "description")},
        )
        parameter = {"name": name, "in": "query", "required": False, "schema": value}
        if "description" in schema:
            parameter["description"] = schema["description"]
        parameters.append(parameter)
    return parameters


def _support_paths(job_id: dict[str, Any]) -> dict[str, Any]:
    """The support role's routes: every one is 401 without a token, 403 for a front end."""
    denied = {"401": _problem("No or unknown token."), "403": _problem("Not a support client.")}
    unreadable = {
        "400": _problem("Malformed JSON."),
        "413": _problem("Body too large."),
        "415": _problem("Not JSON."),
        "422": _problem("Invalid fields, listed in `errors`."),
    }
    delivery_id = {
        "name": "delivery_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }

    def action(
        model: type[BaseModel], operation_id: str, summary: str, answer: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "post": {
                "operationId": operation_id,
                "tags": ["support"],
                "summary": summary,
                "requestBody": {"required": True, "content": _json(model)},
                "responses": {
                    **answer,
                    "404": _problem("No such job or delivery."),
                    "409": _problem("Refused: see `detail`."),
                    **unreadable,
                    **denied,
                },
            }
        }

    def read(
        operation_id: str, summary: str, parameters: list[dict[str, Any]], ok: dict[str, Any]
    ) -> dict[str, Any]:
        bad = {"404": _problem("Not found."), "422": _problem("Invalid parameters.")}
        return {
            "get": {
                "operationId": operation_id,
                "tags": ["support"],
                "summary": summary,
                "parameters": parameters,
                "responses": {"200": ok, **bad, **denied},
            }
        }

    listed = {"description": "One page, newest first.", "content": _json(JobListOut)}
    return {
        "/v1/jobs": read(
            "list_jobs", "List jobs (audited)", _query_parameters(JobPageQuery), listed
        ),
        "/v1/jobs/search": {
            "post": {
                "operationId": "search_jobs",
                "tags": ["support"],
                "summary": "Search jobs by MRN or appointment id, sent in the body (audited)",
                "requestBody": {"required": True, "content": _json(JobSearchRequest)},
                "responses": {
                    "200": listed,
                    **unreadable,
                    **denied,
                },
            }
        },
        "/v1/jobs.csv": read(
            "export_jobs_csv",
            "Export jobs as CSV: ids, statuses, times, no PHI (audited)",
            [p for p in _query_parameters(JobPageQuery) if p["name"] not in ("limit", "cursor")],
            {
                "description": "Streamed CSV.",
                "content": {"text/csv": {"schema": {"type": "string"}}},
            },
        ),
        "/v1/jobs/{job_id}/events": read(
            "get_job_events",
            "A job's timeline and webhook deliveries (audited)",
            [job_id],
            {"description": "In order.", "content": _json(TimelineOut)},
        ),
        "/v1/jobs/{job_id}/retry": {
            **action(
                RetryRequest,
                "retry_job",
                "Resubmit a failed job as a new job",
                {
                    "202": {
                        "description": "The new job (`retry_of` links it).",
                        "headers": {"Location": _header("Location")},
                        "content": _json(SupportJobOut),
                    }
                },
            ),
            "parameters": [job_id],
        },
        "/v1/jobs/{job_id}/chart-outcome": {
            **action(
                ChartOutcomeRequest,
                "record_chart_outcome",
                "Settle a processing job from what support saw in the chart: found → "
                "completed, not found → failed as `not_in_chart` (then retryable). 409 unless "
                "the job is processing and past its expected time",
                {"200": {"description": "The settled job.", "content": _json(SupportJobOut)}},
            ),
            "parameters": [job_id],
        },
        "/v1/jobs/{job_id}/reconcile": {
            **action(
                StaffAction,
                "reconcile_job",
                "Look the job up in Cobalt's log now and apply what is found",
                {
                    "200": {
                        "description": "The job, and what the lookup found (`lookup`).",
                        "content": _json(ReconcileOut),
                    },
                    "502": _problem("Cobalt's log could not be read."),
                },
            ),
            "parameters": [job_id],
        },
        "/v1/deliveries/{delivery_id}": read(
            "get_delivery",
            "A stored webhook delivery with its raw body (audited)",
            [delivery_id],
            {"description": "The delivery.", "content": _json(DeliveryBodyOut)},
        ),
        "/v1/deliveries/{delivery_id}/replay": {
            **action(
                ReplayRequest,
                "replay_delivery",
                "Apply a stored delivery again with today's code (dry run by default)",
                {"200": {"description": "What changed, or would.", "content": _json(ReplayOut)}},
            ),
            "parameters": [delivery_id],
        },
        "/v1/inbox": read(
            "get_inbox",
            "Deliveries that need a person: parked, failed, unknown type, conflict; and, on the "
            "first page, jobs with `attention`",
            _query_parameters(InboxQuery),
            {"description": "One page, newest first.", "content": _json(InboxOut)},
        ),
    }
