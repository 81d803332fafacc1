"""The OpenAPI description of the push routes (http/push.py): the long poll's headers and
the two event streams. Merged into the document by `openapi.build_spec`."""

from __future__ import annotations

from typing import Any

PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "examples": ["wait=25"]},
    "description": "`wait=<seconds>` (RFC 7240) with `If-None-Match`: the long poll. The "
    "answer is held while the job's ETag is the one sent, up to 1-25 s (more is taken as 25), "
    "and comes at once when the job changes (200), else at the end (304).",
}
PREFERENCE_APPLIED = {
    "description": "`wait=<seconds>`: the wait honoured, when the poll was a long poll.",
    "schema": {"type": "string"},
}
LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 100},
    "description": "The `id` of the last event seen: the stream resumes after it, "
    "missing nothing (EventSource sends it by itself when it reconnects).",
}
_EVENTS = {
    "text/event-stream": {
        # Each event (OpenAPI 3.2's `itemSchema` says it per event; validators read it so).
        "schema": {
            "type": "object",
            "description": "Server-sent events: `event: job`, `id: …`, `data:` the job "
            "resource (JobOut) as one line of JSON; comment lines (`: …`) keep it open.",
            "properties": {
                "event": {"type": "string", "enum": ["job"]},
                "id": {"type": "string"},
                "data": {"type": "string", "contentMediaType": "application/json"},
                "retry": {"type": "integer", "minimum": 0},
            },
        }
    }
}


def push_paths(job_id: dict[str, Any], problem: Any) -> dict[str, Any]:
    """The two stream routes; `problem(description)` is openapi's problem answer."""
    return {
        "/v1/jobs/{job_id}/stream": {
            "get": {
                "operationId": "stream_job",
                "tags": ["submissions"],
                "summary": "Follow a job as server-sent events",
                "description": "The job at once (`id:` its ETag), then each change of its "
                "status, outcome, attention or retry; the stream ends after a terminal status.",
                "parameters": [job_id, LAST_EVENT_ID],
                "responses": {
                    "200": {"description": "The job's events.", "content": _EVENTS},
                    "404": problem("No such job."),
                },
            }
        },
        "/v1/stream": {
            "get": {
                "operationId": "stream_jobs",
                "tags": ["submissions"],
                "summary": "Follow every job of the calling front end as server-sent events",
                "description": "Each change of any of the caller's jobs (`id:` its position "
                "in the record of changes), in order per job.",
                "parameters": [LAST_EVENT_ID],
                "responses": {"200": {"description": "The jobs' events.", "content": _EVENTS}},
            }
        },
    }
