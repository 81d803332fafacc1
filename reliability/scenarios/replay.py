"""The replay scenario: every signed body sent again while new notes are in flight."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reliability.account import Account, _counts
from reliability.drive import (
    HTTP_TIMEOUT,
    PATTERN,
    Log,
    Planned,
    _stderr,
    loopback,
    plan_jobs,
    query,
    sandbox_events,
    sandbox_submissions,
    wait_for,
)
from reliability.runner import Size, run
from tests.processes import WEBHOOK_SECRET, RunningSystem
from webhook_service.sandbox.config import DEFAULT_ACCESS_TOKEN_REFERENCE_ID
from webhook_service.sandbox.delivery import signed_headers
from webhook_service.sandbox.store import iso_utc
from webhook_service.signatures import compact_json


def replayed_bodies(database_url: str, tmp_dir: Path, size: Size, log: Log = _stderr) -> Account:
    """Every signed body Cobalt sent in a first round is sent again while a second round of
    notes for the same appointments is in flight: half with a new `webhook-id`, half with
    none. Each is a repeat (the signed event id decides, never the unsigned header) and
    settles nothing: above all not the new note in flight for the appointment, which a
    replayed note outcome (no job id it knows) used to settle."""
    env = {"JOB_DEADLINE_SECONDS": str(size.deadline_seconds)}
    first = plan_jobs(size.jobs, variants=PATTERN)
    with run(database_url, tmp_dir, env, 3.0, log) as r:
        system = r.system
        log(f"replay: first round, {len(first)} jobs")
        r.submit(first)
        r.settle(size.deadline_seconds + 30)
        captured = [_signed_body(event) for event in sandbox_events(system)]
        # The second round: a note for every appointment a first-round note was written to.
        appointments = sorted(
            {p.body["appointment_id"] for p in first if p.variant in ("note-written", "note-soap")}
        )
        second = [
            Planned(
                p.marker,
                p.kind,
                p.variant,
                p.body | {"appointment_id": appointments[i % len(appointments)]},
                p.event,
                p.error_code,
            )
            for i, p in enumerate(plan_jobs(len(appointments), variants=("note-written",)))
        ]
        r.submit(second)
        sent = len(first) + len(second)
        wait_for("the second round at Cobalt", lambda: len(sandbox_submissions(system)) >= sent, 30)
        log(f"replay: {len(captured)} signed bodies sent again, {len(second)} notes in flight")
        answers = Counter(
            _post_signed(system, body, None if i % 2 else f"msg_replay_{i}")
            for i, body in enumerate(captured)
        )
        r.settle(size.deadline_seconds + 30)
        account = r.account(
            f"replay: {len(captured)} signed bodies sent again, {len(second)} notes in flight"
        )
        account.add(
            "replayed bodies answered", _counts(Counter({str(k): n for k, n in answers.items()}))
        )
        account.figures["replayed"] = len(captured)
        stored = query(
            system.database_url,
            "SELECT count(*) FROM webhook_deliveries WHERE webhook_id LIKE 'msg_replay_%%'",
        )[0][0]
        account.add("replays stored as new deliveries (must be 0)", stored, "replays_stored")
        if stored:
            account.violations.append(f"{stored} replayed bodies were stored as new deliveries")
        if answers.get(200, 0) != len(captured):
            account.violations.append(f"replays answered {dict(answers)}")
        return account


def _signed_body(event: dict[str, Any]) -> bytes:
    """An event from Cobalt's log as a signed body: as the sandbox sent it (same keys, same
    order), except that a note outcome is sent in Cobalt's older shape, without `job_id`.
    Such a body can only be matched by its appointment, which is what made a replay settle
    the next note in flight for the appointment."""
    payload: dict[str, Any] = {
        "id": event["event_id"],
        "access_token_reference_id": DEFAULT_ACCESS_TOKEN_REFERENCE_ID,
        "object": "event",
        "created": event["created_at"],
        "type": event["event_type"],
    }
    if event.get("job_id") is not None and not event["event_type"].startswith("note."):
        payload["job_id"] = event["job_id"]
    payload["data"] = event.get("data") or {}
    return compact_json(payload)


def _post_signed(system: RunningSystem, body: bytes, webhook_id: str | None) -> int:
    """POST a body signed with the shared secret, as Cobalt would; returns the status."""
    headers = signed_headers(WEBHOOK_SECRET, body, webhook_id or "", iso_utc(datetime.now(UTC)), 1)
    if webhook_id is None:
        headers.pop("webhook-id", None)
    with loopback() as http:
        response = http.post(
            f"{system.web_url}/webhooks/cobalt", data=body, headers=headers, timeout=HTTP_TIMEOUT
        )
    return response.status_code
