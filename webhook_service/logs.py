"""JSON-lines logging to stdout. Log ids, statuses and timings; never PHI."""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pythonjsonlogger.json import JsonFormatter
from werkzeug.wsgi import get_path_info

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

_configured = False


def configure_logging(level: str) -> None:
    """Send every logger's records to stdout as one JSON object per line."""
    global _configured
    root = logging.getLogger()
    root.setLevel(level)
    if _configured:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter(
            # `pid`: which of a formation's processes wrote the line.
            "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            rename_fields={
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "process": "pid",
            },
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    )
    root.handlers[:] = [handler]
    # SQLAlchemy at INFO would echo bound parameters, which can be PHI.
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    _configured = True


def log_failure(logger: logging.Logger, message: str, exc: BaseException, **extra: Any) -> None:
    """Log an unexpected error by type and location only.

    Exception messages can quote PHI (a driver error echoes its bound parameters), so the
    message is left out; the frames say where it happened.
    """
    frames = "".join(traceback.format_tb(exc.__traceback__))
    logger.error(message, extra={"error_type": type(exc).__name__, "at": frames, **extra})


class RequestLog:
    """WSGI middleware: every request gets an id, echoed as `X-Request-ID`, and one log line.

    The id is the caller's `X-Request-ID` (up to 100 characters) or a new random one. The
    line has the id, method, path (never the query string: search terms can be PHI),
    status and duration. Wrapping the WSGI app, not Flask's request hooks, covers every
    answer (routing 404s and 500s included) and costs a poll no request-context lookups.
    """

    def __init__(self, app: WSGIApplication, logger: logging.Logger) -> None:
        self.app = app
        self.log = logger

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if 0 < len(incoming) <= 100 else os.urandom(16).hex()

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.append(("X-Request-ID", request_id))
            if self.log.isEnabledFor(logging.INFO):
                self.log.info(
                    "request",
                    extra={
                        "request_id": request_id,
                        "method": environ.get("REQUEST_METHOD"),
                        "path": get_path_info(environ),  # as Flask's `request.path`
                        "status": int(status[:3]),
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    },
                )
            return start_response(status, headers, exc_info)

        return self.app(environ, start)
