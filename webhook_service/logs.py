"""JSON-lines logging to stdout. Log ids, statuses and timings; never PHI."""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

from pythonjsonlogger.json import JsonFormatter

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
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
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
