"""End to end: real web (gunicorn), worker and Cobalt sandbox processes, real signed webhooks.

Every outcome the sandbox can produce is submitted over HTTP and polled the way a front end
polls, until the sandbox's webhook settles it. The sandbox must have seen exactly one
submission per job.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.processes import (
    RunningSystem,
    child_pids,
    restart_worker,
    running_system,
    throwaway_postgres_database,
)
from webhook_service.sandbox.data import DEMO_IDS, PATIENTS

pytestmark = pytest.mark.e2e

DEADLINE_SECONDS = 30.0
POLL_SECONDS = 0.2


@pytest.fixture
def throwaway_postgres(postgres_server_url: str) -> Iterator[str]:
    with throwaway_postgres_database(postgres_server_url) as url:
        yield url


@dataclass
class Case:
    """One submission, the marker that finds it among the sandbox's, and what it must end as."""

    name: str
    path: str
    body: dict[str, Any]
    marker: str
    status: str
    error_code: str | None
    event: str
    available_medications: list[str] | None = None


def note(name: str, appointment_id: str, status: str, error_code: str | None) -> Case:
    marker = f"e2e-{name}-{uuid.uuid4().hex[:8]}"
    event = "note.created" if status == "completed" else "note.failed"
    body = {"appointment_id": appointment_id, "note": f"Patient doing well. {marker}"}
    return Case(name, "/v1/notes", body, marker, status, error_code, event)


def encounter(name: str, status: str, error_code: str | None, event: str, **fields: str) -> Case:
    marker = f"e2e-{name}-{uuid.uuid4().hex[:8]}"
    body = {
        "patient_mrn": DEMO_IDS["patient_mrn"],
        "provider_id": DEMO_IDS["provider_id"],
        "location_id": DEMO_IDS["location_id"],
        "assigned_to_id": DEMO_IDS["assigned_to_id"],
        "reason": "Refill request",
        "refill_medication_name": DEMO_IDS["refill_medication_name"],
        "pharmacy_ehr_id": DEMO_IDS["pharmacy_ehr_id"],
        "caller": "Alice Moreno (patient)",
        "message": f"Asks for a refill before travelling. {marker}",
        "is_high_priority": "false",
        **fields,
    }
    return Case(name, "/v1/telephone-encounters", body, marker, status, error_code, event)


def all_outcomes() -> list[Case]:
    soap = note("note-soap-same-appointment", DEMO_IDS["appointment_id"], "completed", None)
    soap.body["note"] = {
        "subjective": f"Feels better. {soap.marker}",
        "objective": "BP 120/80.",
        "assessment": "Improving.",
        "plan": "Review in 3 months.",
    }
    unknown_medication = encounter(
        "encounter-unknown-medication",
        "failed",
        "medication_not_found",
        "telephone_encounter.failed",
        refill_medication_name=DEMO_IDS["unknown_medication_name"],
    )
    patient = next(p for p in PATIENTS if p.mrn == DEMO_IDS["patient_mrn"])
    unknown_medication.available_medications = patient.refillable_medications
    return [
        note("note-completed", DEMO_IDS["appointment_id"], "completed", None),
        # The same appointment: waits until the first note settles, then goes.
        soap,
        note(
            "note-failed",
            DEMO_IDS["unknown_appointment_id"],
            "failed",
            "appointment_not_found",
        ),
        encounter("encounter-completed", "completed", None, "telephone_encounter.created"),
        encounter(
            "encounter-partial",
            "partial",
            "refill_not_added",
            "telephone_encounter.created_partial",
            pharmacy_ehr_id=DEMO_IDS["failing_pharmacy_ehr_id"],
        ),
        unknown_medication,
        encounter(
            "encounter-chart-locked",
            "failed",
            "chart_locked",
            "telephone_encounter.failed",
            patient_mrn=DEMO_IDS["locked_chart_patient_mrn"],
        ),
    ]


