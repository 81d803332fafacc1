"""Request and response models of callbacks (issue 20): the front end's endpoint, and the
deliveries and attempts support reads."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from webhook_service.schemas import StaffAction

EndpointState = Literal["enabled", "disabled"]


class CallbackRequest(BaseModel):
    """Body of `PUT /v1/callback`: where this client's job changes are POSTed."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(
        min_length=1,
        max_length=2000,
        description="An https URL resolving to a public address (in production).",
        examples=["https://frontend.example.com/hooks/emr-jobs"],
    )


class CallbackOut(BaseModel):
    """The client's callback endpoint. `secret` is shown once: when it is created and when
    it is rotated; every other answer leaves it null."""

    url: str
    state: EndpointState = Field(
        description="`disabled` after every attempt failed for days: PUT the URL again (or "
        "POST /v1/callback/enable) to re-enable it; pending deliveries then resume."
    )
    secret: str | None = Field(
        default=None,
        description="`whsec_` + base64 of the signing key: keep it, it is not shown again.",
    )
    previous_secret_expires_at: datetime | None = Field(
        default=None,
        description="After a rotation, the old secret signs alongside the new until then.",
    )
    failing_since: datetime | None = Field(
        default=None, description="Since when every attempt has failed, if they do."
    )
    disabled_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class CallbackEvent(BaseModel):
    """What a callback POSTs: one change of one of the client's jobs, signed per the
    Standard Webhooks specification (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    `data` is the job resource, as `GET /v1/jobs/{id}` returns it."""

    type: Literal["job.updated"]
    timestamp: datetime = Field(description="When the change happened.")
    data: dict[str, Any] = Field(description="The job resource (`JobOut`) after the change.")


class CallbackAttemptOut(BaseModel):
    at: datetime
    trigger: Literal["schedule", "resend"]
    url: str
    succeeded: bool
    status_code: int | None
    latency_ms: int | None
    error: str | None = Field(description="Why no answer counted, when none did.")
    response_excerpt: str | None = Field(description="The start of the receiver's answer.")


class CallbackDeliveryOut(BaseModel):
    """One change of one job to one endpoint, and every attempt to POST it."""

    id: int
    client: str = Field(description="The front-end client whose endpoint it is.")
    job_id: uuid.UUID
    change_seq: int
    webhook_id: str
    state: Literal["pending", "delivered", "failed", "cancelled"]
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None
    attempt_log: list[CallbackAttemptOut] = Field(default_factory=list)


class CallbackDeliveryListOut(BaseModel):
    deliveries: list[CallbackDeliveryOut]


class CallbackEndpointOut(BaseModel):
    """An endpoint as support sees it (never its secrets)."""

    client: str
    url: str
    state: Literal["enabled", "disabled", "removed"]
    failing_since: datetime | None
    disabled_at: datetime | None
    pending: int = Field(description="Deliveries still to be sent.")
    updated_at: datetime


class CallbackEndpointListOut(BaseModel):
    endpoints: list[CallbackEndpointOut]


class ResendRequest(StaffAction):
    """Body of `POST /v1/callback-deliveries/{id}/resend`: send it again now."""
