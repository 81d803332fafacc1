"""Settings for the Cobalt sandbox: credentials, timings and fault knobs.

Every field has a default, so `create_sandbox_app()` runs with no arguments; tests shrink the
timings, and the `sandbox` CLI maps its options onto these fields.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_CLIENT_ID = "ci_test_sandbox"
DEFAULT_CLIENT_SECRET = "cs_test_sandbox"  # noqa: S105 - a published sandbox credential
DEFAULT_ACCESS_TOKEN = "sandbox-access-token"  # noqa: S105 - a published sandbox credential
DEFAULT_ACCESS_TOKEN_REFERENCE_ID = "atr_sandbox_clinic"  # noqa: S105 - an id, not a secret

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
NoteSuccessEvent = Literal["note.created", "note.uploaded"]


class AccessTokenConfig(BaseModel):
    """One linked EMR login (one clinic) and the reference id its webhooks carry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    access_token: str = Field(min_length=1)
    access_token_reference_id: str = Field(min_length=1)
    practice_name: str = "Sandbox Family Medicine"
    expired: bool = False
    unsupported_emr: bool = False
    """Cobalt cannot write telephone encounters into this clinic's EMR: each is refused
    at once with "Unsupported EMR" (422). Notes still work."""


def _default_access_tokens() -> list[AccessTokenConfig]:
    return [
        AccessTokenConfig(
            access_token=DEFAULT_ACCESS_TOKEN,
            access_token_reference_id=DEFAULT_ACCESS_TOKEN_REFERENCE_ID,
        )
    ]


class FaultSettings(BaseModel):
    """Ways the sandbox misbehaves on purpose, each a probability per submission or event.

    All draws come from one RNG seeded with `seed`, so a run with a fixed seed and one
    client thread misbehaves the same way every time.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    duplicate_rate: Rate = 0.0
    """Deliver an event a second time (same webhook-id, `webhook-attempt: 2`)."""
    drop_rate: Rate = 0.0
    """Never deliver an event; it is still listed by GET /v1/webhook-events as `failed`."""
    reorder_rate: Rate = 0.0
    """Hold an event back `delay_seconds` after it was created, so later ones overtake it."""
    delay_seconds: float = Field(default=3.0, ge=0.0)
    submit_error_rate: Rate = 0.0
    """Answer a submission with a 500 carrying Cobalt's own JSON error body, and do not
    accept it (no job, no outcome): the one 5xx a client may safely resend after."""
    submit_hang_rate: Rate = 0.0
    """Accept a submission (it produces an outcome) but answer only after `hang_seconds`."""
    hang_seconds: float = Field(default=30.0, ge=0.0)
    gateway_error_rate: Rate = 0.0
    """Answer a submission as a gateway in front of Cobalt would (`gateway_status`, an HTML
    body, no Cobalt JSON), without accepting it: nothing is created."""
    gateway_error_after_queue_rate: Rate = 0.0
    """Accept a submission (it is created and its webhook sent later, as usual) but answer
    it as a gateway would (`gateway_status`, HTML): the case a client must not resend."""
    gateway_status: Literal[502, 504] = 502
    success_false_rate: Rate = 0.0
    """Answer a submission 200 with `{"success": false, "message": ...}` and accept nothing."""
    sync_medication_not_found_rate: Rate = 0.0
    """Refuse an encounter whose refill matches none of the patient's refillable medications
    at once (404, listing `available_medications`) instead of failing it by webhook."""
    foreign_event_rate: Rate = 0.0
    """With an accepted note, also emit an `appointment.failed` carrying the same
    `data.appointment_id` (another Cobalt operation on the appointment), at once: delivered
    to every webhook and listed by GET /v1/webhook-events like any event."""
    reference_lists: Literal["available", "unavailable", "unreadable"] = "available"
    """GET /v1/providers, /v1/locations and /v1/pharmacies: served from the pretend EMR;
    `unavailable`, answered 503 with Cobalt's error body; `unreadable`, answered 200 with no
    list in the body. Not a rate: the lists are either there or not."""
    seed: int | None = None


class SandboxConfig(BaseModel):
    """Everything that shapes one sandbox instance."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    client_id: str = Field(default=DEFAULT_CLIENT_ID, min_length=1)
    client_secret: str = Field(default=DEFAULT_CLIENT_SECRET, min_length=1)
    access_tokens: list[AccessTokenConfig] = Field(
        default_factory=_default_access_tokens, min_length=1
    )
    emr: str = "sandbox"

    processing_seconds: float = Field(default=2.0, ge=0.0)
    """Time between accepting a submission and producing its outcome (Cobalt: 5-90 s)."""
    notes_return_job_id: bool = False
    """Cobalt's documented notes reply has no job id; some docs say it has one."""
    note_success_event: NoteSuccessEvent = "note.created"

    webhook_url: str | None = None
    """Registered at start (and after every reset), so the service can know its secret."""
    webhook_secret: str | None = None
    secret_grace_seconds: float = Field(default=24 * 3600.0, ge=0.0)
    """How long a rotated-out secret is still reported as valid."""

    first_attempt_timeout: float = Field(default=5.0, gt=0.0)
    retry_delay_seconds: float = Field(default=1.0, ge=0.0)
    retry_timeout: float = Field(default=2.0, gt=0.0)

    faults: FaultSettings = Field(default_factory=FaultSettings)
    today: date | None = None
    """The date seeded appointments are relative to; None means today (UTC) at start."""

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        if self.webhook_secret is not None and self.webhook_url is None:
            raise ValueError("webhook_secret needs webhook_url")
        tokens = [token.access_token for token in self.access_tokens]
        if len(set(tokens)) != len(tokens):
            raise ValueError("access tokens must be unique")
        return self