def submit(api: requests.Session, system: RunningSystem, case: Case) -> requests.Response:
    response = api.post(system.web_url + case.path, json=case.body, timeout=10)
    assert response.status_code == 202, (case.name, response.status_code, response.text)
    job = response.json()
    assert job["status"] == "processing"
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert response.headers["Retry-After"].isdigit()
    return response


def poll_until_settled(
    api: requests.Session, system: RunningSystem, submitted: dict[str, requests.Response]
) -> dict[str, dict[str, Any]]:
    """Poll every open job with its ETag, until all are terminal or the deadline passes."""
    etags = {name: r.headers["ETag"] for name, r in submitted.items()}
    jobs = {name: r.json() for name, r in submitted.items()}
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        open_jobs = [name for name, job in jobs.items() if job["status"] == "processing"]
        if not open_jobs:
            return jobs
        for name in open_jobs:
            url = system.web_url + submitted[name].headers["Location"]
            response = api.get(url, headers={"If-None-Match": etags[name]}, timeout=10)
            if response.status_code == 304:
                continue
            assert response.status_code == 200, (name, response.status_code, response.text)
            etags[name] = response.headers["ETag"]
            jobs[name] = response.json()
        time.sleep(POLL_SECONDS)
    stuck = {name: job for name, job in jobs.items() if job["status"] == "processing"}
    pytest.fail(f"jobs still processing after {DEADLINE_SECONDS:.0f} s: {stuck}")


def check_flow(system: RunningSystem, cases: list[Case]) -> None:
    with system.api() as api:
        submitted = {case.name: submit(api, system, case) for case in cases}
        jobs = poll_until_settled(api, system, submitted)
        for case in cases:
            check_job(api, system, case, jobs[case.name])

    # Exactly one submission reached the sandbox for each job, under the job's Cobalt id.
    submissions = system.sandbox_submissions()
    seen = Counter(
        case.name
        for submission in submissions
        for case in cases
        if case.marker in str(submission["body"])
    )
    assert seen == Counter(case.name for case in cases), submissions
    cobalt_ids = {s["job_id"] for s in submissions}
    assert {jobs[case.name]["cobalt"]["job_id"] for case in cases} == cobalt_ids
    assert len(submissions) == len(cases)
    assert system.server_errors() == []


def check_job(
    api: requests.Session, system: RunningSystem, case: Case, job: dict[str, Any]
) -> None:
    """The settled job shows Cobalt's outcome, and polling it again costs a 304."""
    assert job["status"] == case.status, (case.name, job)
    assert job["finished_at"] is not None, case.name
    assert job["outcome"]["event"] == case.event, (case.name, job)
    assert job["outcome"].get("message"), (case.name, job)
    if case.error_code is None:
        assert job["error"] is None, (case.name, job)
    else:
        assert job["error"]["code"] == case.error_code, (case.name, job)
        assert job["error"]["message"], (case.name, job)
    if case.available_medications is not None:
        assert job["outcome"]["available_medications"] == case.available_medications
    assert job["cobalt"]["job_id"], (case.name, job)
    if case.path == "/v1/telephone-encounters":
        assert job["cobalt"]["telephone_encounter_id"], (case.name, job)
    url = system.web_url + f"/v1/jobs/{job['id']}"
    final = api.get(url, timeout=10)
    assert final.status_code == 200
    assert "Retry-After" not in final.headers  # settled: no reason to come back
    again = api.get(url, headers={"If-None-Match": final.headers["ETag"]}, timeout=10)
    assert again.status_code == 304


def test_every_outcome_on_postgresql(throwaway_postgres: str, tmp_path: Path) -> None:
    with running_system(throwaway_postgres, tmp_path) as system:
        check_flow(system, all_outcomes())


def test_notes_and_an_encounter_on_sqlite(tmp_path: Path) -> None:
    """The embedded default database, with web and worker processes taking turns on it."""
    database_url = f"sqlite:///{tmp_path / 'webhook_service.sqlite3'}"
    wanted = {
        "note-completed",
        "note-soap-same-appointment",
        "note-failed",
        "encounter-unknown-medication",
    }
    cases = [case for case in all_outcomes() if case.name in wanted]
    with running_system(database_url, tmp_path) as system:
        check_flow(system, cases)


