"""The demo page in a real browser (Debian's Chromium through Playwright), against the real
web, worker and sandbox processes: every scenario ends with the status the sandbox decides,
422 field errors land next to their fields, and the finished page is saved as `docs/demo.png`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright

from tests.conftest import CHROMIUM_ARGS
from tests.processes import ROOT, RunningSystem, running_system, throwaway_postgres_database
from webhook_service.sandbox.data import DEMO_IDS, PATIENTS, PROVIDERS

pytestmark = pytest.mark.e2e

SCREENSHOT = ROOT / "docs" / "demo.png"
SETTLE_MS = 30_000


@pytest.fixture
def system(postgres_server_url: str, tmp_path: Path) -> Iterator[RunningSystem]:
    with (
        throwaway_postgres_database(postgres_server_url) as database_url,
        running_system(
            database_url,
            tmp_path,
            environment="development",
            # Polls at 1 s, outcomes at 2.5 s: every job is polled while nothing changed.
            processing_seconds=2.5,
            # A deadline short enough to watch a job gain `attention` (every other job
            # settles within a few seconds).
            env={"POLL_RETRY_AFTER_SECONDS": "1", "JOB_DEADLINE_SECONDS": "15"},
        ) as running,
    ):
        yield running


@pytest.fixture
def page(chromium: Path, system: RunningSystem) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            problems: list[str] = []

            def on_console(message: ConsoleMessage) -> None:
                # HTTP errors are asserted where they are expected (the 422); any other
                # console error is a script error or a CSP violation.
                if message.type == "error" and not message.text.startswith("Failed to load"):
                    problems.append(f"console: {message.text}")

            page.on("console", on_console)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.goto(system.web_url + "/")
            yield page
            assert problems == []
        finally:
            browser.close()


def wait_for_lists(system: RunningSystem) -> None:
    with system.api() as api:
        for _ in range(150):
            body = api.get(f"{system.web_url}/v1/reference/providers", timeout=5).json()
            if body["fetched_at"]:
                return
            time.sleep(0.2)
    pytest.fail("the worker did not fetch the clinic's lists")


def submit(page: Page, form: str, scenario: str) -> str:
    """Pick a scenario, submit the form, and return the new job row's job id."""
    rows = page.locator("#jobs > li")
    before = rows.count()
    page.locator(f"{form} .scenario").select_option(scenario)
    page.locator(f"{form} button[type=submit]").click()
    expect(rows).to_have_count(before + 1)
    job_id = rows.first.get_attribute("data-job-id")
    assert job_id
    return job_id


def test_every_scenario_settles_on_the_page(
    page: Page, system: RunningSystem, tmp_path: Path
) -> None:
    # A field Cobalt would refuse is a 422, shown next to the field; no job is created.
    encounter = page.locator("#encounter-form")
    encounter.locator("[name=reason]").fill("x" * 51)
    encounter.locator("button[type=submit]").click()
    expect(encounter.locator('[data-error-for="reason"]')).to_have_text(
        "must be at most 50 characters"
    )
    expect(encounter.locator("[name=reason]")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#jobs > li")).to_have_count(0)
    encounter.locator("[name=reason]").fill("Refill request")

    # The id fields offer the clinic's EMR lists, which the worker fetches at start; an id
    # in none of them is refused at once (pre-flight), next to its field, and nothing is made.
    wait_for_lists(system)
    page.reload()
    providers = page.locator("#providers-options option")
    expect(providers).to_have_count(len(PROVIDERS))
    expect(page.locator("#picker-state")).to_contain_text(f"{len(PROVIDERS)} providers")
    encounter = page.locator("#encounter-form")
    encounter.locator(".scenario").select_option("unknown_provider")
    encounter.locator("button[type=submit]").click()
    expect(encounter.locator('[data-error-for="provider_id"]')).to_contain_text(
        "not in the clinic's EMR list of providers"
    )
    expect(page.locator("#jobs > li")).to_have_count(0)

    note_text = submit(page, "#note-form", "completed")
    page.locator("#note-form .note-format").select_option("soap")
    # The same appointment as the note above: it waits its turn, then completes too.
    note_soap = submit(page, "#note-form", "completed")
    note_failed = submit(page, "#note-form", "failed")
    # A text note whose format picker changes while its request is in flight is still
    # titled by the body it sent.
    page.locator("#note-form .note-format").select_option("text")
    rows = page.locator("#jobs > li")
    before = rows.count()
    page.evaluate(
        """() => {
            const form = document.getElementById("note-form");
            form.querySelector("button[type=submit]").click();
            form.querySelector(".note-format").value = "soap";
        }"""
    )
    expect(rows).to_have_count(before + 1)
    expect(rows.first.locator(".job-title")).not_to_contain_text("SOAP")
    note_switched = rows.first.get_attribute("data-job-id")
    page.locator("#note-form .note-format").select_option("soap")
    completed = submit(page, "#encounter-form", "completed")
    partial = submit(page, "#encounter-form", "partial")
    medication = submit(page, "#encounter-form", "medication")
    chart = submit(page, "#encounter-form", "chart")
    expect(encounter.locator(".form-error")).to_be_empty()

    expected = {
        note_text: ("completed", None),
        note_soap: ("completed", None),
        note_failed: ("failed", "appointment_not_found"),
        note_switched: ("failed", "appointment_not_found"),
        completed: ("completed", None),
        partial: ("partial", "refill_not_added"),
        medication: ("failed", "medication_not_found"),
        chart: ("failed", "chart_locked"),
    }
    for job_id, (status, code) in expected.items():
        row = page.locator(f'#jobs > li[data-job-id="{job_id}"]')
        expect(row.locator(".status")).to_have_text(status, timeout=SETTLE_MS)
        expect(row.locator(".job-message")).not_to_be_empty()
        if code is None:
            expect(row.locator(".error-code")).to_have_count(0)
        else:
            expect(row.locator(".error-code")).to_have_text(code)

    patient = next(p for p in PATIENTS if p.mrn == DEMO_IDS["patient_mrn"])
    medications = page.locator(f'#jobs > li[data-job-id="{medication}"] .medications li')
    expect(medications).to_have_text(patient.refillable_medications)
    # Followed through each job's event stream, not polled: the page says so for every job,
    # and how long after the webhook settled it the outcome was on the page.
    for job_id in expected:
        meta = page.locator(f'#jobs > li[data-job-id="{job_id}"] .job-meta')
        expect(meta).to_contain_text("followed by its event stream")
        expect(meta).to_have_text(re.compile(r"on this page \d+ ms after it settled"))
        expect(meta).not_to_contain_text("polls")

    assert len(system.sandbox_submissions()) == len(expected)
    assert system.server_errors() == []

    # The README's screenshot: refreshed on request, so a test run leaves the tree clean.
    shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "demo.png"
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_a_job_whose_fate_is_unknown_asks_for_a_chart_check(
    page: Page, system: RunningSystem
) -> None:
    """A gateway answers 504 and Cobalt never got the note: the page keeps it `processing`
    and, past the deadline, tells the user to check the chart before resubmitting."""
    job_id = submit(page, "#note-form", "attention")
    row = page.locator(f'#jobs > li[data-job-id="{job_id}"]')
    expect(row.locator(".job-attention")).to_contain_text("check the chart", timeout=45_000)
    expect(row).to_have_attribute("data-attention", "no_outcome")
    expect(row.locator(".status")).to_have_text("processing")
    expect(row.locator(".job-meta")).to_contain_text("submission unknown")
    assert system.sandbox_submissions() == []  # the gateway answered; Cobalt never had it
