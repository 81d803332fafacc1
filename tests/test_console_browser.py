"""The support console in a real browser (Debian's Chromium through Playwright), against real
web, worker and sandbox processes on PostgreSQL: sign in, filter, open a failed job, read why
it failed, retry it with a reason, and find the retry in the job's audit entries.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright

from tests.conftest import CHROMIUM_ARGS
from tests.processes import BIN, ROOT, RunningSystem, running_system, throwaway_postgres_database
from webhook_service.http.demo import ENCOUNTER_DEFAULTS, ENCOUNTER_SCENARIOS, NOTE_SCENARIOS

pytestmark = pytest.mark.e2e

SETTLE_SECONDS = 30.0
SUPPORT_NAME = "e2e-support"


@pytest.fixture
def system(postgres_server_url: str, tmp_path: Path) -> Iterator[RunningSystem]:
    # The production-like environment: the session cookie is `Secure` (Chromium keeps it on
    # http://127.0.0.1, a trustworthy origin), and there is no demo page.
    with (
        throwaway_postgres_database(postgres_server_url) as database_url,
        running_system(database_url, tmp_path, environment="test") as running,
    ):
        yield running


@pytest.fixture
def page(chromium: Path, system: RunningSystem) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []

            def on_console(message: ConsoleMessage) -> None:
                # A 409 page is "Failed to load resource"; anything else (a CSP violation above
                # all) is a defect.
                if message.type == "error" and not message.text.startswith("Failed to load"):
                    problems.append(f"console: {message.text}")

            page.on("console", on_console)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            yield page
            assert problems == []
        finally:
            browser.close()


def support_token(system: RunningSystem) -> str:
    """What an operator runs: `webhook-service clients create NAME --role support`."""
    argv = [str(BIN / "webhook-service"), "clients", "create", SUPPORT_NAME, "--role", "support"]
    result = subprocess.run(
        argv, cwd=ROOT, env=system.environ, capture_output=True, check=True, timeout=60
    )
    return result.stdout.decode().strip().splitlines()[-1].strip()


def submit_every_scenario(system: RunningSystem) -> dict[str, dict[str, Any]]:
    """One job per demo scenario, through the API; returns each settled job by scenario."""
    api = system.api()
    sent: dict[str, str] = {}
    # The attention scenario never settles (a gateway's 504, no outcome): not one to wait for.
    for scenario in (s for s in NOTE_SCENARIOS if s.key != "attention"):
        body = {"note": "Patient doing well.", **scenario.fields}
        response = api.post(f"{system.web_url}/v1/notes", json=body, timeout=10)
        assert response.status_code == 202, response.text
        sent[f"note-{scenario.key}"] = response.json()["id"]
    # The unknown provider is refused at once by the pre-flight check: no job to find.
    for scenario in (s for s in ENCOUNTER_SCENARIOS if s.key != "unknown_provider"):
        body = {k: v for k, v in (ENCOUNTER_DEFAULTS | scenario.fields).items() if v}
        response = api.post(f"{system.web_url}/v1/telephone-encounters", json=body, timeout=10)
        assert response.status_code == 202, response.text
        sent[f"encounter-{scenario.key}"] = response.json()["id"]
    return {name: settled(system, job_id) for name, job_id in sent.items()}


def settled(system: RunningSystem, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        job: dict[str, Any] = (
            system.api().get(f"{system.web_url}/v1/jobs/{job_id}", timeout=10).json()
        )
        if job["status"] != "processing":
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not settle:\n{system.tails()}")


def test_support_staff_find_a_failed_job_and_retry_it(
    page: Page, system: RunningSystem, tmp_path: Path
) -> None:
    jobs = submit_every_scenario(system)
    failed = jobs["note-failed"]
    assert (failed["status"], failed["error"]["code"]) == ("failed", "appointment_not_found")
    shots = ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOT") else tmp_path

    # Not signed in: every console page sends you to sign in first, then back.
    page.goto(f"{system.web_url}/console/jobs")
    expect(page).to_have_url(re.compile(r"/console/login\?next="))
    expect(page.locator("h1")).to_have_text("Sign in")
    page.locator("input[name=token]").fill("wst_not-a-real-token")
    page.locator("button", has_text="Sign in").click()
    expect(page.locator(".problem")).to_contain_text("cannot sign in here")
    page.locator("input[name=token]").fill(support_token(system))
    page.locator("button", has_text="Sign in").click()
    expect(page).to_have_url(re.compile(r"/console/jobs$"))
    expect(page.locator(".signout .who")).to_have_text(SUPPORT_NAME)

    # The dashboard: today's counts, and the chart drawn on the server.
    page.locator("nav a", has_text="Dashboard").click()
    expect(page.locator('tr[data-status="failed"] td').nth(1)).to_have_text("3")
    expect(page.locator('tr[data-status="completed"] td').nth(1)).to_have_text("2")
    expect(page.locator("svg.chart rect")).to_have_count(3)  # today: completed, partial, failed
    page.screenshot(path=str(shots / "console-dashboard.png"), full_page=True)

    # Filter: failed notes only.
    page.locator("nav a", has_text="Jobs").click()
    filters = page.locator("#filters")
    filters.locator("select[name=status]").select_option("failed")
    filters.locator("select[name=kind]").select_option("note")
    filters.locator("button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"status=failed"))
    rows = page.locator("tr[data-job-id]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-job-id", failed["id"])
    page.screenshot(path=str(shots / "console-jobs.png"), full_page=True)

    # The job: why it failed (the code; Cobalt's words behind "Show details", audited).
    rows.first.locator("a").first.click()
    expect(page.locator("#job-status")).to_have_text("failed")
    expect(page.locator("#error-code")).to_have_text("appointment_not_found")
    expect(page.locator("#error-message")).to_have_count(0)
    page.locator("#show-details").click()
    expect(page.locator("#error-message")).not_to_be_empty()
    expect(page.locator("#request")).to_contain_text(failed_appointment())
    expect(page.locator('#audit tr[data-action="job.read"]')).to_have_count(1)

    # Retry it, with a reason; the new job is the worker's, and the old one says so.
    retry = page.locator("#retry-form")
    retry.locator("input[name=reason]").fill("front desk fixed the appointment")
    retry.locator("button[type=submit]").click()
    expect(page.locator(".notice")).to_contain_text(f"Retried job {failed['id']}")
    new_id = page.locator("#job-id").inner_text()
    assert new_id != failed["id"]
    assert settled(system, new_id)["status"] == "failed"  # the appointment still does not exist

    page.goto(f"{system.web_url}/console/jobs/{failed['id']}")
    expect(page.locator("#retried-as")).to_have_text(new_id)
    entry = page.locator('#audit tr[data-action="job.retry"]')
    expect(entry).to_have_count(1)
    expect(entry).to_contain_text(SUPPORT_NAME)
    expect(entry).to_contain_text("front desk fixed the appointment")
    expect(page.locator("#already-retried")).to_contain_text("Retried already")
    page.screenshot(path=str(shots / "console-job.png"), full_page=True)

    # What a person notices: an icon (no /favicon.ico 404 on every page), the flags column
    # a table cell like the others, and no page wider than a phone's screen.
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert icon
    answer = page.request.get(system.web_url + icon)
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("image/svg+xml")
    page.goto(f"{system.web_url}/console/jobs")
    flags = page.locator("td.flags").first
    assert flags.evaluate("cell => getComputedStyle(cell).display") == "table-cell"
    page.set_viewport_size({"width": 375, "height": 800})
    for n, path in enumerate((f"/console/jobs/{failed['id']}", "/console/jobs", "/console/")):
        page.goto(system.web_url + path)
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], (path, width)
        page.screenshot(path=str(tmp_path / f"phone-{n}.png"), full_page=True)

    assert system.server_errors() == []
    for name in ("dashboard", "jobs", "job"):
        assert (shots / f"console-{name}.png").stat().st_size > 10_000


def failed_appointment() -> str:
    return next(s.fields["appointment_id"] for s in NOTE_SCENARIOS if s.key == "failed")
