"""A callback receiver beside the sandbox: what a front end's endpoint would be.

`POST /callbacks` takes a callback, verifies its signature with the official
`standardwebhooks` package against the secrets it was given, keeps it, and answers as told
(always 204, or failing a share of the time, hanging, or down for a while: the reliability
run's faults). `GET /callbacks/received` lists what it got; `PUT /callbacks/secrets` gives it
the secret(s) `PUT /v1/callback` showed; `PUT /callbacks/behaviour` sets its faults.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

receiver = Blueprint("callback_receiver", __name__, url_prefix="/callbacks")
MAX_KEPT = 10_000


@dataclass
class Received:
    """One callback as it arrived."""

    webhook_id: str
    received_at: str
    verified: bool
    # Which of the configured secrets verified it (index), if one did.
    verified_by: int | None
    answered: int
    event_type: str | None = None
    job_id: str | None = None
    job_status: str | None = None
    changed_at: str | None = None


@dataclass
class Behaviour:
    """How the receiver answers: the reliability run's faults, all off by default."""

    fail_rate: float = 0.0  # answer 500 this share of the time
    hang_rate: float = 0.0  # hold the request `hang_seconds` this share of the time, then 204
    hang_seconds: float = 30.0
    down_until: float = 0.0  # monotonic time before which every callback gets 503
    answers: list[int] = field(default_factory=list)  # then these statuses, one per callback


class CallbackReceiver:
    """What the receiver got and how it answers; safe across the server's threads."""

    def __init__(self, seed: int | None = None) -> None:
        self.lock = threading.Lock()
        self.secrets: list[str] = []
        self.received: list[Received] = []
        self.behaviour = Behaviour()
        self.random = random.Random(seed)

    def take(self, body: bytes, headers: dict[str, str]) -> tuple[int, float]:
        """Verify and keep one callback; return the status to answer and how long to hang."""
        with self.lock:
            verified_by = _verify(self.secrets, body, headers)
            status, hang = self._answer()
            event: dict[str, Any] = {}
            if verified_by is not None:
                event = json.loads(body)
            data = event.get("data") or {}
            self.received.append(
                Received(
                    webhook_id=headers.get("webhook-id", ""),
                    received_at=datetime.now(UTC).isoformat(),
                    verified=verified_by is not None,
                    verified_by=verified_by,
                    answered=status,
                    event_type=event.get("type"),
                    job_id=data.get("id"),
                    job_status=data.get("status"),
                    changed_at=event.get("timestamp"),
                )
            )
            del self.received[:-MAX_KEPT]
        return status, hang

    def _answer(self) -> tuple[int, float]:
        b = self.behaviour
        if b.answers:
            return b.answers.pop(0), 0.0
        if time.monotonic() < b.down_until:
            return 503, 0.0
        roll = self.random.random()
        if roll < b.fail_rate:
            return 500, 0.0
        if roll < b.fail_rate + b.hang_rate:
            return 204, b.hang_seconds
        return 204, 0.0


def _verify(secrets: list[str], body: bytes, headers: dict[str, str]) -> int | None:
    for index, secret in enumerate(secrets):
        try:
            Webhook(secret).verify(body, headers)
        except (WebhookVerificationError, ValueError):
            continue
        return index
    return None


def get_receiver() -> CallbackReceiver:
    return cast(CallbackReceiver, current_app.extensions["callback_receiver"])


@receiver.post("")
def take_callback() -> ResponseReturnValue:
    """A callback: verified, kept, answered as the behaviour says."""
    headers = {name.lower(): value for name, value in request.headers.items()}
    status, hang = get_receiver().take(request.get_data(), headers)
    if hang:
        time.sleep(hang)
    return Response(status=status) if status == 204 else (jsonify(error="sandbox fault"), status)


@receiver.get("/received")
def list_received() -> ResponseReturnValue:
    """Everything received, oldest first, with whether its signature verified."""
    kept = get_receiver()
    with kept.lock:
        return jsonify(received=[asdict(r) for r in kept.received])


@receiver.delete("/received")
def forget_received() -> ResponseReturnValue:
    kept = get_receiver()
    with kept.lock:
        kept.received.clear()
    return Response(status=204)


@receiver.put("/secrets")
def set_secrets() -> ResponseReturnValue:
    """The secrets to verify with: `{"secrets": ["whsec_…", …]}` (a rotation: both)."""
    body = request.get_json(force=True, silent=True) or {}
    secrets = body.get("secrets")
    if not isinstance(secrets, list) or not all(isinstance(s, str) for s in secrets):
        return jsonify(error='send {"secrets": ["whsec_…"]}'), 400
    kept = get_receiver()
    with kept.lock:
        kept.secrets = list(secrets)
    return Response(status=204)


@receiver.put("/behaviour")
def set_behaviour() -> ResponseReturnValue:
    """Faults: `fail_rate`, `hang_rate`, `hang_seconds`, `down_seconds`, `answers`."""
    body = request.get_json(force=True, silent=True) or {}
    try:
        behaviour = Behaviour(
            fail_rate=float(body.get("fail_rate", 0)),
            hang_rate=float(body.get("hang_rate", 0)),
            hang_seconds=float(body.get("hang_seconds", 30)),
            down_until=time.monotonic() + float(body.get("down_seconds", 0)),
            answers=[int(a) for a in body.get("answers", [])],
        )
    except (TypeError, ValueError):
        return jsonify(error="rates and seconds are numbers; answers a list of statuses"), 400
    kept = get_receiver()
    with kept.lock:
        kept.behaviour = behaviour
    return Response(status=204)
