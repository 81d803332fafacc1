"""Service errors: raised below HTTP, each knowing its status and problem type.

One handler in `api.py` turns them into `application/problem+json`; nothing else catches them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROBLEM_BASE = "https://webhook-service.dev/problems/"


@dataclass
class FieldError:
    field: str
    message: str


class ServiceError(Exception):
    status = 400
    slug = "bad-request"
    title = "Bad request"

    def __init__(self, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []

    def headers(self) -> dict[str, str]:
        """Extra response headers this error needs (e.g. WWW-Authenticate, Retry-After)."""
        return {}

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = [{"field": e.field, "message": e.message} for e in self.errors]
        return body


class MalformedJSON(ServiceError):
    status, slug, title = 400, "malformed-json", "Malformed JSON"


class ValidationFailed(ServiceError):
    status, slug, title = 422, "validation-failed", "Validation failed"


class IdempotencyKeyReused(ServiceError):
    status, slug, title = 422, "idempotency-key-reused", "Idempotency key reused"


class NotFound(ServiceError):
    status, slug, title = 404, "not-found", "Not found"


class PayloadTooLarge(ServiceError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(ServiceError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class SignatureInvalid(ServiceError):
    status, slug, title = 401, "signature-invalid", "Webhook signature invalid"


class Unavailable(ServiceError):
    status, slug, title = 503, "unavailable", "Service unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class NotConfigured(Unavailable):
    slug, title = "not-configured", "Not configured"


class Conflict(ServiceError):
    status, slug, title = 409, "conflict", "Conflict"


class UpstreamFailed(ServiceError):
    status, slug, title = 502, "upstream-failed", "Cobalt could not be reached"


class RateLimited(ServiceError):
    status, slug, title = 429, "rate-limited", "Too many requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class BacklogFull(Unavailable):
    slug, title = "backlog-full", "Too many jobs waiting"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}
