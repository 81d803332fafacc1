"""The reliability run: the real system under injected faults, and an exact account of it.

Every scenario starts the real processes on loopback (`tests/processes.py`: the Cobalt
sandbox, gunicorn exactly as the Procfile says, the worker) on a throwaway PostgreSQL
database, submits a mix of notes and telephone encounters whose outcomes the sandbox's
pretend EMR decides (`webhook_service.sandbox.data`), injects one kind of fault, waits until
every job has settled (or a bounded wait ran out), and then accounts for every job from
both sides: what the service says (the API, its tables) and what Cobalt saw (the sandbox's
submissions, event log and delivery attempts). A job is judged by these rules:

- Cobalt accepted it at most once (no duplicate note in a chart), and
- it settled to the outcome Cobalt produced for it, with that submission's Cobalt job id, or
- Cobalt certainly never had it and the service says so (`failed` as `cobalt_unavailable`, or
  `appointment_busy` for a note still waiting behind an earlier one), or
- its fate cannot be known from anything the service holds, and it says exactly that: still
  `processing` with `attention: no_outcome` past its deadline, for a person to check the
  chart. Each such job is explained: an encounter whose reply never came (Cobalt's log then
  holds no key the service knows: "Known limits" in reliability/README.md), or a submission
  whose answer never came (a gateway error, a worker killed between claiming and sending)
  that Cobalt turned out not to have,
- and no outcome was applied to it twice; nothing is left `processing` without attention
  ("lost").

The scenarios (`tests/test_faults.py` runs each at CI size; this script at full size):

- chaos: duplicated, dropped, reordered webhooks, 5xx and hanging submissions, all at once
- worker-kill: `kill -9` of the worker while submissions are in flight, restarted each time
- postgres-restart: the database stopped and started while webhooks arrive
- web-kill: gunicorn's worker processes SIGKILLed during a burst of webhooks
- same-appointment, busy-day: notes reconciled by appointment, past the first page of the log
- replay: every signed body sent again while new notes for the same appointments are in flight
- gateway: 502/504 answers from a gateway, before and after Cobalt queued the job
- foreign-events: `appointment.failed` events sharing the appointment of a note in flight
- connection-cap: a 20-connection database full while Cobalt's webhooks arrive

Run: `python -m reliability.run` (from the repository root; `--help` for sizes). It needs a
PostgreSQL server (`TEST_DATABASE_URL`, default the local one) and the PostgreSQL server
binaries for the restart scenario's own throwaway cluster. Exit status 1 if anything was
lost, duplicated, wrong or applied twice.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import requests
from sqlalchemy.engine import make_url

from tests.processes import (
    WEBHOOK_SECRET,
    RunningSystem,
    capped_postgres_database,
    child_pids,
    restart_worker,
    running_system,
    throwaway_postgres_cluster,
    throwaway_postgres_database,
)
from webhook_service.sandbox.config import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_ACCESS_TOKEN_REFERENCE_ID,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
)
from webhook_service.sandbox.data import DEMO_IDS, PATIENTS, build_seed
from webhook_service.sandbox.delivery import signed_headers
from webhook_service.sandbox.store import iso_utc
from webhook_service.signatures import compact_json

# What each event the sandbox can produce means for a job (the contract's lifecycle table).
EVENT_STATUS = {
    "note.created": "completed",
    "note.uploaded": "completed",
    "note.failed": "failed",
    "telephone_encounter.created": "completed",
    "telephone_encounter.created_partial": "partial",
    "telephone_encounter.failed": "failed",
}
TERMINAL = ("completed", "partial", "failed")
SUBMIT_THREADS = 8
SUBMIT_TRIES = 40  # per job, 0.5 s apart: rides out a database restart
HTTP_TIMEOUT = 10.0
POLL_SECONDS = 0.5

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --- The jobs: a mix with outcomes known from the sandbox's pretend EMR -----------------------


@dataclass(frozen=True)
class Planned:
    """One job to submit, the marker that finds it at Cobalt, and what Cobalt will say."""

    marker: str
    kind: str  # "note" or "telephone_encounter"
    variant: str
    body: dict[str, Any]
    event: str
    error_code: str | None

    @property
    def path(self) -> str:
        return "/v1/notes" if self.kind == "note" else "/v1/telephone-encounters"

    @property
    def status(self) -> str:
        return EVENT_STATUS[self.event]


# 20 slots: 7 notes (4 written, 3 failing), 13 encounters of every outcome.
PATTERN = (
    "encounter-refill",
    "note-written",
    "encounter-partial",
    "note-failed",
    "encounter-plain",
    "encounter-unknown-medication",
    "note-written",
    "encounter-refill",
    "encounter-chart-locked",
    "note-failed",
    "encounter-partial",
    "encounter-refill",
    "note-soap",
    "encounter-plain",
    "encounter-unknown-medication",
    "note-failed",
    "encounter-refill",
    "encounter-partial",
    "note-written",
    "encounter-chart-locked",
)
# The full run's mix (50 slots): one note per appointment is the usual case, so few written
# notes share an appointment (they go to Cobalt one at a time); most notes fail in the EMR.
PATTERN_FULL = (
    *("encounter-refill",) * 12,
    *("encounter-plain",) * 7,
    *("encounter-partial",) * 7,
    *("encounter-unknown-medication",) * 5,
    *("encounter-chart-locked",) * 4,
    "note-written",
    "note-soap",
    *("note-failed",) * 13,
)
# Appointments the pretend EMR has (the ids do not depend on the date).
APPOINTMENTS = tuple(sorted(build_seed(datetime.now(UTC).date()).appointments))
PLAIN_PATIENTS = tuple(p.mrn for p in PATIENTS if not p.chart_locked and p.mrn != "MRN100001")


def plan_jobs(count: int, *, variants: tuple[str, ...] = PATTERN, run: str = "") -> list[Planned]:
    """`count` jobs cycling through `variants`; written notes spread over the appointments."""
    run = run or uuid.uuid4().hex[:6]
    planned = []
    for index in range(count):
        variant = variants[index % len(variants)]
        marker = f"rel-{run}-{index:05d}"
        planned.append(_plan(variant, marker, index))
    return planned


def _plan(variant: str, marker: str, index: int) -> Planned:
    if variant in ("note-written", "note-soap"):
        appointment = APPOINTMENTS[index % len(APPOINTMENTS)]
        note: Any = f"Patient doing well. {marker}"
        if variant == "note-soap":
            note = {
                "subjective": f"Feels better. {marker}",
                "objective": "BP 120/80.",
                "assessment": "Improving.",
                "plan": "Review in 3 months.",
            }
        body = {"appointment_id": appointment, "note": note}
        return Planned(marker, "note", variant, body, "note.created", None)
    if variant == "note-failed":
        # An appointment the EMR does not have: unique, so these notes never wait for each other.
        body = {"appointment_id": f"9{index:07d}", "note": f"Follow-up call. {marker}"}
        return Planned(marker, "note", variant, body, "note.failed", "appointment_not_found")
    body = {
        "patient_mrn": DEMO_IDS["patient_mrn"],
        "provider_id": DEMO_IDS["provider_id"],
        "location_id": DEMO_IDS["location_id"],
        "assigned_to_id": DEMO_IDS["assigned_to_id"],
        "reason": "Refill request",
        "caller": "Patient",
        "message": f"Asks for a refill. {marker}",
        "is_high_priority": "false",
    }
    event, code = "telephone_encounter.created", None
    if variant == "encounter-refill":
        body |= {"refill_medication_name": "lisinopril", "pharmacy_ehr_id": "PHR-4001"}
    elif variant == "encounter-plain":
        body["patient_mrn"] = PLAIN_PATIENTS[index % len(PLAIN_PATIENTS)]
        body["reason"] = "Question about results"
    elif variant == "encounter-partial":
        body |= {
            "refill_medication_name": "lisinopril",
            "pharmacy_ehr_id": DEMO_IDS["failing_pharmacy_ehr_id"],
        }
        event, code = "telephone_encounter.created_partial", "refill_not_added"
    elif variant == "encounter-unknown-medication":
        body["refill_medication_name"] = DEMO_IDS["unknown_medication_name"]
        event, code = "telephone_encounter.failed", "medication_not_found"
    elif variant == "encounter-chart-locked":
        body["patient_mrn"] = DEMO_IDS["locked_chart_patient_mrn"]
        event, code = "telephone_encounter.failed", "chart_locked"
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return Planned(marker, "telephone_encounter", variant, body, event, code)


# --- Driving the system -----------------------------------------------------------------------


def loopback() -> requests.Session:
    """An HTTP session that ignores proxy settings: every call here is to 127.0.0.1."""
    session = requests.Session()
    session.trust_env = False
    return session


def api_session(system: RunningSystem) -> requests.Session:
    """The front end's session (bearer token), without proxies."""
    session = system.api()
    session.trust_env = False
    return session


