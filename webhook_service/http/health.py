"""Liveness and readiness for the platform's health checks."""

from __future__ import annotations

import logging

from alembic.util import CommandError
from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from webhook_service import migrations
from webhook_service.db import connection_trouble
from webhook_service.errors import Unavailable
from webhook_service.http.auth import client_if_any
from webhook_service.http.context import sessions

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)

_head: str | None = None


def schema_head() -> str | None:
    """The newest migration this code was shipped with (read once per process)."""
    global _head
    if _head is None:
        _head = migrations.schema_head()
    return _head


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    """The database answers and its schema is the one this code expects.

    Anyone gets ready or 503; which schema, and why not ready, only a support token gets
    (the schema revision tells an outsider which release, and so which weaknesses, runs).
    """
    try:
        return _readiness()
    except Unavailable as exc:
        if _for_support():
            raise
        raise Unavailable("Not ready.") from exc


def _for_support() -> bool:
    client = client_if_any()
    return client is not None and client.role == "support"


def _readiness() -> Response:
    with sessions()() as session:
        try:
            current = session.scalar(text("SELECT version_num FROM alembic_version"))
        except Exception as exc:
            log.error(connection_trouble(exc) or "readiness: the schema version cannot be read")
            raise Unavailable("The database is unreachable or not migrated.") from None
    try:
        head = schema_head()
    except (migrations.MigrationsMissing, CommandError) as exc:
        # Not ready either: this installation cannot tell which schema it needs. The log says
        # where it looked; the public answer does not.
        log.error("readiness: the schema cannot be checked: %s", exc)
        raise Unavailable(
            "The schema cannot be checked: this installation has no readable migration scripts."
        ) from None
    if current != head:
        raise Unavailable(f"The schema is at {current}, this code needs {head}: run migrations.")
    if _for_support():
        return jsonify(status="ready", schema=current)
    return jsonify(status="ready")
