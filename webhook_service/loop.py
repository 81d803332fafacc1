"""The worker's threads' loop, written once: do a step, and pause when there was nothing to do
or when the database cannot be reached (longer each time, up to a cap)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from webhook_service.db import connection_trouble
from webhook_service.logs import log_failure

# The longest pause of a worker thread that cannot get a database connection: a full server
# should not be knocked on by every thread every second, nor left alone once it has room.
DATABASE_BACKOFF_CAP = 10.0


def run_steps(
    step: Callable[[], bool],
    idle: Callable[[], object],
    stop: threading.Event,
    *,
    first_backoff: float,
    log: logging.Logger,
) -> None:
    """Call `step` until `stop` is set; after a step that found nothing to do, `idle()` (which
    waits). A step that fails is logged and the loop goes on; one that found no connection
    (a full server, an outage) pauses from `first_backoff` doubling to DATABASE_BACKOFF_CAP."""
    backoff = 0.0
    while not stop.is_set():
        try:
            busy = step()
            backoff = 0.0
        except Exception as exc:
            busy = False
            trouble = connection_trouble(exc)
            if trouble is None:
                log_failure(log, "worker step failed", exc)
            else:
                backoff = min(max(backoff * 2, first_backoff), DATABASE_BACKOFF_CAP)
                log.warning(trouble, extra={"retry_in_seconds": backoff})
                stop.wait(backoff)
                continue
        if not busy and not stop.is_set():
            idle()