def set_faults(system: RunningSystem, **faults: float | int) -> None:
    with loopback() as http:
        response = http.post(f"{system.sandbox_url}/_sandbox/faults", json=faults, timeout=5)
    response.raise_for_status()


def submit_all(system: RunningSystem, planned: list[Planned]) -> tuple[dict[str, str], int]:
    """Submit every job as a front end would (Idempotency-Key = marker, retried on 5xx or a
    dropped connection); returns marker → job id, and how many tries were answered 5xx."""
    retried = Counter[str]()
    lock = threading.Lock()

    def one(job: Planned) -> tuple[str, str]:
        with api_session(system) as api:
            headers = {"Idempotency-Key": job.marker}
            for _ in range(SUBMIT_TRIES):
                try:
                    response = api.post(
                        system.web_url + job.path, json=job.body, headers=headers, timeout=10
                    )
                except requests.ConnectionError:
                    response = None
                if response is not None and response.status_code == 202:
                    return job.marker, str(response.json()["id"])
                if response is not None and response.status_code < 500:
                    raise AssertionError(
                        f"{job.variant} refused: {response.status_code} {response.text[:300]}"
                    )
                with lock:
                    retried["5xx" if response is not None else "connection"] += 1
                time.sleep(0.5)
        raise AssertionError(f"{job.marker} could not be submitted in {SUBMIT_TRIES} tries")

    with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
        ids = dict(pool.map(one, planned))
    return ids, sum(retried.values())


