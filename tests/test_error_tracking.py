"""Optional error tracking: with SENTRY_DSN set, an unexpected error reaches Sentry, and the
event holds no PHI (no body, query string, cookies, headers beyond an allow-list, exception
message, local variables or log-line data). The Sentry endpoint is a real HTTP server on
loopback: the SDK sends its envelopes there exactly as it would to sentry.io."""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sentry_sdk
from flask import request

from tests.conftest import make_settings
from webhook_service.error_tracking import init_error_tracking
from webhook_service.http import create_app
from webhook_service.logs import log_failure

NOTE = "Canary note: Margaret Oduya reports chest pain after metformin"
MRN = "MRN-CANARY-77231"
NAME = "Margaret Oduya"
CANARIES = (NOTE, MRN, NAME, "metformin", "chest pain", "CANARY-77231", "Oduya")


class Receiver:
    """A stand-in for Sentry's ingest endpoint: keeps every envelope it is sent."""

    def __init__(self) -> None:
        self.envelopes: list[bytes] = []
        received = self.envelopes

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                received.append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.dsn = f"http://public@127.0.0.1:{self.server.server_address[1]}/1"

    def events(self) -> list[dict[str, Any]]:
        """The error events among the envelopes' items (each a JSON line after its header)."""
        found = []
        for envelope in self.envelopes:
            lines = envelope.split(b"\n")
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if json.loads(header).get("type") == "event":
                    found.append(json.loads(payload))
        return found

    def wait_for_event(self) -> dict[str, Any]:
        sentry_sdk.flush(timeout=5)
        deadline = time.monotonic() + 5
        while not self.events():
            assert time.monotonic() < deadline, "Sentry received no event"
            time.sleep(0.05)
        return self.events()[0]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)  # the next test starts with Sentry off
    receiver.server.shutdown()


def assert_no_phi(receiver: Receiver) -> None:
    raw = b"".join(receiver.envelopes).decode()
    for canary in CANARIES:
        assert canary not in raw, canary


def test_an_error_in_a_request_reaches_sentry_without_phi(
    receiver: Receiver, database_url: str
) -> None:
    app = create_app(make_settings(database_url, SENTRY_DSN=receiver.dsn))

    def chart() -> str:
        note = request.get_json()["note"]  # a local variable holding PHI
        patient = request.headers["X-Patient-Name"]
        logging.getLogger("webhook_service.api").info("charting", extra={"note": note})
        raise ValueError(f"could not chart {note} for {patient}")

    app.add_url_rule("/v1/chart", view_func=chart, methods=["POST"])
    response = app.test_client().post(
        f"/v1/chart?mrn={MRN}&name={NAME}",
        json={"note": NOTE, "patient_mrn": MRN},
        headers={
            "X-Patient-Name": NAME,
            "Cookie": f"session={MRN}",
            "Authorization": f"Bearer {MRN}",
            "X-Request-ID": "req-1",
        },
    )
    assert response.status_code == 500
    event = receiver.wait_for_event()
    assert event["exception"]["values"][-1]["type"] == "ValueError"
    assert event["request"]["url"].endswith("/v1/chart")
    assert event["request"]["headers"].get("X-Request-Id", "req-1") == "req-1"
    assert_no_phi(receiver)


def test_an_error_in_the_worker_reaches_sentry_without_phi(
    receiver: Receiver, database_url: str
) -> None:
    assert init_error_tracking(make_settings(database_url, SENTRY_DSN=receiver.dsn), "worker")
    log = logging.getLogger("webhook_service.worker")
    body = {"note": NOTE, "patient_mrn": MRN}  # a local variable holding PHI
    try:
        raise KeyError(f"{body['patient_mrn']} {body['note']}")
    except KeyError as exc:
        log_failure(log, "worker step failed", exc)  # what the worker's loop does
    event = receiver.wait_for_event()
    assert event["exception"]["values"][-1]["type"] == "KeyError"
    assert_no_phi(receiver)


def test_without_a_dsn_nothing_is_started(database_url: str) -> None:
    create_app(make_settings(database_url))
    assert not sentry_sdk.is_initialized()
