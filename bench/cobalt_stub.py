"""A constant-answer Cobalt stub for the worker bench (`python -m bench.cobalt_stub`): accepts
every submission after a fixed delay, answers lookups with nothing, so the worker's own cost
is what is measured. Loopback only; request bodies are never read or logged.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

REFERENCE_ID = "atr_bench_clinic"  # the seeded clinic's (bench.db.REFERENCE_ID)
_ids = itertools.count(1)
_ids_lock = threading.Lock()


def _next_id() -> int:
    with _ids_lock:
        return next(_ids)


class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as requests' pooled session expects
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm holds
    # the body until the client's delayed ACK (40 ms), which would be the stub's cost.
    disable_nagle_algorithm = True
    delay_seconds = 0.0

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        job_id = _next_id()
        if self.path.startswith("/v1/notes"):
            # Cobalt's documented notes reply carries no job id.
            self._send(200, {"success": True, "message": "Note upload in progress."})
        elif self.path.startswith("/v1/telephone-encounters"):
            self._send(
                200,
                {
                    "success": True,
                    "message": "Telephone encounter queued successfully",
                    "telephone_encounter_id": f"te_stub_{job_id}",
                    "job_id": job_id,
                },
            )
        else:
            self._send(404, {"success": False, "message": "not found"})

    def do_GET(self) -> None:
        if self.path.startswith("/v1/settings"):
            self._send(200, {"success": True, "access_token_reference_id": REFERENCE_ID})
        elif self.path.startswith("/v1/webhook-events"):
            self._send(200, {"success": True, "webhook_events": []})
        elif self.path == "/healthz":
            self._send(200, {"ok": True})
        else:
            self._send(404, {"success": False, "message": "not found"})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """No per-request log lines."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay before each reply")
    args = parser.parse_args()
    StubHandler.delay_seconds = args.delay_ms / 1000
    server = ThreadingHTTPServer(("127.0.0.1", args.port), StubHandler)
    server.daemon_threads = True

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
