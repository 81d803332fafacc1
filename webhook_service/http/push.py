"""Push to front ends: the long poll (`Prefer: wait` on a poll) and server-sent events.

Both read the record of job changes (`services/changes.py`) and are woken by the process's
`Wakeups`; neither keeps a database connection while it waits. Contract: DESIGN.md, "Push";
README, "Push".
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Blueprint, Response, current_app, request
from sqlalchemy import Connection, Engine

from webhook_service import services
from webhook_service.http.auth import current_client, require
from webhook_service.http.context import read_connection, request_transaction, utcnow
from webhook_service.http.slots import Slots
from webhook_service.lifecycle import TERMINAL
from webhook_service.models import ApiClient
from webhook_service.services.changes import (
    Change,
    Position,
    client_changes,
    job_changes,
    position_of,
    start_position,
)
from webhook_service.services.job_views import Polled
from webhook_service.wakeups import Wakeups

bp = Blueprint("push", __name__)

# `Prefer: wait=<s>` (RFC 7240) is honoured from 1 to 25 s: under the platform router's 30 s.
MIN_WAIT, MAX_WAIT = 1, 25
_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d{1,6})\"?", re.IGNORECASE)
# A comment line at least this often keeps routers (Heroku: 55 s) from closing a stream.
COMMENT_SECONDS = 15.0
# A stream ends after this long; EventSource reconnects with Last-Event-ID and misses
# nothing. It bounds how long one process holds a client (deploys, rebalancing).
STREAM_SECONDS = 600.0
# How soon an EventSource reconnects after a stream ends (the `retry:` field), in ms.
RECONNECT_MS = 1000
RECHECKS, RECHECK_SECONDS = 10, 0.1


def wakeups() -> Wakeups:
    value: Wakeups = current_app.extensions["webhook_service"]["wakeups"]
    return value


def _slots() -> Slots:
    value: Slots = current_app.extensions["webhook_service"]["slots"]
    return value


def _engine() -> Engine:
    value: Engine = current_app.extensions["webhook_service"]["engine"]
    return value


def _setting(name: str, default: float) -> float:
    return float(current_app.config.get(name, default))


# --- Long poll --------------------------------------------------------------------------------


def requested_wait(prefer: str | None) -> int | None:
    """The seconds a `Prefer` header asks to wait, clamped to 1..25; None if it asks none.

    A preference the server does not understand is ignored (RFC 7240 §2), as is `wait=0`.
    """
    if not prefer:
        return None
    found = _WAIT.search(prefer)
    if found is None or int(found.group(1)) < MIN_WAIT:
        return None
    return min(int(found.group(1)), MAX_WAIT)


def hold_poll(job_id: str, client: ApiClient) -> int | None:
    """Hold a poll while the job's ETag is the one the caller sent, up to its `Prefer: wait`.

    Returns the wait applied (for `Preference-Applied`), or None when there is nothing to
    wait for (no `Prefer: wait`, or no `If-None-Match`). The caller then answers as any
    poll does: 200 with the job if it changed, else 304.
    """
    wait = requested_wait(request.headers.get("Prefer"))
    if wait is None or not request.if_none_match:
        return None
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        return None  # the poll answers 404
    hub = wakeups()
    deadline = time.monotonic() + wait
    with hub.watch(job_id=key) as watch:
        while True:
            with read_connection() as connection:
                polled = services.poll_job(connection, job_id, client)
            remaining = deadline - time.monotonic()
            if not request.if_none_match.contains_weak(polled.etag) or remaining <= 0:
                return wait
            if hub.stopping:
                return wait
            with _slots().released():
                watch.wait(remaining)


def preference_applied(response: Response, wait: int | None) -> Response:
    if wait is not None:
        response.headers["Preference-Applied"] = f"wait={wait}"
        response.vary.add("Prefer")
    return response


# --- Server-sent events -----------------------------------------------------------------------


def _event(job: Polled, event_id: str) -> str:
    data = job.view().model_dump_json()
    return f"id: {event_id}\nevent: job\ndata: {data}\n\n"


def _stream_response(body: Iterator[str]) -> Response:
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    # Proxies that buffer (nginx) would hold the events back.
    response.headers["X-Accel-Buffering"] = "no"
    return response


@bp.get("/v1/jobs/<job_id>/stream")
@require("frontend", "support")
def job_stream(job_id: str) -> Response:
    """Stream a job's changes as server-sent events, ending after a terminal status."""
    client = current_client()
    with read_connection() as connection:
        first = services.poll_job(connection, job_id, client)  # 404 before any stream
    if client.role == "support":
        with request_transaction() as session:
            services.audit(
                session, client=client, action="job.stream", job_id=first.row.id, now=utcnow()
            )
    last_id = request.headers.get("Last-Event-ID", "").strip() or None
    return _stream_response(
        _follow_job(
            _Reader(_engine(), _slots()),
            wakeups(),
            first,
            last_id,
            comment_every=_setting("STREAM_COMMENT_SECONDS", COMMENT_SECONDS),
            lasting=_setting("STREAM_SECONDS", STREAM_SECONDS),
        )
    )


