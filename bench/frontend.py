"""A front end for the push-latency bench (bench/latency.py): HTTP requests over asyncio
streams, each timed to the moment its whole answer was read; a job stream read up to the
event carrying a terminal status; and a threaded receiver that records when each job's
callback arrives. Loopback only; every read is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from webhook_service.lifecycle import TERMINAL

TIMEOUT_SECONDS = 40.0  # longer than the longest hold (Prefer: wait=25)


@dataclass(frozen=True)
class Answer:
    """One HTTP answer and when it had been read in full (`time.perf_counter()`)."""

    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


def terminal(job: Mapping[str, Any]) -> bool:
    return job.get("status") in TERMINAL


async def request(
    port: int,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    *,
    timeout: float = TIMEOUT_SECONDS,
) -> Answer:
    """One request on a connection of its own (`Connection: close`)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(_request_bytes(method, path, headers or {}, body))
            await writer.drain()
            status, head = await _read_head(reader)
            if status in (204, 304):
                data = b""
            elif "chunked" in head.get("transfer-encoding", "").lower():
                data = b"".join([piece async for piece in _chunks(reader)])
            elif "content-length" in head:
                data = await reader.readexactly(int(head["content-length"]))
            else:
                data = await reader.read()
            return Answer(status, head, data, time.perf_counter())
        finally:
            writer.close()


@dataclass(frozen=True)
class Followed:
    """A job stream read to its end: the first event's arrival, the terminal one's, and it."""

    status: int
    opened_at: float | None
    terminal_at: float | None
    job: dict[str, Any] | None
    events: int


async def follow_job(
    port: int,
    job_id: str,
    headers: Mapping[str, str],
    opened: asyncio.Event | None = None,
    *,
    timeout: float = TIMEOUT_SECONDS,
) -> Followed:
    """`GET /v1/jobs/{id}/stream` until the event with a terminal status (or the stream ends).

    `opened` is set on the first event: the server watches the job from before it sends it.
    """
    opened_at: float | None = None
    events, buffer = 0, b""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            stream_headers = {**headers, "Accept": "text/event-stream"}
            writer.write(_request_bytes("GET", f"/v1/jobs/{job_id}/stream", stream_headers, b""))
            await writer.drain()
            status, head = await _read_head(reader)
            if status != 200:
                return Followed(status, None, None, None, 0)
            chunked = "chunked" in head.get("transfer-encoding", "").lower()
            async for piece in _chunks(reader) if chunked else _until_closed(reader):
                now = time.perf_counter()
                buffer += piece
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    data = [line[5:].strip() for line in block.split(b"\n") if line[:5] == b"data:"]
                    if not data:
                        continue  # retry:, a comment
                    job = json.loads(b"\n".join(data))
                    events += 1
                    if opened_at is None:
                        opened_at = now
                        if opened is not None:
                            opened.set()
                    if terminal(job):
                        return Followed(status, opened_at, now, job, events)
            return Followed(status, opened_at, None, None, events)
        finally:
            writer.close()


def _request_bytes(method: str, path: str, headers: Mapping[str, str], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The pieces of a chunked body, each as soon as it has arrived."""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # the end (no trailers are sent)
            return
        yield await reader.readexactly(size)
        await reader.readexactly(2)


async def _until_closed(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while piece := await reader.read(65536):
        yield piece


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The worker's threads connect in bursts: with the default backlog of 5 the kernel drops
    # their SYNs and they retry a second later, which the bench would count as the service's.
    request_queue_size = 128


class CallbackReceiver:
    """A threaded HTTP server on 127.0.0.1 answering 200 at once: for each job (`data.id`), when
    the first callback carrying a terminal status arrived (`time.perf_counter()`)."""

    def __init__(self) -> None:
        self.settled_at: dict[str, float] = {}
        self.received = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                arrived = time.perf_counter()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver.record(body, arrived)

            def log_message(self, format: str, *args: Any) -> None:
                """No per-request log lines."""

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.2,))
        self._thread.daemon = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/callbacks"

    def record(self, body: bytes, arrived: float) -> None:
        try:
            job = json.loads(body)["data"]
            job_id, settled = str(job["id"]), terminal(job)
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            self.received += 1
            if settled:
                self.settled_at.setdefault(job_id, arrived)

    def __enter__(self) -> CallbackReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
