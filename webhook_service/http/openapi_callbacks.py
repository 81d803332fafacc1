"""The OpenAPI description of callbacks: the front end's `/v1/callback` routes, support's
deliveries, and (as an OpenAPI 3.1 webhook) the signed POST a front end receives."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from webhook_service.callback_schemas import (
    CallbackDeliveryListOut,
    CallbackDeliveryOut,
    CallbackEndpointListOut,
    CallbackEvent,
    CallbackOut,
    CallbackRequest,
    ResendRequest,
)

REQUESTS: list[type[BaseModel]] = [CallbackRequest, ResendRequest]
MODELS: list[type[BaseModel]] = [
    *REQUESTS,
    CallbackOut,
    CallbackEvent,
    CallbackDeliveryOut,
    CallbackDeliveryListOut,
    CallbackEndpointListOut,
]
TAG = {
    "name": "callbacks",
    "description": "A front end's callback endpoint, and support's view of what was sent.",
}


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}


def _problem(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/Problem"}
    return {"description": description, "content": {"application/problem+json": {"schema": schema}}}


def paths() -> dict[str, Any]:
    """The callback routes, front end's and support's."""
    none = _problem("No callback is registered.")
    unreadable = {
        "400": _problem("Malformed JSON."),
        "415": _problem("Not JSON."),
        "422": _problem("Invalid fields, listed in `errors` (an unsafe URL names `url`)."),
    }
    endpoint = {"description": "The endpoint.", "content": _ref(CallbackOut)}

    def op(operation_id: str, summary: str, tag: str = "callbacks", **rest: Any) -> dict[str, Any]:
        return {"operationId": operation_id, "tags": [tag], "summary": summary, **rest}

    delivery_id = {
        "name": "delivery_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
    query = [
        {"name": "client", "in": "query", "schema": {"type": "string"}},
        {"name": "job_id", "in": "query", "schema": {"type": "string", "format": "uuid"}},
        {
            "name": "state",
            "in": "query",
            "schema": {"type": "string", "enum": ["pending", "delivered", "failed", "cancelled"]},
        },
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
        },
    ]
    return {
        "/v1/callback": {
            "put": op(
                "register_callback",
                "Register or change this client's callback URL",
                description="https, resolving to a public address (in production). A new "
                "endpoint answers 201 with its secret, shown this once; an existing one 200 "
                "without it. Registering again re-enables a disabled endpoint.",
                requestBody={"required": True, "content": _ref(CallbackRequest)},
                responses={"200": endpoint, "201": endpoint, **unreadable},
            ),
            "get": op(
                "read_callback",
                "This client's callback endpoint (never its secret)",
                responses={"200": endpoint, "404": none},
            ),
            "delete": op(
                "remove_callback",
                "Stop callbacks; pending deliveries are cancelled",
                responses={"204": {"description": "Removed."}, "404": none},
            ),
        },
        "/v1/callback/rotate-secret": {
            "post": op(
                "rotate_callback_secret",
                "A new signing secret (shown once); the old one signs alongside for 24 h",
                responses={"200": endpoint, "404": none},
            )
        },
        "/v1/callback/enable": {
            "post": op(
                "enable_callback",
                "Re-enable an endpoint disabled after failing for days",
                responses={"200": endpoint, "404": none},
            )
        },
        "/v1/callback-endpoints": {
            "get": op(
                "list_callback_endpoints",
                "Every front end's endpoint: state, failing since, pending",
                tag="support",
                responses={
                    "200": {"description": "Endpoints.", "content": _ref(CallbackEndpointListOut)}
                },
            )
        },
        "/v1/callback-deliveries": {
            "get": op(
                "list_callback_deliveries",
                "Callback deliveries, newest first",
                tag="support",
                parameters=query,
                responses={
                    "200": {"description": "Deliveries.", "content": _ref(CallbackDeliveryListOut)},
                    "422": _problem("Invalid parameters."),
                },
            )
        },
        "/v1/callback-deliveries/{delivery_id}": {
            "get": op(
                "read_callback_delivery",
                "One delivery and every attempt (audited)",
                tag="support",
                parameters=[delivery_id],
                responses={
                    "200": {"description": "The delivery.", "content": _ref(CallbackDeliveryOut)},
                    "404": _problem("No such delivery."),
                },
            )
        },
        "/v1/callback-deliveries/{delivery_id}/resend": {
            "post": op(
                "resend_callback_delivery",
                "Send a delivery again now (same webhook-id and body)",
                tag="support",
                parameters=[delivery_id],
                requestBody={"required": True, "content": _ref(ResendRequest)},
                responses={
                    "202": {"description": "Due now.", "content": _ref(CallbackDeliveryOut)},
                    "404": _problem("No such delivery."),
                    "409": _problem("Its endpoint is disabled or removed, or its body erased."),
                    **unreadable,
                },
            )
        },
    }


def webhooks() -> dict[str, Any]:
    """What a front end's endpoint receives: OpenAPI 3.1's `webhooks`."""

    def header(description: str) -> dict[str, Any]:
        return {
            "in": "header",
            "required": True,
            "schema": {"type": "string"},
            "description": description,
        }

    return {
        "job.updated": {
            "post": {
                "operationId": "job_updated_callback",
                "tags": ["callbacks"],
                "summary": "A job of this client changed",
                "description": "Signed per the Standard Webhooks specification: verify with "
                "any of its libraries (`standardwebhooks`) and the endpoint's secret. Retried "
                "on any answer but 2xx, with the same `webhook-id`, over about three days "
                "(5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, 24 h, 24 h after the first try); "
                "deduplicate by `webhook-id`. Changes of one job arrive in order.",
                "security": [],
                "parameters": [
                    {"name": "webhook-id", **header("The message id: the same on every retry.")},
                    {
                        "name": "webhook-timestamp",
                        **header("Unix seconds when this try was signed."),
                    },
                    {
                        "name": "webhook-signature",
                        **header(
                            "`v1,<base64 HMAC-SHA256 of id.timestamp.body>`; during a "
                            "rotation, one per secret, space-separated."
                        ),
                    },
                ],
                "requestBody": {"required": True, "content": _ref(CallbackEvent)},
                "responses": {
                    "200": {"description": "Any 2xx: received; anything else is retried."},
                    "400": {"description": "Not verified: retried like any failure."},
                },
            }
        }
    }