class _Reader:
    """A stream's reads: each on a pooled connection, holding a request slot (http/slots.py)
    only while it reads; the stream's body is sent outside the view, without one."""

    def __init__(self, engine: Engine, slots: Slots) -> None:
        self.engine, self.slots = engine, slots

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        with self.slots.taken(), self.engine.connect() as connection:
            yield connection


def _follow_job(
    engine: _Reader,
    hub: Wakeups,
    first: Polled,
    last_id: str | None,
    *,
    comment_every: float,
    lasting: float,
) -> Iterator[str]:
    job_id: uuid.UUID = first.row.id
    ends = time.monotonic() + lasting
    yield f"retry: {RECONNECT_MS}\n\n"
    with hub.watch(job_id=job_id) as watch:
        with engine.connect() as connection:
            changes = job_changes(connection, job_id)
        resumed = [i for i, change in enumerate(changes) if change.etag == last_id]
        if resumed:
            # Resuming: every change after the one the caller saw, in order. A job's states
            # do not recur (attention is cleared only by settling, which sets finished_at);
            # were one to, the first is taken: a change sent twice, never one missed.
            pending, sent_etag, cursor = changes[resumed[0] + 1 :], last_id, changes[-1].seq
        else:
            # The job as it is now; the changes recorded up to here are in it.
            yield _event(first, first.etag)
            # `first` was read before the watch began: a change committed in between is in
            # `changes` but woke nobody, so the newest one is sent unless `first` showed it.
            pending, sent_etag = changes[-1:], first.etag
            cursor = changes[-1].seq if changes else 0
            if first.status in TERMINAL:
                return
        while True:
            for change in pending:
                cursor = change.seq
                if change.etag == sent_etag:
                    continue  # the job as first sent already showed it
                yield _event(change.job, change.etag)
                sent_etag = change.etag
                if change.job.status in TERMINAL:
                    return
            pending = []
            if hub.stopping or time.monotonic() >= ends:
                return
            if not watch.wait(min(comment_every, ends - time.monotonic())):
                yield ": still here\n\n"
            with engine.connect() as connection:
                pending = job_changes(connection, job_id, after=cursor)


@bp.get("/v1/stream")
@require("frontend")
def client_stream() -> Response:
    """Stream every change of the calling client's jobs; `Last-Event-ID` resumes."""
    client = current_client()
    last_id = request.headers.get("Last-Event-ID", "").strip()
    with read_connection() as connection:
        position = _resume_position(connection, last_id) or start_position(connection)
    return _stream_response(
        _follow_client(
            _Reader(_engine(), _slots()),
            wakeups(),
            client.id,
            position,
            comment_every=_setting("STREAM_COMMENT_SECONDS", COMMENT_SECONDS),
            lasting=_setting("STREAM_SECONDS", STREAM_SECONDS),
        )
    )


def _resume_position(connection: Connection, last_id: str) -> Position | None:
    if not (last_id.isascii() and last_id.isdigit()) or len(last_id) > 19:
        return None
    return position_of(connection, int(last_id))


def _follow_client(
    engine: _Reader,
    hub: Wakeups,
    client_id: int,
    position: Position,
    *,
    comment_every: float,
    lasting: float,
) -> Iterator[str]:
    ends = time.monotonic() + lasting
    yield f"retry: {RECONNECT_MS}\n\n"
    yield ": following this client's jobs\n\n"
    with hub.watch(client_id=client_id) as watch:
        rechecks = 0
        while True:
            with engine.connect() as connection:
                batch = client_changes(connection, client_id, position)
            if batch:
                position = max(Position(c.txid, c.seq) for c in batch)
                # One job's changes commit in seq order: send each batch in that order.
                for change in sorted(batch, key=_by_seq):
                    yield _event(change.job, str(change.seq))
                rechecks = 0
            if hub.stopping or time.monotonic() >= ends:
                return
            if rechecks:
                # Woken, yet nothing readable: a change may wait on an older transaction
                # (services/changes.py); look again soon, for a second at most.
                rechecks -= 1
                watch.wait(RECHECK_SECONDS)
                continue
            if watch.wait(min(comment_every, ends - time.monotonic())):
                rechecks = RECHECKS
            else:
                yield ": still here\n\n"


def _by_seq(change: Change) -> int:
    return change.seq
