"""`POST /webhooks/cobalt`: verify → store → apply → answer 200 fast.

Cobalt waits 5 s and retries once, so this does one transaction and no outbound calls.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request

from webhook_service import services
from webhook_service.errors import NotConfigured, SignatureInvalid
from webhook_service.services.webhooks import KEPT_HEADERS
from webhook_service.signatures import verify_signature
from webhook_service.web import read_body, sessions, settings, utcnow

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
        log.warning("webhook signature rejected", extra={"bytes": len(raw_body)})
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
