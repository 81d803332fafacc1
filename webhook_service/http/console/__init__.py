"""The support console at `/console`: server-rendered pages over the support services.

Staff sign in with a support token; the signed session cookie holds only the client id, which
is checked again on every request. Every POST carries a CSRF token; no page runs script.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Final
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Request, flash, g, redirect, request, session, url_for
from flask.sansio.blueprints import BlueprintSetupState
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask_wtf.csrf import (  # type: ignore[import-untyped]  # ships no type hints
    CSRFError,
    CSRFProtect,
)
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from webhook_service import services
from webhook_service.errors import RateLimited, ServiceError
from webhook_service.http.console.pages import page, staff
from webhook_service.http.context import request_transaction, settings, utcnow
from webhook_service.logs import log_failure
from webhook_service.services.console import active_support_client, end_console_sessions
from webhook_service.services.limits import count_sign_in, forget_sign_in_failures

log = logging.getLogger(__name__)
bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="../templates",
    static_folder="../static",
    static_url_path="/static",
)
csrf = CSRFProtect()

# The stylesheet is all a console page loads; forms post only to this origin.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
# A session ends this long after sign-in however active it is, so a lost laptop's cookie
# stops working by the next shift. Revoking the token ends it at once.
SESSION_LIFETIME: Final = timedelta(hours=12)
PUBLIC_ENDPOINTS: Final = {"console.login", "console.sign_in", "console.static"}


@bp.record_once
def _configure(state: BlueprintSetupState) -> None:
    """Cookie and CSRF settings: the console is the only part of the app that uses a session."""
    app = state.app
    development = app.extensions["webhook_service"]["settings"].environment == "development"
    app.config.update(
        SESSION_COOKIE_NAME="console_session",
        SESSION_COOKIE_PATH="/console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=not development,  # `make run` serves plain http
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        # Only console POSTs are checked (in `_guard`): /v1 and /webhooks use no cookies.
        WTF_CSRF_CHECK_DEFAULT=False,
        WTF_CSRF_TIME_LIMIT=None,  # valid as long as the session: a form left open still posts
    )
    assert isinstance(app, Flask)
    app.session_interface = ConsoleSessions()
    csrf.init_app(app)


class ConsoleSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie session, opened for console URLs only.

    Anywhere else (the API, webhooks, health checks) the session is Flask's null session:
    no cookie is read, verified or written there, which saves every poll and webhook the
    cost of setting up the cookie's signer. A write to it raises, so nothing can start to
    rely on a cookie outside the console by accident.
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not request.path.startswith(f"{bp.url_prefix}/") and request.path != bp.url_prefix:
            return self.make_null_session(app)
        return super().open_session(app, request)


# --- The check every request passes -----------------------------------------------------------


@bp.before_request
def _guard() -> Response | None:
    """Check CSRF on every POST, then who is signed in; send anyone else to sign in."""
    if request.endpoint == "console.static":
        return None
    if request.method == "POST":
        csrf.protect()  # raises CSRFError (400) before any view runs
    g.staff = _signed_in_staff()
    if g.staff is None and request.endpoint not in PUBLIC_ENDPOINTS:
        session.pop("client_id", None)
        back = request.full_path.rstrip("?") if request.method == "GET" else None
        return redirect(url_for("console.login", next=back), 303)
    return None


def _signed_in_staff() -> services.Staff | None:
    client_id, signed_in_at = session.get("client_id"), session.get("signed_in_at")
    generation = session.get("generation", 0)
    if not isinstance(client_id, int) or not isinstance(signed_in_at, int | float):
        return None
    if not isinstance(generation, int):
        return None
    if utcnow().timestamp() - signed_in_at > SESSION_LIFETIME.total_seconds():
        return None
    with request_transaction() as db:
        client = active_support_client(db, client_id, generation)
        if client is None:
            return None
        db.expunge(client)
    return services.Staff(name=client.name, client=client, via="console")


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    # same-origin, not no-referrer: CSRFProtect checks the Referer of HTTPS posts.
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"  # pages can carry PHI
    return response


# --- Sign in and out ----------------------------------------------------------------------------


@bp.get("/login")
def login() -> Response:
    """Show the sign-in form."""
    if g.staff is not None:
        return redirect(url_for("console.dashboard"))
    return page("login.html", next=_safe_next(request.args.get("next")))


@bp.post("/login")
def sign_in() -> Response:
    """Sign in with a support token; the session keeps the client id, never the token."""
    token = request.form.get("token", "").strip()
    back = _safe_next(request.form.get("next"))
    address = _address()
    try:
        with request_transaction() as db:
            limit = settings().sign_in_max_failures
            count_sign_in(db.connection(), address, limit=limit, now=utcnow())
            client = services.authenticate(db, token) if token else None
            client_id = client.id if client is not None and client.role == "support" else None
            generation = client.session_generation if client is not None else 0
            if client is not None and client_id is not None:
                signed_in = services.Staff(name=client.name, client=client, via="console")
                services.audit_staff(db, signed_in, "console.sign_in", utcnow())
                forget_sign_in_failures(db.connection(), address, utcnow())
    except RateLimited as refused:
        log.warning("console sign-in throttled")
        response = page("login.html", status=429, error=refused.detail, next=back)
        response.headers.update(refused.headers())
        return response
    if client_id is None:
        log.warning("console sign-in refused")
        message = "That token cannot sign in here: it is unknown, revoked, or not a support token."
        return page("login.html", status=401, error=message, next=back)
    session.clear()  # a fresh session, and a fresh CSRF token, for the signed-in person
    session["client_id"] = client_id
    session["signed_in_at"] = utcnow().timestamp()
    session["generation"] = generation
    return redirect(back or url_for("console.dashboard"), 303)


@bp.post("/logout")
def sign_out() -> Response:
    """Sign out: end the session server-side (a copy of the cookie stops working too)."""
    with request_transaction() as db:
        signed_out = staff()
        services.audit_staff(db, signed_out, "console.sign_out", utcnow())
        if signed_out.client is not None:
            end_console_sessions(db, signed_out.client.id)
    session.clear()
    flash("Signed out.")
    return redirect(url_for("console.login"), 303)


def _address() -> str:
    """The caller's address. Behind the platform's router (Heroku's appends the address it
    saw to `X-Forwarded-For`), the last entry is the caller's and the only one a caller
    cannot write; the ones before it may be forged."""
    forwarded = request.headers.get("X-Forwarded-For", "")
    last = forwarded.rsplit(",", 1)[-1].strip()
    return last[:100] or request.remote_addr or "unknown"


def _safe_next(value: str | None) -> str | None:
    """A console path to return to after sign-in; anything else (another site) is dropped."""
    if not value or "\\" in value:
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/console"):
        return None
    return value


# --- Errors: a page, never a stack trace or a JSON problem --------------------------------------


@bp.errorhandler(CSRFError)
def _csrf_failed(_exc: HTTPException) -> Response:
    message = (
        "This form had expired or did not come from this console, so nothing was done. "
        "Go back, reload the page and try again."
    )
    return page("error.html", status=400, title="Form expired", message=message)


@bp.errorhandler(ServiceError)
def _service_error(exc: ServiceError) -> Response:
    return page("error.html", status=exc.status, title=exc.title, message=exc.detail)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    message = exc.description or exc.name
    return page("error.html", status=exc.code or 500, title=exc.name, message=message)


def unmatched_page(exc: HTTPException) -> Response:
    """A page, not a JSON problem, for a /console URL that matches no route (the app's
    error handler calls this: routing failed before the blueprint was known)."""
    return _headers(_http_error(exc))


@bp.errorhandler(DBAPIError)
def _database_error(exc: DBAPIError) -> Response:
    # Never the message: its bound parameters can be PHI.
    log.error("database error", extra={"error_type": type(exc.orig).__name__})
    message = "The database is unavailable; try again in a moment."
    return page("error.html", status=503, title="Unavailable", message=message)


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log_failure(log, "unhandled error", exc, path=request.path)
    message = "Something went wrong on our side; it has been logged."
    return page("error.html", status=500, title="Internal error", message=message)


# The views register themselves on `bp`.
from webhook_service.http.console import callbacks, clinics, deliveries, jobs  # noqa: E402

__all__ = ["bp", "callbacks", "clinics", "deliveries", "jobs"]
