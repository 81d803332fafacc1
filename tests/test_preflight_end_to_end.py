"""Pre-flight end to end: real web (gunicorn), worker and sandbox processes.

The worker fetches the default clinic's lists from the sandbox on its own; then the demo's
unknown-provider scenario is refused at once (422 naming `provider_id`) and never reaches
Cobalt, while the demo's ids go through and settle as before.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.processes import RunningSystem, running_system, throwaway_postgres_database
from webhook_service.http.demo import ENCOUNTER_DEFAULTS, ENCOUNTER_SCENARIOS
from webhook_service.sandbox.data import DEMO_IDS, LOCATIONS, PHARMACIES, PROVIDERS

pytestmark = pytest.mark.e2e

WAIT_SECONDS = 30.0


@pytest.fixture(params=["postgresql", "sqlite"])
def system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningSystem]:
    if request.param == "sqlite":
        with running_system(f"sqlite:///{tmp_path / 'e2e.sqlite3'}", tmp_path) as running:
            yield running
        return
    server: str = request.getfixturevalue("postgres_server_url")
    with (
        throwaway_postgres_database(server) as url,
        running_system(url, tmp_path) as running,
    ):
        yield running


def wait_for_lists(api: requests.Session, system: RunningSystem) -> dict[str, Any]:
    """The worker fetches the lists at start, before any submission: wait until it has."""
    deadline = time.monotonic() + WAIT_SECONDS
    lists: dict[str, Any] = {}
    while time.monotonic() < deadline:
        lists = {
            kind: api.get(f"{system.web_url}/v1/reference/{kind}", timeout=5).json()
            for kind in ("providers", "locations", "pharmacies")
        }
        if all(body["fetched_at"] for body in lists.values()):
            return lists
        time.sleep(0.2)
    pytest.fail(f"the worker did not fetch the lists within {WAIT_SECONDS:.0f} s: {lists}")


def scenario(key: str) -> dict[str, str]:
    fields = next(s.fields for s in ENCOUNTER_SCENARIOS if s.key == key)
    body = {name: value for name, value in (ENCOUNTER_DEFAULTS | fields).items() if value}
    return body


def test_the_demos_unknown_provider_is_refused_at_once(system: RunningSystem) -> None:
    with system.api() as api:
        lists = wait_for_lists(api, system)
        assert {i["ehr_id"] for i in lists["providers"]["items"]} == {p.ehr_id for p in PROVIDERS}
        assert {i["ehr_id"] for i in lists["locations"]["items"]} == {x.ehr_id for x in LOCATIONS}
        assert {i["ehr_id"] for i in lists["pharmacies"]["items"]} == {p.ehr_id for p in PHARMACIES}

        refused = api.post(
            f"{system.web_url}/v1/telephone-encounters",
            json=scenario("unknown_provider"),
            headers={"Idempotency-Key": "e2e-unknown-provider"},
            timeout=10,
        )
        assert refused.status_code == 422, refused.text
        assert refused.headers["Content-Type"] == "application/problem+json"
        (error,) = refused.json()["errors"]
        assert error["field"] == "provider_id"
        assert error["code"] == "provider_not_found"
        assert DEMO_IDS["unknown_provider_id"] in error["message"]
        assert "Location" not in refused.headers  # no job to poll: the answer is the outcome

        accepted = api.post(
            f"{system.web_url}/v1/telephone-encounters", json=scenario("completed"), timeout=10
        )
        assert accepted.status_code == 202, accepted.text
        job_url = system.web_url + accepted.headers["Location"]
        deadline = time.monotonic() + WAIT_SECONDS
        job = accepted.json()
        while job["status"] == "processing" and time.monotonic() < deadline:
            time.sleep(0.2)
            job = api.get(job_url, timeout=5).json()
        assert job["status"] == "completed", job

    # Cobalt never saw the refused encounter: only the accepted one was submitted.
    submitted = system.sandbox_submissions()
    assert [s["body"]["provider_id"] for s in submitted] == [DEMO_IDS["provider_id"]]
    assert system.server_errors() == []
