"""Webhook delivery as Cobalt does it, and the daemon threads the sandbox's background work runs on.

A 5xx, 429 or connection error gets exactly one retry; a timeout or any other 4xx ends the
delivery, because Cobalt never retries those. That is what makes slow receivers lose events.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import requests

from webhook_service.signatures import compute_signature

logger = logging.getLogger("webhook_service.sandbox")

AttemptError = Literal["timeout", "connection_error"]


@dataclass(frozen=True)
class RetryPolicy:
    first_timeout: float = 5.0
    retry_delay: float = 1.0
    retry_timeout: float = 2.0


@dataclass(frozen=True)
class AttemptResult:
    attempt: int
    status_code: int | None
    error: AttemptError | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        # A timeout is not retried: the receiver may have acted on it, and Cobalt does not.
        if self.error == "connection_error":
            return True
        return self.status_code is not None and (self.status_code >= 500 or self.status_code == 429)


def signed_headers(
    secret: str, body: bytes, message_id: str, timestamp: str, attempt: int
) -> dict[str, str]:
    """Cobalt's delivery headers; only the body is signed, never the timestamp."""
    return {
        "content-type": "application/json",
        "cobalt-verification": compute_signature(secret, body),
        "webhook-id": message_id,
        "webhook-timestamp": timestamp,
        "webhook-attempt": str(attempt),
    }


def post_once(url: str, body: bytes, headers: dict[str, str], timeout: float) -> AttemptResult:
    """POST once and classify the result; `attempt` is taken from the headers."""
    attempt = int(headers["webhook-attempt"])
    try:
        with requests.Session() as session:
            # Loopback receivers must not be sent through an HTTP(S)_PROXY from the environment.
            session.trust_env = False
            response = session.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            )
            response.close()
    except requests.Timeout:  # includes ConnectTimeout, which Cobalt also treats as a timeout
        return AttemptResult(attempt, None, "timeout")
    except requests.RequestException:
        return AttemptResult(attempt, None, "connection_error")
    return AttemptResult(attempt, response.status_code)


def deliver(
    *,
    url: str,
    body: bytes,
    message_id: str,
    timestamp: str,
    secret_for: Callable[[], str | None],
    policy: RetryPolicy,
    wait: Callable[[float], bool],
    on_attempt: Callable[[AttemptResult], None],
) -> bool:
    """Deliver one event to one URL with Cobalt's single retry; True when acknowledged.

    `secret_for` is asked before every attempt (None: the webhook was deleted, stop), and
    `wait` sleeps between attempts, returning False when the sandbox is shutting down.
    """

    def attempt(number: int, timeout: float) -> AttemptResult | None:
        secret = secret_for()
        if secret is None:
            return None
        result = post_once(
            url, body, signed_headers(secret, body, message_id, timestamp, number), timeout
        )
        on_attempt(result)
        return result

    first = attempt(1, policy.first_timeout)
    if first is None or first.ok or not first.retryable:
        return first is not None and first.ok
    if not wait(policy.retry_delay):
        return False
    second = attempt(2, policy.retry_timeout)
    return second is not None and second.ok


class TaskRunner:
    """Runs delayed callables on daemon threads, and can wait for or stop all of them.

    One thread per task keeps a hanging receiver from holding up other jobs, as at Cobalt.
    Daemon threads never keep the process alive; `drain` lets tests wait for quiet.
    """

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._active = 0

    def schedule(self, delay: float, task: Callable[[], None], name: str) -> bool:
        """Run `task` after `delay` seconds; False (and nothing runs) once stopped."""
        with self._idle:
            if self._stopping.is_set():
                return False
            self._active += 1
        thread = threading.Thread(target=self._run, args=(delay, task), name=name, daemon=True)
        thread.start()
        return True

    def _run(self, delay: float, task: Callable[[], None]) -> None:
        try:
            if self.wait(delay):
                task()
        except Exception:
            logger.exception("sandbox_task_crashed")
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; False when the runner is stopping (the caller gives up)."""
        if seconds > 0:
            return not self._stopping.wait(seconds)
        return not self._stopping.is_set()

    @property
    def active(self) -> int:
        with self._idle:
            return self._active

    def drain(self, timeout: float) -> bool:
        """Wait until no task is scheduled or running; True when idle within `timeout`."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Stop: cancel pending waits, refuse new tasks, wait for running ones to end."""
        self._stopping.set()
        return self.drain(timeout)
