"""What every sandbox view shares: the `Sandbox` behind the app, Cobalt's error reply, and a
request's JSON body however it was sent.
"""

from __future__ import annotations

from typing import Any, cast

from flask import Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from webhook_service.sandbox.simulator import Sandbox


def get_sandbox(app: Flask | None = None) -> Sandbox:
    """The `Sandbox` behind `app` (default: the current app)."""
    return cast(Sandbox, (app or current_app).extensions["sandbox"])


def _http_error(exc: HTTPException) -> ResponseReturnValue:
    return fail(exc.code or 500, exc.description or exc.name)


def fail(status: int, message: str) -> ResponseReturnValue:
    return jsonify({"success": False, "message": message}), status


def _json_body() -> Any:
    # Cobalt's clients do not all send a JSON content type; parse whatever came.
    return request.get_json(force=True, silent=True)
