"""The jobs a scenario submits (a mix whose outcomes the sandbox's pretend EMR decides) and the
calls that drive the running system and read both of its sides.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import requests
from sqlalchemy.engine import make_url

from tests.processes import RunningSystem
from webhook_service.sandbox.config import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
)
from webhook_service.sandbox.data import DEMO_IDS, PATIENTS, build_seed

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


def _ready(system: RunningSystem) -> bool:
    try:
        with loopback() as http:
            return http.get(f"{system.web_url}/readyz", timeout=1).status_code == 200
    except requests.RequestException:
        return False