def psycopg_url(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def query(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(psycopg_url(database_url), connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def open_jobs(database_url: str) -> int | None:
    """Jobs still `processing` and not yet handed to a person (no `attention`), or None while
    the database does not answer."""
    try:
        return int(
            query(
                database_url,
                "SELECT count(*) FROM jobs WHERE status = 'processing' AND attention_code IS NULL",
            )[0][0]
        )
    except psycopg.Error:
        return None


def wait_until_settled(system: RunningSystem, timeout: float, log: Log) -> float:
    """Wait (bounded) until every job is settled or needs attention; returns the seconds."""
    started = time.monotonic()
    deadline = started + timeout
    last_report = started
    while time.monotonic() < deadline:
        remaining = open_jobs(system.database_url)
        if remaining == 0:
            return time.monotonic() - started
        if time.monotonic() - last_report >= 10:
            log(f"  {remaining} job(s) still processing")
            last_report = time.monotonic()
        time.sleep(POLL_SECONDS)
    return time.monotonic() - started


def wait_for(what: str, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def sandbox_events(system: RunningSystem) -> list[dict[str, Any]]:
    """Every event in the sandbox's GET /v1/webhook-events log, delivered or not."""
    headers = {
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "access_token": DEFAULT_ACCESS_TOKEN,
    }
    events: list[dict[str, Any]] = []
    with loopback() as http:
        for page in range(1, 1000):
            response = http.get(
                f"{system.sandbox_url}/v1/webhook-events",
                params={"page": page, "page_size": 100, "sort": "created_at"},
                headers=headers,
                timeout=HTTP_TIMEOUT,
            )
            response.raise_for_status()
            body = response.json()
            events.extend(body["webhook_events"])
            if page >= body["pagination"]["total_pages"]:
                break
    return events


def sandbox_deliveries(system: RunningSystem) -> list[dict[str, Any]]:
    with loopback() as http:
        response = http.get(f"{system.sandbox_url}/_sandbox/deliveries", timeout=HTTP_TIMEOUT)
    response.raise_for_status()
    deliveries: list[dict[str, Any]] = response.json()["deliveries"]
    return deliveries


def sandbox_submissions(system: RunningSystem) -> list[dict[str, Any]]:
    with loopback() as http:
        response = http.get(f"{system.sandbox_url}/_sandbox/submissions", timeout=HTTP_TIMEOUT)
    response.raise_for_status()
    submissions: list[dict[str, Any]] = response.json()["submissions"]
    return submissions


def read_jobs(system: RunningSystem, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each job as its front end reads it (GET /v1/jobs/{id})."""

    def one(job_id: str) -> tuple[str, dict[str, Any]]:
        with api_session(system) as api:
            for _ in range(10):
                try:
                    response = api.get(f"{system.web_url}/v1/jobs/{job_id}", timeout=10)
                except requests.ConnectionError:
                    time.sleep(0.5)
                    continue
                if response.status_code == 200:
                    return job_id, response.json()
                if response.status_code < 500:
                    return job_id, {"id": job_id, "status": f"http {response.status_code}"}
                time.sleep(0.5)
        return job_id, {"id": job_id, "status": "unreadable"}

    with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
        return dict(pool.map(one, job_ids))


# --- The account ------------------------------------------------------------------------------


@dataclass
class Account:
    """What a scenario did and how every job ended, and the rules it broke (if any)."""

    title: str
    name: str = ""  # the scenario's short name, for the summary
    rows: list[tuple[str, Any]] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def add(self, label: str, value: Any, key: str | None = None) -> None:
        self.rows.append((label, value))
        if key is not None:
            self.figures[key] = int(value)

    def table(self) -> str:
        width = max((len(label) for label, _ in self.rows), default=10)
        lines = [f"== {self.title} ==", *(f"  {k:<{width}}  {v}" for k, v in self.rows)]
        if self.violations:
            lines.append(f"  VIOLATIONS ({len(self.violations)}):")
            lines.extend(f"    - {v}" for v in self.violations[:40])
            if len(self.violations) > 40:
                lines.append(f"    … and {len(self.violations) - 40} more")
        else:
            lines.append("  no violations: nothing lost, nothing submitted or applied twice")
        return "\n".join(lines)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"


def account_for(
    title: str,
    system: RunningSystem,
    planned: list[Planned],
    job_ids: dict[str, str],
    *,
    elapsed: float,
    submit_retries: int,
) -> Account:
    """Reconcile the service's view of every job with Cobalt's (the sandbox's)."""
    account = Account(title)
    # Let the sandbox finish what it scheduled (outcomes, retries) before reading its side.
    with loopback() as http:
        http.post(f"{system.sandbox_url}/_sandbox/drain", params={"timeout": 15}, timeout=20)
    jobs = read_jobs(system, list(job_ids.values()))
    submissions = sandbox_submissions(system)
    events = sandbox_events(system)
    attempts = sandbox_deliveries(system)
    sandbox_log = [line.get("event") for line in system.processes["sandbox"].log_lines()]
    stored = query(
        system.database_url,
        "SELECT dedup_key, webhook_id, attempt, signature_match, state, event_id"
        " FROM webhook_deliveries",
    )
    timeline = query(
        system.database_url,
        "SELECT job_id::text, type, count(*) FROM job_events GROUP BY job_id, type",
    )
    per_job_events: dict[str, Counter[str]] = {}
    for job_id, type_, count in timeline:
        per_job_events.setdefault(job_id, Counter())[type_] = int(count)

    # Cobalt's side: which submission carries which marker, and its event.
    by_marker: dict[str, list[dict[str, Any]]] = {}
    markers = {p.marker for p in planned}
    for submission in submissions:
        text = str(submission["body"])
        marker = next((m for m in _markers_in(text) if m in markers), None)
        by_marker.setdefault(marker or "(none)", []).append(submission)
    events_by_job = {}
    for event in events:
        if event.get("job_id") is not None and event["event_type"] in EVENT_STATUS:
            events_by_job.setdefault(str(event["job_id"]), event)

    kinds = Counter(p.kind for p in planned)
    expected = Counter(p.status for p in planned)
    account.add("jobs submitted", len(planned), "jobs")
    account.add(
        "  notes / telephone encounters", f"{kinds['note']} / {kinds['telephone_encounter']}"
    )
    account.add("  Cobalt's data says", _counts(expected))
    account.add("  submit calls answered 5xx or cut (retried)", submit_retries, "submit_retries")
    faults = Counter(
        e.removeprefix("sandbox_fault_")
        for e in sandbox_log
        if isinstance(e, str) and e.startswith("sandbox_fault_")
    )
    account.add("faults injected by the sandbox", _counts(faults))
    for name in ("duplicate", "drop", "reorder", "submit_error", "submit_hang"):
        account.figures[f"fault_{name}"] = faults.get(name, 0)
    account.add("Cobalt: accepted submissions", len(submissions), "cobalt_submissions")

    verdicts = Counter[str]()
    twice = 0
    applied_twice = 0
    for plan in planned:
        job_id = job_ids[plan.marker]
        job = jobs.get(job_id, {"status": "missing"})
        seen = by_marker.get(plan.marker, [])
        if len(seen) > 1:
            twice += 1
            account.violations.append(
                f"{plan.variant} {job_id}: Cobalt accepted it {len(seen)} times"
            )
        applied = per_job_events.get(job_id, Counter())["webhook_applied"]
        if applied > 1:
            applied_twice += 1
            account.violations.append(
                f"{plan.variant} {job_id}: outcome applied {applied} times"
                + _story(system.database_url, job_id)
            )
        verdict, problem = _judge(plan, job, seen[0] if seen else None, events_by_job)
        verdicts[verdict] += 1
        if problem:
            story = _story(system.database_url, job_id) if len(account.violations) < 10 else ""
            account.violations.append(f"{plan.variant} {job_id}: {problem}{story}")
    stray = by_marker.get("(none)", [])
    if stray:
        account.violations.append(f"{len(stray)} submission(s) at Cobalt match no job")

    account.add(
        "Cobalt: jobs accepted exactly once",
        sum(len(by_marker.get(p.marker, [])) == 1 for p in planned),
        "accepted_once",
    )
    account.add("Cobalt: jobs accepted twice or more (must be 0)", twice, "duplicated")
    account.add("Cobalt: outcome events produced", len(events), "events")

    # Webhook deliveries: what the sandbox attempted, what the service stored.
    status_of = Counter(_attempt_result(a) for a in attempts)
    account.add("webhook attempts by the sandbox", f"{len(attempts)} ({_counts(status_of)})")
    account.figures["attempts"] = len(attempts)
    acked = {a["webhook_id"] for a in attempts if _ok(a)}
    sent = {a["webhook_id"] for a in attempts}
    first_try = {a["webhook_id"]: a for a in attempts if a["attempt"] == 1 and not a["duplicate"]}
    by_webhook_id = {row[1]: row for row in stored if row[3] != "reconcile"}
    reconciled = [row for row in stored if row[3] == "reconcile"]
    never = len({e["event_id"] for e in events}) - len({a["event_id"] for a in attempts})
    account.add("  events never sent (dropped)", never, "never_sent")
    account.add("  events sent, never answered 2xx", len(sent - acked), "never_acked")
    account.add("deliveries stored (one row per webhook-id)", len(by_webhook_id), "stored")
    account.add(
        "  repeats answered 200, nothing changed", sum(1 for a in attempts if _ok(a)) - len(acked)
    )
    # Stored by the first attempt although that attempt got no 2xx: the request died (or
    # Cobalt stopped waiting) after the transaction committed and before the answer went out.
    unanswered = Counter(
        _attempt_result(first_try[wid])
        for wid, row in by_webhook_id.items()
        if wid in first_try and not _ok(first_try[wid]) and row[2] == 1
    )
    account.add("  stored, but attempt 1 saw no 2xx", _counts(unanswered))
    account.figures["stored_unanswered"] = sum(unanswered.values())
    account.figures["stored_then_cut"] = unanswered.get("connection_error", 0)
    # Deliveries are stored once per signed event id: a webhook acknowledged as a repeat of
    # an event a reconcile lookup stored first has no row of its own, and is not missing.
    stored_events = {row[5] for row in stored if row[5] is not None}
    missing = sorted(
        {
            a["webhook_id"]
            for a in attempts
            if a["webhook_id"] in acked
            and a["webhook_id"] not in by_webhook_id
            and a.get("event_id") not in stored_events
        }
    )
    if missing:
        account.violations.append(f"{len(missing)} webhook(s) answered 2xx but not stored")
    unknown = sorted(set(by_webhook_id) - sent)
    if unknown:
        account.violations.append(f"{len(unknown)} stored webhook-id(s) the sandbox never sent")
    account.add(
        "outcomes found by reconciliation (applied)",
        sum(1 for r in reconciled if r[4] == "applied"),
        "reconciled",
    )
    account.add(
        "delivery states (webhooks + reconciled)", _counts(Counter(str(r[4]) for r in stored))
    )
    steps = Counter[str]()
    for counter in per_job_events.values():
        steps.update(counter)
    account.add(
        "timeline: submit retried / unknown / claim expired",
        f"{steps['submission_retrying']} / {steps['submission_unknown']} / "
        f"{steps['claim_expired']}",
    )
    account.add(
        "timeline: reconcile lookups / deadline passed",
        f"{steps['reconcile_lookup']} / {steps['deadline_passed']}",
    )

    finals = Counter(str(job.get("status")) for job in jobs.values())
    account.add("final states", _counts(finals))
    account.add("  settled as Cobalt said", verdicts[SETTLED], "settled_as_cobalt_said")
    account.add("  never reached Cobalt, failed", verdicts[NEVER_REACHED])
    attention = {v: n for v, n in verdicts.items() if v.startswith(ATTENTION)}
    account.add("  still processing, with attention", sum(attention.values()), "attention")
    for verdict, count in sorted(attention.items()):
        account.add(f"    {verdict.removeprefix(ATTENTION)}", count)
    lost = verdicts["LOST"]
    account.add("lost (processing, no attention; must be 0)", lost, "lost")
    account.add("duplicated submissions (must be 0)", twice, "duplicated_submissions")
    account.add("outcomes applied twice (must be 0)", applied_twice, "applied_twice")
    account.add("wrong outcome (must be 0)", verdicts["WRONG"], "wrong")
    account.figures["unmatchable"] = verdicts[ATTENTION + REPLY_LOST]
    web_5xx = Counter(str(line.get("status")) for line in system.server_errors())
    account.add("web answers 5xx", _counts(web_5xx))
    account.figures["web_500"] = web_5xx.get("500", 0)
    if web_5xx.get("500"):
        account.violations.append(f"the web process answered 500 {web_5xx['500']} time(s)")
    account.add("wall time (submit → all settled)", f"{elapsed:.1f} s")
    return account


def _story(database_url: str, job_id: str) -> str:
    """The job's timeline (types and ids only), to explain a violation."""
    rows = query(
        database_url,
        "SELECT type, detail FROM job_events WHERE job_id = %s ORDER BY at, id",
        job_id,
    )
    steps = []
    for type_, detail in rows:
        keep = {
            k: v
            for k, v in (detail or {}).items()
            if k in ("attempt", "status_code", "found", "event_type", "cobalt_job_id", "status")
            and v is not None
        }
        steps.append(type_ + (str(keep).replace("'", "") if keep else ""))
    return "\n        timeline: " + " → ".join(steps)


def _markers_in(text: str) -> Iterator[str]:
    start = text.find("rel-")
    while start != -1:
        yield text[start : start + len("rel-") + 6 + 1 + 5]
        start = text.find("rel-", start + 1)


def _ok(attempt: dict[str, Any]) -> bool:
    code = attempt.get("status_code")
    return isinstance(code, int) and 200 <= code < 300


def _attempt_result(attempt: dict[str, Any]) -> str:
    code = attempt.get("status_code")
    if code is None:
        return str(attempt.get("error") or "no answer")
    return f"{code // 100}xx"


SETTLED = "settled as Cobalt said"
NEVER_REACHED = "never reached Cobalt: failed cobalt_unavailable or appointment_busy"
ATTENTION = "attention, "
REPLY_LOST = "reply lost: an encounter Cobalt took, matchable by no key the service holds"
NOT_AT_COBALT = "sent, answer unknown (gateway error, worker killed): Cobalt never had it"


def _judge(
    plan: Planned,
    job: dict[str, Any],
    submission: dict[str, Any] | None,
    events_by_job: dict[str, dict[str, Any]],
) -> tuple[str, str | None]:
    """A verdict for one job, and the rule it broke (None when it broke none).

    A job still `processing` with `attention` is not lost: it says "unknown, check the
    chart", which is true only where nothing the service holds can tell. Each such verdict
    names why; any other reason is a violation (its outcome was there to be found).
    """
    status = job.get("status")
    error = (job.get("error") or {}).get("code")
    cobalt = job.get("cobalt") or {}
    state = (job.get("submission") or {}).get("state")
    attention = (job.get("attention") or {}).get("code")
    if status == "processing" and attention == "no_outcome":
        if submission is None and state == "unknown":
            return ATTENTION + NOT_AT_COBALT, None
        if (
            submission is not None
            and plan.kind == "telephone_encounter"
            and cobalt.get("job_id") is None
            and state in ("unknown", "sending")
        ):
            return ATTENTION + REPLY_LOST, None
        return "WRONG", (
            f"needs attention (submission {state!r}) although "
            + ("Cobalt never had it" if submission is None else "its outcome was in Cobalt's log")
        )
    if status not in TERMINAL:
        return "LOST", f"ended {status!r} (submission {state!r}, attention {attention!r})"
    if submission is None:
        if status == "failed" and error in ("cobalt_unavailable", "appointment_busy"):
            return NEVER_REACHED, None
        return "WRONG", f"Cobalt never had it, yet it ended {status}/{error}"
    event = events_by_job.get(str(submission["job_id"]))
    if event is None:
        return "WRONG", f"Cobalt produced no outcome for its submission; it ended {status}"
    if event["event_type"] != plan.event:
        return "WRONG", f"the sandbox said {event['event_type']}, its data says {plan.event}"
    if (
        status == plan.status
        and (job.get("outcome") or {}).get("event") == event["event_type"]
        and cobalt.get("job_id") == str(submission["job_id"])
        and error == plan.error_code
    ):
        return SETTLED, None
    return "WRONG", (
        f"ended {status}/{error} with Cobalt job {cobalt.get('job_id')!r}; Cobalt said "
        f"{event['event_type']} for job {submission['job_id']!r}"
    )


# --- Scenarios --------------------------------------------------------------------------------

# Short timings for every scenario: outcomes are looked up after a few seconds, not minutes.
FAST = {
    "NOTE_EXPECTED_SECONDS": "4",
    "ENCOUNTER_EXPECTED_SECONDS": "4",
    "RETRY_BASE_SECONDS": "0.2",
    "RETRY_CAP_SECONDS": "2",
    "WORKER_CONCURRENCY": "4",
    "LOG_LEVEL": "INFO",
    # Scenarios burst submissions from one client: the limits are tested on their own.
    "RATE_LIMIT_SUBMISSIONS_PER_MINUTE": "0",
    "BACKLOG_MAX_JOBS": "0",
}


@dataclass(frozen=True)
class Size:
    jobs: int
    seed: int = 20261123
    deadline_seconds: int = 45  # JOB_DEADLINE_SECONDS: when an unknowable job gets attention
    expected_seconds: int = 4


@contextmanager
def _system(
    database_url: str, tmp_dir: Path, env: dict[str, str], processing_seconds: float
) -> Iterator[RunningSystem]:
    with running_system(
        database_url, tmp_dir, processing_seconds=processing_seconds, env=env
    ) as system:
        yield system


def chaos(
    database_url: str,
    tmp_dir: Path,
    size: Size,
    *,
    variants: tuple[str, ...] = PATTERN,
    log: Log = _stderr,
) -> Account:
    """Every sandbox fault at once: 20% duplicated, 10% dropped, 20% reordered webhooks,
    5% of submissions answered 500, 2% hanging past the service's read timeout."""
    env = FAST | {
        "NOTE_EXPECTED_SECONDS": str(size.expected_seconds),
        "ENCOUNTER_EXPECTED_SECONDS": str(size.expected_seconds),
        "JOB_DEADLINE_SECONDS": str(size.deadline_seconds),
        "COBALT_READ_TIMEOUT_SECONDS": "1",
        "CLAIM_TTL_SECONDS": "10",
    }
    planned = plan_jobs(size.jobs, variants=variants)
    with _system(database_url, tmp_dir, env, 0.3) as system:
        set_faults(
            system,
            duplicate_rate=0.2,
            drop_rate=0.1,
            reorder_rate=0.2,
            delay_seconds=2.0,
            submit_error_rate=0.05,
            submit_hang_rate=0.02,
            hang_seconds=3.0,
            seed=size.seed,
        )
        log(f"chaos: submitting {len(planned)} jobs")
        started = time.monotonic()
        job_ids, retries = submit_all(system, planned)
        wait_until_settled(system, size.deadline_seconds + 30, log)
        elapsed = time.monotonic() - started
        set_faults(system, drop_rate=0.0, duplicate_rate=0.0, reorder_rate=0.0)
        return account_for(
            f"chaos: {size.jobs} jobs, every sandbox fault at once",
            system,
            planned,
            job_ids,
            elapsed=elapsed,
            submit_retries=retries,
        )


def worker_kills(
    database_url: str, tmp_dir: Path, size: Size, kills: int = 5, log: Log = _stderr
) -> Account:
    """`kill -9` the worker while submissions hang in flight, restart it, again and again."""
    env = FAST | {
        "JOB_DEADLINE_SECONDS": str(size.deadline_seconds),
        "COBALT_READ_TIMEOUT_SECONDS": "10",
        "CLAIM_TTL_SECONDS": "3",
    }
    planned = plan_jobs(size.jobs)
    with _system(database_url, tmp_dir, env, 0.3) as system:
        set_faults(system, submit_hang_rate=0.5, hang_seconds=1.5, seed=size.seed)
        log(f"worker-kill: submitting {len(planned)} jobs, then {kills} kills")
        started = time.monotonic()
        job_ids, retries = submit_all(system, planned)
        in_flight: set[str] = set()
        done = 0
        for _ in range(kills):
            sending = _wait_for_sending(system, timeout=15)
            if not sending:
                break  # nothing left to send
            time.sleep(0.3)  # let the calls reach the sandbox and hang there
            in_flight |= set(_sending(system))
            restart_worker(system)
            done += 1
        log(f"worker-kill: {done} kills, {len(in_flight)} submissions in flight at a kill")
        wait_until_settled(system, size.deadline_seconds + 30, log)
        elapsed = time.monotonic() - started
        account = account_for(
            f"worker-kill: {size.jobs} jobs, worker SIGKILLed {done} times mid-submission",
            system,
            planned,
            job_ids,
            elapsed=elapsed,
            submit_retries=retries,
        )
        expired = query(
            system.database_url, "SELECT count(*) FROM job_events WHERE type = 'claim_expired'"
        )[0][0]
        account.add("worker kills", done, "kills")
        account.add(
            "jobs whose submission was in flight at a kill", len(in_flight), "in_flight_at_kill"
        )
        account.add(
            "claims expired after a kill (→ unknown, reconciled)", expired, "claims_expired"
        )
        return account


def _sending(system: RunningSystem) -> list[str]:
    rows = query(
        system.database_url,
        "SELECT id::text FROM jobs WHERE submission_state = 'sending' AND status = 'processing'",
    )
    return [row[0] for row in rows]


def _all_sent(system: RunningSystem) -> bool:
    rows = query(
        system.database_url,
        "SELECT count(*) FROM jobs WHERE status = 'processing'"
        " AND submission_state IN ('pending', 'retrying', 'sending')",
    )
    return int(rows[0][0]) == 0


def _wait_for_sending(system: RunningSystem, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _sending(system):
            return True
        pending = query(
            system.database_url,
            "SELECT count(*) FROM jobs WHERE status = 'processing'"
            " AND submission_state IN ('pending', 'waiting', 'retrying')",
        )[0][0]
        if not pending:
            return False
        time.sleep(0.02)
    return False


def postgres_restart(
    tmp_dir: Path, size: Size, down_seconds: float = 4.0, log: Log = _stderr
) -> Account:
    """Stop PostgreSQL while Cobalt's webhooks arrive, start it again a few seconds later.

    Runs on a throwaway cluster of its own, so a shared server is never touched.
    """
    env = FAST | {"JOB_DEADLINE_SECONDS": str(size.deadline_seconds), "CLAIM_TTL_SECONDS": "5"}
    planned = plan_jobs(size.jobs)
    with (
        throwaway_postgres_cluster() as cluster,
        throwaway_postgres_database(cluster.server_url) as database_url,
        _system(database_url, tmp_dir, env, 2.5) as system,
    ):
        log(f"postgres-restart: submitting {len(planned)} jobs")
        started = time.monotonic()
        job_ids, retries = submit_all(system, planned)
        # Cobalt has every job before the outage (but notes waiting for an earlier note of their
        # appointment): this scenario is about the webhooks.
        wait_for("the worker to send every job it may send now", lambda: _all_sent(system), 60)
        # Outcomes come 2.5 s after each acceptance: the burst falls into the outage.
        cluster.stop("fast")
        stopped = time.monotonic()
        log("postgres-restart: database stopped")
        time.sleep(down_seconds)
        cluster.start()
        log(f"postgres-restart: database back after {time.monotonic() - stopped:.1f} s")
        wait_until_settled(system, size.deadline_seconds + 30, log)
        elapsed = time.monotonic() - started
        account = account_for(
            f"postgres-restart: {size.jobs} jobs, database down {down_seconds:.0f} s mid-burst",
            system,
            planned,
            job_ids,
            elapsed=elapsed,
            submit_retries=retries,
        )
        refused = sum(1 for a in sandbox_deliveries(system) if not _ok(a))
        account.add("webhook attempts refused during the outage", refused, "refused")
        return account


def web_kills(
    database_url: str, tmp_dir: Path, size: Size, kill_seconds: float = 4.0, log: Log = _stderr
) -> Account:
    """SIGKILL gunicorn's worker processes again and again during a burst of webhooks.

    A delivery whose request dies after its transaction committed is stored but never
    answered: Cobalt retries it once (a repeat, refused) or the service reconciles it.
    """
    env = FAST | {"JOB_DEADLINE_SECONDS": str(size.deadline_seconds)}
    planned = plan_jobs(size.jobs)
    with _system(database_url, tmp_dir, env, 1.5) as system:
        log(f"web-kill: submitting {len(planned)} jobs")
        started = time.monotonic()
        job_ids, retries = submit_all(system, planned)
        wait_for("the first webhooks", lambda: len(sandbox_deliveries(system)) >= 1, 30)
        master = system.processes["web"].popen.pid
        killed = 0
        stop_at = time.monotonic() + kill_seconds
        while time.monotonic() < stop_at:
            for pid in child_pids(master)[:1]:
                with suppress(ProcessLookupError):
                    os.kill(pid, 9)
                    killed += 1
            time.sleep(0.25)
        log(f"web-kill: {killed} gunicorn workers killed")
        wait_for("gunicorn to serve again", lambda: _ready(system), 30)
        wait_until_settled(system, size.deadline_seconds + 30, log)
        elapsed = time.monotonic() - started
        account = account_for(
            f"web-kill: {size.jobs} jobs, {killed} gunicorn workers SIGKILLed mid-burst",
            system,
            planned,
            job_ids,
            elapsed=elapsed,
            submit_retries=retries,
        )
        account.add("gunicorn workers killed", killed, "kills")
        return account


def connection_cap(
    server_url: str, tmp_dir: Path, size: Size, full_seconds: float = 4.0, log: Log = _stderr
) -> Account:
    """A database capped at 20 connections (a small hosted plan) fills up with other clients
    while Cobalt's webhooks arrive: the web processes lose their connections and cannot get
    new ones. Each webhook is stored or answered 503; what Cobalt gave up on is found by
    reconciliation once connections free up, with no restart.
    """
    env = FAST | {"JOB_DEADLINE_SECONDS": str(size.deadline_seconds)}
    planned = plan_jobs(size.jobs)
    with (
        capped_postgres_database(server_url, 20) as database_url,
        _system(database_url, tmp_dir, env, 2.5) as system,
    ):
        log(f"connection-cap: submitting {len(planned)} jobs")
        started = time.monotonic()
        job_ids, retries = submit_all(system, planned)
        wait_for("the worker to send every job it may send now", lambda: _all_sent(system), 60)
        # Outcomes come 2.5 s after each acceptance: the burst falls into the full spell.
        hogs: list[psycopg.Connection[Any]] = []
        stop_at = time.monotonic() + full_seconds
        try:
            while time.monotonic() < stop_at:
                _take_the_web_connections(server_url, database_url, hogs)
                time.sleep(0.2)
            log(f"connection-cap: the server was full for {full_seconds:.0f} s")
        finally:
            for hog in hogs:
                hog.close()
        wait_for("gunicorn to serve again", lambda: _ready(system), 30)
        wait_until_settled(system, size.deadline_seconds + 30, log)
        elapsed = time.monotonic() - started
        account = account_for(
            f"connection-cap: {size.jobs} jobs, a 20-connection database full for "
            f"{full_seconds:.0f} s mid-burst",
            system,
            planned,
            job_ids,
            elapsed=elapsed,
            submit_retries=retries,
        )
        refused = sum(1 for a in sandbox_deliveries(system) if not _ok(a))
        account.add("webhook attempts refused while the database was full", refused, "refused")
        account.add("other clients holding the spare connections", len(hogs), "hogs")
        return account


def _take_the_web_connections(
    server_url: str, database_url: str, hogs: list[psycopg.Connection[Any]]
) -> None:
    """End the web processes' connections and take every free slot, as another client of the
    plan would: the web's next requests find the server full."""
    with psycopg.connect(psycopg_url(server_url), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = 'webhook-service:web'",
            (make_url(database_url).database,),
        )
    while True:
        try:
            hogs.append(psycopg.connect(psycopg_url(database_url)))
        except psycopg.OperationalError:
            return


def _ready(system: RunningSystem) -> bool:
    try:
        with loopback() as http:
            return http.get(f"{system.web_url}/readyz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def same_appointment_notes(
    database_url: str, tmp_dir: Path, notes: int = 3, log: Log = _stderr
) -> Account:
    """Several notes for one appointment, every webhook dropped: each must be reconciled to
    its own outcome (they go to Cobalt one at a time, so each has its own event)."""
    env = FAST | {"NOTE_EXPECTED_SECONDS": "2", "JOB_DEADLINE_SECONDS": "600"}
    planned = plan_jobs(notes, variants=("note-written",))
    planned = [
        Planned(
            p.marker,
            p.kind,
            p.variant,
            p.body | {"appointment_id": APPOINTMENTS[2]},
            p.event,
            p.error_code,
        )
        for p in planned
    ]
    with _system(database_url, tmp_dir, env, 0.2) as system:
        set_faults(system, drop_rate=1.0, seed=1)
        started = time.monotonic()
        job_ids, retries = submit_all(system, planned)
        # Each note needs one housekeeping pass (5 s) after the one before it settled.
        wait_until_settled(system, 15 + 10 * notes, log)
        return account_for(
            f"same-appointment notes: {notes} notes, every webhook dropped",
            system,
            planned,
            job_ids,
            elapsed=time.monotonic() - started,
            submit_retries=retries,
        )


def busy_day_note(
    database_url: str, tmp_dir: Path, others: int = 110, log: Log = _stderr
) -> Account:
    """A note whose webhook was dropped, on a day Cobalt's log holds more than one page of
    events (100): its outcome must still be found, however many events came after it."""
    env = FAST | {"NOTE_EXPECTED_SECONDS": "6", "JOB_DEADLINE_SECONDS": "600"}
    note = plan_jobs(1, variants=("note-failed",))
    rest = plan_jobs(others, variants=("encounter-refill", "encounter-plain"))
    with _system(database_url, tmp_dir, env, 0.2) as system:
        set_faults(system, drop_rate=1.0, seed=1)
        started = time.monotonic()
        job_ids, retries = submit_all(system, note)
        wait_for("the note's outcome (dropped)", lambda: len(sandbox_events(system)) == 1, 30)
        set_faults(system, drop_rate=0.0)
        more, more_retries = submit_all(system, rest)
        job_ids |= more
        wait_for(
            "the other outcomes",
            lambda: len(sandbox_events(system)) == 1 + others,
            60,
        )
        log(f"busy-day: {1 + others} events logged; waiting for the note's lookup")
        wait_until_settled(system, 30, log)
        return account_for(
            f"busy-day note: 1 dropped note outcome, then {others} other events",
            system,
            note + rest,
            job_ids,
            elapsed=time.monotonic() - started,
            submit_retries=retries + more_retries,
        )


def gateway_errors(database_url: str, tmp_dir: Path, size: Size, log: Log = _stderr) -> Account:
    """A gateway in front of Cobalt answers 502 (first half) or 504 (second half) with an HTML
    page: to 10% of submissions before Cobalt queued them (nothing created), to 10% after
    (created, and their webhooks sent as usual). Neither may be resent: the service cannot
    tell them apart. Each becomes `unknown`; a note queued at Cobalt settles from its webhook
    or a lookup by appointment, an encounter queued there has no id the service knows; the
    rest reach the deadline still `processing`, with attention, never `failed`."""
    env = FAST | {"JOB_DEADLINE_SECONDS": str(size.deadline_seconds)}
    planned = plan_jobs(size.jobs)
    half = len(planned) // 2
    with _system(database_url, tmp_dir, env, 0.3) as system:
        faults = {"gateway_error_rate": 0.1, "gateway_error_after_queue_rate": 0.1}
        started = time.monotonic()
        set_faults(system, **faults, gateway_status=502, seed=size.seed)
        log(f"gateway: {half} jobs behind 502s")
        job_ids, retries = submit_all(system, planned[:half])
        wait_for("the first half sent", lambda: _all_sent(system), 60)
        set_faults(system, **faults, gateway_status=504)
        log(f"gateway: {len(planned) - half} jobs behind 504s")
        more, more_retries = submit_all(system, planned[half:])
        job_ids |= more
        wait_until_settled(system, size.deadline_seconds + 30, log)
        account = account_for(
            f"gateway: {size.jobs} jobs, 20% answered 502/504 by a gateway (half after queuing)",
            system,
            planned,
            job_ids,
            elapsed=time.monotonic() - started,
            submit_retries=retries + more_retries,
        )
        sandbox_log = [line.get("event") for line in system.processes["sandbox"].log_lines()]
        gateway = sum(1 for e in sandbox_log if isinstance(e, str) and "gateway" in e)
        account.add("submissions answered by the gateway", gateway, "gateway_answers")
        return account


def foreign_events(database_url: str, tmp_dir: Path, size: Size, log: Log = _stderr) -> Account:
    """Every note Cobalt accepts is followed at once by an `appointment.failed` for the same
    appointment (another Cobalt operation on it), delivered and logged like any event, while
    the note is still in flight. None may settle or bind a note: each note ends as its own
    `note.*` outcome says."""
    env = FAST | {"JOB_DEADLINE_SECONDS": str(size.deadline_seconds)}
    planned = plan_jobs(size.jobs)
    with _system(database_url, tmp_dir, env, 1.0) as system:
        set_faults(system, foreign_event_rate=1.0, seed=size.seed)
        log(f"foreign-events: submitting {len(planned)} jobs")
        started = time.monotonic()
        job_ids, retries = submit_all(system, planned)
        wait_until_settled(system, size.deadline_seconds + 30, log)
        account = account_for(
            f"foreign events: {size.jobs} jobs, an appointment.failed beside every note",
            system,
            planned,
            job_ids,
            elapsed=time.monotonic() - started,
            submit_retries=retries,
        )
        foreign = query(
            system.database_url,
            "SELECT state, job_id IS NOT NULL, count(*) FROM webhook_deliveries"
            " WHERE event_type NOT LIKE 'note.%%' AND event_type NOT LIKE 'telephone_encounter.%%'"
            " GROUP BY 1, 2",
        )
        received = sum(int(n) for _, _, n in foreign)
        taken = sum(int(n) for _, bound, n in foreign if bound)
        account.add("foreign events received", received, "foreign_received")
        account.add("foreign events bound to a job (must be 0)", taken, "foreign_bound")
        if taken:
            account.violations.append(f"{taken} foreign event(s) were bound to a job")
        if not received:
            account.violations.append("no foreign event reached the service")
        return account


def replayed_bodies(database_url: str, tmp_dir: Path, size: Size, log: Log = _stderr) -> Account:
    """Every signed body Cobalt sent in a first round is sent again while a second round of
    notes for the same appointments is in flight: half with a new `webhook-id`, half with
    none. Each is a repeat (the signed event id decides, never the unsigned header) and
    settles nothing: above all not the new note in flight for the appointment, which a
    replayed note outcome (no job id it knows) used to settle."""
    env = FAST | {"JOB_DEADLINE_SECONDS": str(size.deadline_seconds)}
    first = plan_jobs(size.jobs, variants=PATTERN)
    with _system(database_url, tmp_dir, env, 3.0) as system:
        log(f"replay: first round, {len(first)} jobs")
        started = time.monotonic()
        job_ids, retries = submit_all(system, first)
        wait_until_settled(system, size.deadline_seconds + 30, log)
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
        more, more_retries = submit_all(system, second)
        job_ids |= more
        sent = len(first) + len(second)
        wait_for("the second round at Cobalt", lambda: len(sandbox_submissions(system)) >= sent, 30)
        log(f"replay: {len(captured)} signed bodies sent again, {len(second)} notes in flight")
        answers = Counter(
            _post_signed(system, body, None if i % 2 else f"msg_replay_{i}")
            for i, body in enumerate(captured)
        )
        wait_until_settled(system, size.deadline_seconds + 30, log)
        account = account_for(
            f"replay: {len(captured)} signed bodies sent again, {len(second)} notes in flight",
            system,
            first + second,
            job_ids,
            elapsed=time.monotonic() - started,
            submit_retries=retries + more_retries,
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


# --- The full run -----------------------------------------------------------------------------


SCENARIOS = [
    "chaos",
    "worker-kill",
    "postgres-restart",
    "web-kill",
    "connection-cap",
    "same-appointment",
    "busy-day",
    "replay",
    "gateway",
    "foreign-events",
    "callbacks",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="chaos scenario size")
    parser.add_argument("--other-jobs", type=int, default=200, help="size of the other scenarios")
    parser.add_argument(
        "--server",
        default=os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres"),
        help="PostgreSQL server URL (a throwaway database is created and dropped on it)",
    )
    parser.add_argument(
        "--only",
        choices=SCENARIOS,
        action="append",
        help="run only these scenarios (repeatable)",
    )
    args = parser.parse_args(argv)
    only = set(args.only or SCENARIOS)
    big = Size(args.jobs, deadline_seconds=120, expected_seconds=8)
    other = Size(args.other_jobs, deadline_seconds=90)
    accounts: list[Account] = []
    with tempfile.TemporaryDirectory(prefix="webhook-service-reliability-") as tmp:
        root = Path(tmp)

        def scenario(name: str, run: Callable[[str, Path], Account]) -> None:
            if name not in only:
                return
            tmp_dir = root / name
            tmp_dir.mkdir()
            started = time.monotonic()
            try:
                if name in ("postgres-restart", "connection-cap"):
                    account = run("", tmp_dir)
                else:
                    with throwaway_postgres_database(args.server) as database_url:
                        account = run(database_url, tmp_dir)
            except Exception as exc:  # a scenario that could not finish is a failed one
                account = Account(f"{name}: did not finish")
                account.violations.append(f"{type(exc).__name__}: {exc}")
            account.name = name
            account.add("scenario wall time", f"{time.monotonic() - started:.0f} s")
            print(account.table(), flush=True)
            print(flush=True)
            accounts.append(account)

        scenario("chaos", lambda url, d: chaos(url, d, big, variants=PATTERN_FULL))
        scenario("worker-kill", lambda url, d: worker_kills(url, d, other, kills=8))
        scenario("postgres-restart", lambda _, d: postgres_restart(d, other))
        scenario("web-kill", lambda url, d: web_kills(url, d, other))
        scenario("connection-cap", lambda _, d: connection_cap(args.server, d, other))
        scenario("same-appointment", lambda url, d: same_appointment_notes(url, d, notes=3))
        scenario("busy-day", lambda url, d: busy_day_note(url, d))
        scenario("replay", lambda url, d: replayed_bodies(url, d, other))
        scenario("gateway", lambda url, d: gateway_errors(url, d, other))
        scenario("foreign-events", lambda url, d: foreign_events(url, d, other))
        from reliability.callbacks import callbacks  # its own module; it imports this one

        scenario("callbacks", lambda url, d: callbacks(url, d, other))
    print(summary(accounts))
    return 1 if any(a.violations for a in accounts) else 0


def summary(accounts: list[Account]) -> str:
    """One line per scenario: the figures that must be 0, and the allowed exceptions."""
    columns = [
        ("jobs", "jobs"),
        ("lost", "lost"),
        ("dup.sub", "duplicated_submissions"),
        ("twice", "applied_twice"),
        ("wrong", "wrong"),
        ("reconciled", "reconciled"),
        ("attention", "attention"),
    ]
    header = f"{'scenario':<18}" + "".join(f" {label:>10}" for label, _ in columns) + "  result"
    lines = ["== summary ==", header]
    for account in accounts:
        name = account.name or account.title.split(":")[0]
        cells = "".join(f" {account.figures.get(key, 0):>10}" for _, key in columns)
        lines.append(f"{name:<18}{cells}  {'FAIL' if account.violations else 'ok'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
