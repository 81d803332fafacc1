"""Callbacks end to end through the real processes (gunicorn, worker, sandbox) on both
databases: a front end registers the sandbox's receiver, its job settles by Cobalt's webhook,
and the worker's callbacks arrive signed (the receiver verifies them with the official
`standardwebhooks` package), in order; a failing receiver is retried with the same
`webhook-id`; after a rotation the new secret verifies."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.processes import RunningSystem, running_system, throwaway_postgres_database
from webhook_service.sandbox.data import DEMO_IDS

pytestmark = pytest.mark.e2e

WAIT_SECONDS = 30.0
ENV = {"CALLBACK_ALLOW_PRIVATE_NETWORKS": "true"}
ENCOUNTER = {
    "patient_mrn": DEMO_IDS["patient_mrn"],
    "provider_id": DEMO_IDS["provider_id"],
    "location_id": DEMO_IDS["location_id"],
    "assigned_to_id": DEMO_IDS["assigned_to_id"],
    "reason": "Refill request",
    "is_high_priority": "false",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningSystem]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'webhook_service.sqlite3'}"
        with running_system(url, tmp_path, env=ENV) as running:
            yield running
        return
    server: str = request.getfixturevalue("postgres_server_url")
    with (
        throwaway_postgres_database(server) as url,
        running_system(url, tmp_path, env=ENV) as running,
    ):
        yield running


def received(system: RunningSystem) -> list[dict[str, Any]]:
    response = requests.get(f"{system.sandbox_url}/callbacks/received", timeout=5)
    response.raise_for_status()
    got: list[dict[str, Any]] = response.json()["received"]
    return got


def wait_for(what: str, check: Callable[[], bool], system: RunningSystem) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {WAIT_SECONDS:.0f} s: {received(system)}")


def to_receiver(system: RunningSystem, path: str, body: dict[str, Any]) -> None:
    requests.put(f"{system.sandbox_url}/callbacks/{path}", json=body, timeout=5).raise_for_status()


def test_a_job_is_called_back_signed_retried_and_after_a_rotation(system: RunningSystem) -> None:
    api = system.api()
    registered = api.put(
        f"{system.web_url}/v1/callback", json={"url": f"{system.sandbox_url}/callbacks"}
    )
    assert registered.status_code == 201, registered.text
    to_receiver(system, "secrets", {"secrets": [registered.json()["secret"]]})

    job = api.post(f"{system.web_url}/v1/telephone-encounters", json=ENCOUNTER).json()
    wait_for(
        "callback of the settled job",
        lambda: any(r["job_status"] == "completed" for r in received(system)),
        system,
    )
    got = [r for r in received(system) if r["job_id"] == job["id"]]
    assert all(r["verified"] for r in got), got
    assert [r["job_status"] for r in got] == ["processing", "completed"], "in order"
    assert got[-1]["event_type"] == "job.updated"
    final = api.get(f"{system.web_url}/v1/jobs/{job['id']}").json()
    assert final["status"] == "completed"

    # A failing receiver: its first answer is a 500; the retry, 5 s later, carries the
    # same webhook-id (and the job's later change waits for it: in order per job).
    to_receiver(system, "behaviour", {"answers": [500]})
    second = api.post(f"{system.web_url}/v1/telephone-encounters", json=ENCOUNTER).json()
    wait_for(
        "a retried callback",
        lambda: any(r["job_id"] == second["id"] and r["answered"] == 204 for r in received(system)),
        system,
    )
    tries = [r for r in received(system) if r["job_id"] == second["id"]]
    assert [r["answered"] for r in tries][:2] == [500, 204]
    assert tries[0]["webhook_id"] == tries[1]["webhook_id"]
    assert all(r["verified"] for r in tries)

    # Rotation: the receiver switches to the new secret at once; it verifies.
    rotated = api.post(f"{system.web_url}/v1/callback/rotate-secret")
    assert rotated.status_code == 200
    to_receiver(system, "secrets", {"secrets": [rotated.json()["secret"]]})
    third = api.post(f"{system.web_url}/v1/telephone-encounters", json=ENCOUNTER).json()
    wait_for(
        "a callback after the rotation",
        lambda: any(
            r["job_id"] == third["id"] and r["job_status"] == "completed" for r in received(system)
        ),
        system,
    )
    after = [r for r in received(system) if r["job_id"] == third["id"]]
    assert all(r["verified"] for r in after), after
    assert system.server_errors() == []
