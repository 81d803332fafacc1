"""Bare baselines for the bench's ratios, served by gunicorn with the service's own config:
`constant`, `pk_read` (one primary-key read as JSON), `verify_write` (HMAC check, then one
transaction that inserts a row and updates another). No ORM, auth, validation or logging.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import uuid

from flask import Flask, Response, jsonify, request
from sqlalchemy import Engine, create_engine, text

ROWS = 10_000  # bench_items rows (see bench.db.create_baseline_tables)


@functools.cache
def _engine() -> Engine:
    """One pool per process, made lazily after gunicorn forks (same sizes as the service)."""
    url = os.environ["DATABASE_URL"]
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
    return create_engine(url, pool_size=5, max_overflow=5)


def _secrets() -> list[bytes]:
    raw = os.environ.get("COBALT_WEBHOOK_SECRETS", "")
    return [part.strip().encode() for part in raw.split(",") if part.strip()]


def _app(name: str) -> Flask:
    app = Flask(name)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(ok=True)

    return app


constant = _app("constant")


@constant.get("/")
def constant_view() -> Response:
    return jsonify(ok=True)


pk_read = _app("pk_read")


@pk_read.get("/items/<item_id>")
def pk_read_view(item_id: str) -> Response | tuple[Response, int]:
    try:
        key = uuid.UUID(item_id)
    except ValueError:
        return jsonify(error="not found"), 404
    with _engine().connect() as conn:
        row = conn.execute(
            text(
                "SELECT id, status, cobalt_job_id, outcome, created_at, updated_at "
                "FROM bench_items WHERE id = :id"
            ),
            {"id": key},
        ).one_or_none()
    if row is None:
        return jsonify(error="not found"), 404
    return jsonify(
        id=str(row.id),
        status=row.status,
        cobalt_job_id=row.cobalt_job_id,
        outcome=row.outcome,
        created_at=row.created_at.isoformat(),
        updated_at=row.updated_at.isoformat(),
    )


verify_write = _app("verify_write")


@verify_write.post("/write")
def verify_write_view() -> Response | tuple[Response, int]:
    body = request.get_data(cache=False)
    signature = request.headers.get("cobalt-verification", "")
    if not any(
        hmac.compare_digest(hmac.new(secret, body, hashlib.sha256).hexdigest(), signature)
        for secret in _secrets()
    ):
        return jsonify(error="bad signature"), 401
    try:
        payload = json.loads(body)
    except ValueError:
        return jsonify(error="bad json"), 400
    # The row to update: the number in the payload's job id ("cj_123"), or a hash of the
    # body, folded onto the small table.
    digits = "".join(ch for ch in str(payload.get("job_id") or "") if ch.isdigit())
    number = int(digits) if digits else int(hashlib.sha256(body).hexdigest()[:8], 16)
    key = request.headers.get("webhook-id") or hashlib.sha256(body).hexdigest()
    with _engine().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO bench_deliveries (dedup_key, raw_body, received_at) "
                "VALUES (:key, :body, now()) ON CONFLICT (dedup_key) DO NOTHING"
            ),
            {"key": key, "body": body},
        )
        conn.execute(
            text("UPDATE bench_items SET hits = hits + 1, updated_at = now() WHERE n = :n"),
            {"n": number % ROWS + 1},
        )
    return jsonify(received=True)
