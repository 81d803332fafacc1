"""Liveness and readiness for the platform's health checks."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from webhook_service.errors import Unavailable
from webhook_service.web import sessions

bp = Blueprint("health", __name__)

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_head: str | None = None


def schema_head() -> str | None:
    """The newest migration this code was shipped with."""
    global _head
    if _head is None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        _head = ScriptDirectory.from_config(config).get_current_head()
    return _head


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    """The database answers and its schema is the one this code expects."""
    with sessions()() as session:
        try:
            current = session.scalar(text("SELECT version_num FROM alembic_version"))
        except Exception:
            raise Unavailable("The database is unreachable or not migrated.") from None
    head = schema_head()
    if current != head:
        raise Unavailable(f"The schema is at {current}, this code needs {head}: run migrations.")
    return jsonify(status="ready", schema=current)
