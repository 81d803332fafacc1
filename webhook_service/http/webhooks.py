"""`POST /webhooks/cobalt`: verify → store → apply → answer 200 fast.

Cobalt waits 5 s and retries once, so this does one transaction and no outbound calls.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from flask import Blueprint, Response, current_app, jsonify, request

from webhook_service import services
from webhook_service.errors import NotConfigured, SignatureInvalid
from webhook_service.http.context import read_body, sessions, settings, utcnow
from webhook_service.services.deliveries import KEPT_HEADERS
from webhook_service.signatures import verify_signature

bp = Blueprint("webhooks", __name__)
log = logging.getLogger(__name__)


@bp.post("/webhooks/cobalt")
def receive_cobalt_webhook() -> Response:
    """Store a signed Cobalt delivery, once, and apply it to its job."""
    secrets = settings().cobalt_webhook_secrets
    if not secrets:
        log.error("webhook refused: COBALT_WEBHOOK_SECRETS is not set")
        raise NotConfigured("No webhook signing secret is configured; deliveries are refused.")
    raw_body = read_body()
    match = verify_signature(raw_body, request.headers.get("cobalt-verification"), secrets)
    if match is None:
        extension = current_app.extensions["webhook_service"]
        rejected = extension.setdefault("rejected_signatures", RejectedBurst()).count(utcnow())
        if rejected:
            log.warning("webhook signatures rejected", extra={"rejected": rejected})
        raise SignatureInvalid(
            "The cobalt-verification header is missing or does not match any configured secret."
        )
    headers = {name: request.headers[name] for name in KEPT_HEADERS if name in request.headers}
    recorded = services.receive_webhook(
        sessions(), raw_body=raw_body, headers=headers, match=match, now=utcnow()
    )
    log.info(
        "webhook stored",
        extra={
            "delivery_id": recorded.delivery_id,
            "duplicate": recorded.duplicate,
            "state": recorded.state,
            "signature": match.describe(),
        },
    )
    return jsonify(received=True)


class RejectedBurst:
    """Rejected signatures, logged once per burst: the first at once, then at most one line
    per `every` saying how many were refused since the last, so a flood of forged deliveries
    costs one log line a minute per process, not one each."""

    def __init__(self, every: timedelta = timedelta(minutes=1)) -> None:
        self.every = every
        self._lock = threading.Lock()  # gunicorn's threads share it
        self._logged_at: datetime | None = None
        self._since = 0

    def count(self, now: datetime) -> int:
        """Count one rejection; answer how many to log now (0: stay quiet)."""
        with self._lock:
            self._since += 1
            if self._logged_at is not None and timedelta(0) <= now - self._logged_at < self.every:
                return 0
            rejected, self._since, self._logged_at = self._since, 0, now
            return rejected
