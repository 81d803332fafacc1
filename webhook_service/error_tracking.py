"""Optional error tracking with Sentry (`SENTRY_DSN`): errors by type and place, never PHI.

Off without a DSN. With one, each process (web, worker, CLI) sends an event for each error
`log_failure` logs (a request's unexpected error, a failed worker step), scrubbed by
`scrub_event` first: no request body, query string, cookies or headers beyond a short
allow-list, no exception messages (a driver error quotes its bound parameters), no local
variables, no breadcrumb data. What is left says what failed, where, on which route.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import sentry_sdk
from sentry_sdk.integrations.flask import FlaskIntegration
from sentry_sdk.integrations.logging import LoggingIntegration

if TYPE_CHECKING:
    from sentry_sdk.types import Breadcrumb, BreadcrumbHint, Event, Hint

    from webhook_service.settings import Settings

# Request headers an event may keep: none of them carries PHI or a credential.
SAFE_HEADERS = frozenset({"content-type", "content-length", "user-agent", "x-request-id"})
OMITTED = "[omitted]"


def init_error_tracking(settings: Settings, process: str) -> bool:
    """Start Sentry for this process when `SENTRY_DSN` is set; say whether it was."""
    if not settings.sentry_dsn:
        return False
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.environment,
        server_name=process,  # not the host name: which kind of process, like the logs' pid
        integrations=[
            FlaskIntegration(),
            # Log lines become breadcrumbs (scrubbed), never events: `log_failure` sends
            # the events, once each, with the exception itself.
            LoggingIntegration(level=logging.INFO, event_level=None),
        ],
        # What integrations collect, before `scrub_event` sees it (this SDK's successor to
        # `send_default_pii=False`): no user, cookies, bodies, query strings, SQL parameters
        # or local variables; only the allow-listed headers.
        data_collection={
            "user_info": False,
            "cookies": {"mode": "off"},
            "http_headers": {"request": {"mode": "allowlist", "terms": sorted(SAFE_HEADERS)}},
            "http_bodies": [],
            "url_query_params": {"mode": "off"},
            "database_query_data": False,
            "queues": False,
            "stack_frame_variables": False,
        },
        include_local_variables=False,
        max_request_body_size="never",
        traces_sample_rate=None,  # errors only: no performance data leaves the service
        before_send=scrub_event,
        before_breadcrumb=scrub_breadcrumb,
    )
    return True


def capture(exc: BaseException) -> None:
    """Send `exc` to Sentry when it is on (a no-op otherwise)."""
    if sentry_sdk.is_initialized():
        sentry_sdk.capture_exception(exc)


def scrub_event(event: Event, _hint: Hint) -> Event:
    """Remove everything that may be PHI from an event about to be sent."""
    request = event.get("request")
    if request is not None:
        headers = request.get("headers")
        event["request"] = {
            "method": request.get("method"),
            "url": _without_query(request.get("url")),
            "headers": {
                k: v
                for k, v in (headers.items() if isinstance(headers, dict) else ())
                if k.lower() in SAFE_HEADERS
            },
        }
    for exception in (event.get("exception") or {}).get("values") or []:
        exception["value"] = OMITTED
        _scrub_frames(exception.get("stacktrace"))
    for thread in (event.get("threads") or {}).get("values") or []:
        _scrub_frames(thread.get("stacktrace"))
    logentry = event.get("logentry")
    if logentry is not None:
        event["logentry"] = {"message": logentry.get("message"), "params": []}
    event.pop("extra", None)
    event.pop("user", None)
    crumbs = event.get("breadcrumbs")
    for crumb in crumbs.get("values") or [] if isinstance(crumbs, dict) else []:
        scrub_breadcrumb(crumb, {})
    return event


def scrub_breadcrumb(crumb: Breadcrumb, _hint: BreadcrumbHint) -> Breadcrumb:
    """A breadcrumb keeps its category, level, time and our log message; no data (a log
    line's extra fields, a Cobalt call's URL and query)."""
    crumb.pop("data", None)
    if not str(crumb.get("category") or "").startswith("webhook_service"):
        crumb.pop("message", None)  # only our own log messages are known to be PHI-free
    return crumb


def _scrub_frames(stacktrace: dict[str, Any] | None) -> None:
    for frame in (stacktrace or {}).get("frames") or []:
        frame.pop("vars", None)


def _without_query(url: object) -> str | None:
    if not isinstance(url, str):
        return None
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
