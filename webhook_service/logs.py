"""JSON-lines logging to stdout, one shape for every process. Log ids, statuses and timings;
never PHI.

Every process (gunicorn's master and workers, the app, the worker, the CLI and its release
command, alembic during a migration, the sandbox) writes the same object per line: `time`
(UTC, milliseconds, `Z`), `level`, `logger`, `pid`, `message`, then the record's `extra`
fields. Everything goes to stdout, so one stream keeps the order; a line something else
writes to stderr (gunicorn's own prints, Python's warnings) is turned into such an object.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pythonjsonlogger.json import JsonFormatter
from werkzeug.wsgi import get_path_info

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

# The keys every line has, in this order (tests check every process's lines against them).
REQUIRED_KEYS = ("time", "level", "logger", "pid", "message")

_configured = False


class JsonLineFormatter(JsonFormatter):
    """The one log format: a JSON object per line with `REQUIRED_KEYS` and the extras.

    An exception is logged by type and frames only (`error_type`, `at`): its message can
    quote PHI (a driver error echoes its bound parameters).
    """

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            rename_fields={
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "process": "pid",  # which of a formation's processes wrote the line
            },
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"

    def formatException(self, ei: Any) -> str:
        return ""  # `add_fields` says what may be said of it

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data.pop("exc_info", None)
        log_data.pop("exc_text", None)
        if record.exc_info and record.exc_info[1] is not None:
            log_data.update(describe_error(record.exc_info[1]))


def describe_error(exc: BaseException) -> dict[str, str]:
    """An exception as it may be logged: its type and where it happened, never its message."""
    return {
        "error_type": type(exc).__name__,
        "at": "".join(traceback.format_tb(exc.__traceback__)),
    }


def log_line(level: int, logger: str, message: str) -> str:
    """One line in the log format, made without a configured logger (a command that stops
    before it has one)."""
    record = logging.LogRecord(logger, level, "", 0, message, None, None)
    return JsonLineFormatter().format(record)


def json_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLineFormatter())
    return handler


def configure_logging(level: str) -> None:
    """Send every logger's records to stdout as one JSON object per line."""
    global _configured
    root = logging.getLogger()
    root.setLevel(level)
    if _configured:
        return
    root.handlers[:] = [json_handler()]
    # SQLAlchemy at INFO would echo bound parameters, which can be PHI.
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    _configured = True


def gunicorn_logconfig(level: str) -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: its own lines (booting, a worker exiting, a boot failure)
    in the one JSON shape on stdout, and no access log (it would carry query strings)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonLineFormatter}},
        "filters": {"no_query": {"()": DropQueryStrings}},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["no_query"],
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"level": level.upper(), "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["stdout"], "propagate": False},
            "gunicorn.access": {"handlers": [], "propagate": False},
        },
    }


class DropQueryStrings(logging.Filter):
    """gunicorn logs a failed request as "Error handling request /path?query": keep the path.
    A query string can hold PHI (support searches by MRN)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(arg, str) and "?" in arg for arg in record.args
        ):
            record.args = tuple(
                arg.split("?", 1)[0] if isinstance(arg, str) else arg for arg in record.args
            )
        return True


class _StrayOutput(io.TextIOBase):
    """Stands in for `sys.stderr`: each line written to it becomes a log record, so a line
    printed by code that does not log (gunicorn's "cannot import the app", a library's
    print) is still one JSON object."""

    def __init__(self, logger: logging.Logger, original: Any) -> None:
        self._log = logger
        self._original = original
        self._pending = ""
        self._lock = threading.RLock()
        self._writing = False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return int(self._original.fileno())

    def write(self, text: str) -> int:
        with self._lock:
            if self._writing:  # logging reporting its own failure: do not loop
                return len(text)
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            self._writing = True
            try:
                for line in lines:
                    if line.strip():
                        self._log.error(line.strip())
            finally:
                self._writing = False
        return len(text)

    def flush(self) -> None:
        with self._lock:
            line, self._pending = self._pending.strip(), ""
        if line:
            self.write(line + "\n")


def capture_stray_output() -> None:
    """Make stderr, Python's warnings and uncaught exceptions log lines like any other.

    For a process's entry point (gunicorn's config, the worker, the release, the sandbox):
    it replaces `sys.stderr` for the rest of the process."""
    if sys.stderr is sys.__stderr__:  # not already replaced (by this, or by a test runner)
        sys.stderr = _StrayOutput(logging.getLogger("stderr"), sys.stderr)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("uncaught").critical("uncaught exception", exc_info=(kind, exc, tb))
    _send_to_error_tracking(exc)


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        logging.getLogger("uncaught").critical(
            "uncaught exception in a thread",
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
            extra={"thread_name": args.thread.name if args.thread else None},
        )
        _send_to_error_tracking(args.exc_value)


def log_failure(logger: logging.Logger, message: str, exc: BaseException, **extra: Any) -> None:
    """Log an unexpected error by type and location only.

    Exception messages can quote PHI (a driver error echoes its bound parameters), so the
    message is left out; the frames say where it happened.
    """
    logger.error(message, extra={**describe_error(exc), **extra})
    _send_to_error_tracking(exc)


def _send_to_error_tracking(exc: BaseException) -> None:
    from webhook_service.error_tracking import capture  # sentry_sdk: only once it is needed

    capture(exc)


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
