"""webhook_service: the one place where the web app is wired together."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flask import Flask, Response, request, send_from_directory
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from webhook_service import phi
from webhook_service.db import connection_trouble, make_engine, make_session_factory
from webhook_service.error_tracking import init_error_tracking
from webhook_service.errors import PROBLEM_BASE, PayloadTooLarge, ServiceError, Unavailable
from webhook_service.http.poll_cache import PollCache
from webhook_service.http.slots import Slots, SlottedApp
from webhook_service.logs import RequestLog, configure_logging, log_failure
from webhook_service.settings import Settings
from webhook_service.wakeups import Wakeups

log = logging.getLogger("webhook_service.http")
STATIC = Path(__file__).parent / "static"  # the console's and the demo page's own files


def create_app(settings: Settings | None = None) -> Flask:
    """Create the web app: API, webhook receiver, health checks."""
    settings = settings or Settings()
    settings.require_web_secrets()
    phi.configure(settings.phi_keys())
    configure_logging(settings.log_level)
    init_error_tracking(settings, "web")
    # No app-wide /static: the only static files are the dev-only demo page's own.
    app = Flask(__name__, static_folder=None)
    app.config.update(
        SECRET_KEY=settings.secret_key or "development-only",
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        JSON_SORT_KEYS=False,
    )
    engine = make_engine(
        settings.effective_database_url,
        statement_timeout_ms=5_000,
        wait_seconds=2,
        pool_size=settings.database_pool_size,
        process_kind="web",
    )
    wakeups = Wakeups(engine)
    app.extensions["webhook_service"] = {
        "settings": settings,
        "engine": engine,
        "sessions": make_session_factory(engine),
        # Per-process caches (see auth.py and api.py): token digest → (client, expiry),
        # and the default clinic's id once it is known to exist.
        "auth_cache": {},
        "default_clinic_id": None,
        # Wakes this process's long polls and streams when a job changes (http/push.py).
        "wakeups": wakeups,
        # PostgreSQL: polls answered from memory while the listener vouches (http/poll_cache.py).
        "poll_cache": PollCache(wakeups) if engine.dialect.name == "postgresql" else None,
        "slots": Slots(settings.request_slots),
    }

    from webhook_service.http import (
        api,
        callbacks,
        console,
        health,
        metrics,
        push,
        reference,
        support,
        webhooks,
    )

    app.register_blueprint(api.bp)
    app.register_blueprint(push.bp)
    app.register_blueprint(callbacks.bp)
    app.register_blueprint(reference.bp)
    app.register_blueprint(support.bp)
    app.register_blueprint(console.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    if settings.environment == "development":
        # The try-it page: a front end in miniature, for local runs only.
        from webhook_service.http import demo

        app.register_blueprint(demo.bp)
    from webhook_service.http.auth import init_cors

    init_cors(app, settings.cors_allowed_origins)
    app.add_url_rule("/favicon.ico", "favicon", _favicon)
    _register_error_handlers(app)
    _add_security_headers(app, hsts=settings.environment == "production")
    slots = app.extensions["webhook_service"]["slots"]
    app.wsgi_app = RequestLog(SlottedApp(app.wsgi_app, slots), log)  # type: ignore[method-assign]
    return app


def _favicon() -> Response:
    """The icon tools and browsers ask for at the root whatever a page links (no 404)."""
    return send_from_directory(STATIC, "favicon.svg", mimetype="image/svg+xml", max_age=86_400)


# A year: browsers that have seen the service over https never try plain http on it again.
HSTS = "max-age=31536000"


def _add_security_headers(app: Flask, *, hsts: bool) -> None:
    """Every answer, problems included: no content sniffing; in production, https only."""

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        if hsts:
            response.headers["Strict-Transport-Security"] = HSTS
        return response


def problem_response(problem: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    from flask import json

    response = Response(
        json.dumps(problem), status=problem["status"], mimetype="application/problem+json"
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _register_error_handlers(app: Flask) -> None:
    from webhook_service.http import console

    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError) -> Response:
        return problem_response(exc.problem(), exc.headers())

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> BaseResponse:
        status = exc.code or 500
        if request.url_rule is None and request.path.startswith(f"{console.bp.url_prefix}/"):
            return console.unmatched_page(exc)  # people get a page, programs a problem
        if status == 413:
            limit = app.config["MAX_CONTENT_LENGTH"]
            return problem_response(
                PayloadTooLarge(f"The body is larger than {limit} bytes.").problem()
            )
        problem = {
            "type": PROBLEM_BASE + (exc.name or "error").lower().replace(" ", "-"),
            "title": exc.name,
            "status": status,
            "detail": exc.description or exc.name,
        }
        response = problem_response(problem)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> Response:
        # A bug. Flask's default would log the message, which can quote PHI.
        log_failure(log, "unhandled error", exc, path=request.path)
        return problem_response(
            {
                "type": PROBLEM_BASE + "internal-error",
                "title": "Internal error",
                "status": 500,
                "detail": "Something went wrong on our side; it has been logged.",
            }
        )

    @app.errorhandler(OperationalError)
    @app.errorhandler(DBAPIError)
    @app.errorhandler(PoolTimeout)
    def database_unavailable(exc: DBAPIError | PoolTimeout) -> Response:
        # Connection-level trouble, or no connection to be had: say 503 so clients (and
        # Cobalt) retry. Never log the driver's message, which can quote PHI in bound
        # parameters: say what happened in our own words.
        trouble = connection_trouble(exc)
        if trouble is not None:
            log.error(trouble)
        else:
            orig = exc.orig if isinstance(exc, DBAPIError) else exc
            log.error("database error", extra={"error_type": type(orig).__name__})
        return problem_response(
            Unavailable("The database is unavailable; try again shortly.").problem(),
            {"Retry-After": "1"},
        )