def test_sigterm_lets_the_worker_record_the_call_in_hand(
    throwaway_postgres: str, tmp_path: Path
) -> None:
    """The platform sends SIGTERM and waits 30 s before SIGKILL: a worker stopped while Cobalt
    is slow to answer finishes the call, records the reply and exits 0, so the job is
    `accepted` (its webhook settles it), not `unknown`."""
    with running_system(throwaway_postgres, tmp_path) as system:
        faults = {"submit_hang_rate": 1.0, "hang_seconds": 3.0}
        requests.post(
            f"{system.sandbox_url}/_sandbox/faults", json=faults, timeout=5
        ).raise_for_status()
        api = system.api()
        case = encounter("sigterm", "completed", None, "telephone_encounter.created")
        answer = api.post(system.web_url + case.path, json=case.body, timeout=10)
        assert answer.status_code == 202, answer.text
        url = system.web_url + f"/v1/jobs/{answer.json()['id']}"

        deadline = time.monotonic() + DEADLINE_SECONDS
        while api.get(url, timeout=10).json()["submission"]["state"] != "sending":
            assert time.monotonic() < deadline, system.tails()
            time.sleep(0.05)
        worker = system.processes["worker"]
        worker.popen.terminate()
        assert worker.popen.wait(30) == 0, system.tails()

        job = api.get(url, timeout=10).json()
        assert job["submission"]["state"] == "accepted", job
        sent = [s for s in system.sandbox_submissions() if case.marker in str(s["body"])]
        assert len(sent) == 1, sent
        while job["status"] == "processing":  # the web process still takes the webhook
            assert time.monotonic() < deadline, system.tails()
            time.sleep(POLL_SECONDS)
            job = api.get(url, timeout=10).json()
        assert job["status"] == "completed"


def test_worker_processes_share_the_work_and_stop_together(
    throwaway_postgres: str, tmp_path: Path
) -> None:
    """`WORKER_PROCESSES=2`: two forked processes submit side by side, each job once; SIGTERM
    to the command stops both cleanly (exit 0)."""
    wanted = {"note-completed", "note-failed", "encounter-unknown-medication"}
    cases = [case for case in all_outcomes() if case.name in wanted]
    with running_system(throwaway_postgres, tmp_path, env={"WORKER_PROCESSES": "2"}) as system:
        worker = system.processes["worker"]
        processes = forked(system, worker.popen.pid)
        check_flow(system, cases)
        worker.popen.terminate()
        assert worker.popen.wait(30) == 0, system.tails()
        assert not any(_alive(pid) for pid in processes)


def test_worker_processes_stop_together_when_one_dies(
    throwaway_postgres: str, tmp_path: Path
) -> None:
    """A process that dies takes the command down (exit 1) so the platform restarts it whole;
    a killed supervisor's processes stop on their own."""
    with running_system(throwaway_postgres, tmp_path, env={"WORKER_PROCESSES": "2"}) as system:
        worker = system.processes["worker"]
        first, second = forked(system, worker.popen.pid)
        os.kill(first, signal.SIGKILL)
        assert worker.popen.wait(30) == 1, system.tails()
        deadline = time.monotonic() + 10
        while _alive(second):
            assert time.monotonic() < deadline, system.tails()
            time.sleep(0.1)

        orphaned = restart_worker(system)
        children = forked(system, orphaned.popen.pid)
        os.kill(orphaned.popen.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children):
            assert time.monotonic() < deadline, system.tails()
            time.sleep(0.1)


def forked(system: RunningSystem, supervisor: int, count: int = 2) -> list[int]:
    """The worker processes a supervisor forked, once all `count` of them are there."""
    deadline = time.monotonic() + 10
    while len(found := child_pids(supervisor)) < count:
        assert time.monotonic() < deadline, system.tails()
        time.sleep(0.05)
    assert len(found) == count, system.tails()
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting to be reaped is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"
