"""The support console: sign-in, CSRF, pages over the support services, audited actions."""

from __future__ import annotations

import html
import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
import requests
import responses
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tests.conftest import COBALT, START, FakeClock, event, make_settings, new_token
from tests.test_lifecycle_http import accept_encounter, accept_note
from tests.test_support import audits, break_applying, encounter, events_log, note, reject_notes
from webhook_service.db import transaction
from webhook_service.http import create_app
from webhook_service.http.console import words
from webhook_service.lifecycle import ATTENTION_MESSAGES, JobStatus, Submission
from webhook_service.models import Job
from webhook_service.services import revoke_client
from webhook_service.services.deliveries import DeliveryState
from webhook_service.services.support_inbox import INBOX_STATES

# --- Helpers ----------------------------------------------------------------------------------


class Console:
    """A browser in miniature: the session cookie, and the CSRF token its pages carry."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self._csrf: str | None = None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, **kwargs)

    def post(self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True) -> Any:
        form = dict(data or {})
        if csrf:
            form["csrf_token"] = self.csrf()
        return self.client.post(path, data=form)

    def csrf(self) -> str:
        if self._csrf is None:
            page = self.client.get("/console/login")
            if page.status_code != 200:  # signed in: the sign-out form carries it too
                page = self.client.get("/console/inbox")
            self._csrf = csrf_of(page.text)
        return self._csrf

    def sign_in(self, token: str, **fields: str) -> Any:
        self._csrf = None
        response = self.post("/console/login", {"token": token, **fields})
        self._csrf = None  # signing in starts a new session, with a new token
        return response


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, "no CSRF token on the page"
    return found.group(1)


def text_of(page: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}"[^>]*>(.*?)</', page, re.S)
    assert found, f"no #{element_id} on the page"
    return " ".join(html.unescape(found.group(1)).split())  # as a browser shows it


def all_text_of(page: str, element_id: str, tag: str) -> str:
    """An element's whole text, tags inside it removed (`text_of` stops at the first)."""
    found = re.search(rf'<{tag} id="{element_id}"[^>]*>(.*?)</{tag}>', page, re.S)
    assert found, f"no #{element_id} on the page"
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", found.group(1))).split())


def anonymous(app: Flask) -> Console:
    return Console(app.test_client(token=""))


@pytest.fixture
def staff(app: Flask, sessions) -> Console:
    """Support staff signed in to the console as `support-1`."""
    console = anonymous(app)
    response = console.sign_in(new_token(sessions, "support-1", "support"))
    assert response.status_code == 303, response.text
    return console


def failed_note(client, worker, cobalt, appointment: str = "728948") -> str:
    reject_notes(cobalt)
    job_id = note(client, appointment)
    worker.run_once()
    return job_id


def count_jobs(sessions) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


# --- Signing in and out -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/console/",
        "/console/jobs?status=failed",
        "/console/jobs/5f0c1b9e-0000-4000-8000-000000000001",
    ],
)
def test_an_unauthenticated_visit_is_sent_to_sign_in(app, path):
    response = anonymous(app).get(path)
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/console/login?next=")
    assert anonymous(app).get("/console/inbox").status_code == 303
    assert anonymous(app).get("/console/deliveries/1").status_code == 303


def test_sign_in_keeps_only_the_client_id_in_a_hardened_cookie(app, sessions):
    console = anonymous(app)
    login = console.get("/console/login?next=/console/inbox")
    assert 'type="password" name="token"' in login.text
    token = new_token(sessions, "alice", "support")
    response = console.sign_in(token, next="/console/inbox")
    assert response.status_code == 303
    assert response.headers["Location"] == "/console/inbox"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("console_session=")
    for flag in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/console"):
        assert flag in cookie
    assert token not in cookie
    assert token[4:20] not in cookie
    assert "alice" in console.get("/console/").text
    [entry] = audits(sessions, "console.sign_in")
    assert (entry.actor, entry.detail) == ("alice", {"via": "console"})

    signed_out = console.post("/console/logout")
    assert signed_out.status_code == 303
    assert "Signed out." in console.get(signed_out.headers["Location"]).text
    assert console.get("/console/").status_code == 303
    assert len(audits(sessions, "console.sign_out")) == 1


def test_the_cookie_is_not_secure_in_development(database_url, sessions):
    app = create_app(make_settings(database_url, WEBHOOK_SERVICE_ENV="development"))
    try:
        response = Console(app.test_client()).sign_in(new_token(sessions, "dev", "support"))
        assert "Secure" not in response.headers["Set-Cookie"]
        assert "HttpOnly" in response.headers["Set-Cookie"]
    finally:
        app.extensions["webhook_service"]["engine"].dispose()


@pytest.mark.parametrize("who", ["frontend", "revoked", "unknown", "blank"])
def test_only_an_active_support_token_signs_in(app, sessions, who):
    token = {
        "frontend": new_token(sessions, "web-app", "frontend"),
        "revoked": new_token(sessions, "bob", "support"),
        "unknown": "wst_" + "x" * 43,
        "blank": "   ",
    }[who]
    if who == "revoked":
        with transaction(sessions) as session:
            revoke_client(session, "bob", START)
    console = anonymous(app)
    response = console.sign_in(token)
    assert response.status_code == 401
    assert "cannot sign in here" in response.text
    assert console.get("/console/").status_code == 303
    assert audits(sessions, "console.sign_in") == []


def test_a_revoked_token_loses_access_at_once(staff, sessions):
    assert staff.get("/console/").status_code == 200
    with transaction(sessions) as session:
        revoke_client(session, "support-1", START)
    response = staff.get("/console/jobs")
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/console/login")


def test_a_cookie_captured_before_sign_out_no_longer_works(app, sessions):
    token = new_token(sessions, "alice", "support")
    console = anonymous(app)
    assert console.sign_in(token).status_code == 303
    captured = console.client.get_cookie("console_session", path="/console")
    assert captured is not None
    colleague = anonymous(app)
    assert colleague.sign_in(new_token(sessions, "bob", "support")).status_code == 303
    assert console.post("/console/logout").status_code == 303

    replayed = anonymous(app)
    replayed.client.set_cookie("console_session", captured.value, path="/console")
    response = replayed.get("/console/jobs")
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/console/login")
    assert colleague.get("/console/").status_code == 200  # another person's session lives on
    assert console.sign_in(token).status_code == 303  # and alice may sign in again
    assert console.get("/console/").status_code == 200


def test_a_session_ends_twelve_hours_after_sign_in(staff, clock: FakeClock):
    clock.advance(hours=11, minutes=59)
    assert staff.get("/console/").status_code == 200
    clock.advance(minutes=2)
    assert staff.get("/console/").status_code == 303


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/v1/jobs"])
def test_sign_in_returns_only_to_console_pages(app, sessions, target):
    console = anonymous(app)
    response = console.sign_in(new_token(sessions, "carol", "support"), next=target)
    assert response.headers["Location"] == "/console/"


# --- CSRF and headers ---------------------------------------------------------------------------


def test_a_post_without_a_valid_csrf_token_is_400_and_does_nothing(
    staff, client, worker, cobalt, sessions
):
    failed = failed_note(client, worker, cobalt)
    before = count_jobs(sessions)
    for form in ({"reason": "x"}, {"reason": "x", "csrf_token": "forged"}):
        response = staff.post(f"/console/jobs/{failed}/retry", form, csrf=False)
        assert response.status_code == 400
        assert response.mimetype == "text/html"
        assert "nothing was done" in response.text
    assert count_jobs(sessions) == before
    assert audits(sessions, "job.retry") == []
    assert staff.post(f"/console/jobs/{failed}/details", csrf=False).status_code == 400
    assert audits(sessions, "job.read") == []
    # Signing in needs the token too; the JSON API and webhooks use no cookie and no CSRF.
    fresh = anonymous(staff.client.application)
    assert fresh.post("/console/login", {"token": "x"}, csrf=False).status_code == 400
    assert client.post("/v1/notes", json={"appointment_id": "2", "note": "x"}).status_code == 202


def test_console_pages_are_never_cached_and_load_nothing_but_the_stylesheet(staff):
    page = staff.get("/console/")
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert "script-src" not in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script" not in page.text
    assert " style=" not in page.text
    stylesheet = staff.get("/console/static/console.css")
    assert stylesheet.status_code == 200
    assert stylesheet.mimetype == "text/css"


# --- Dashboard, list, search --------------------------------------------------------------------


def test_dashboard_counts_today_and_the_week_and_shows_what_needs_a_person(
    staff, client, worker, cobalt, post_webhook, clock: FakeClock
):
    clock.now = START - timedelta(days=2)
    failed_note(client, worker, cobalt, "1")
    clock.now = START
    cobalt.replace(responses.POST, f"{COBALT}/notes", json={"success": True, "message": "ok"})
    note(client, "2")
    worker.run_once()
    post_webhook(event("note.created", appointment_id="2"))
    accept_encounter(cobalt)
    encounter(client)
    worker.run_once()
    clock.advance(minutes=3)  # the encounter is overdue (2 min expected)
    post_webhook(event("login_required"))  # the clinic must be re-linked: open jobs flagged

    page = staff.get("/console/")
    assert page.status_code == 200
    counts = dict(
        (status, (int(today), int(week)))
        for status, today, week in re.findall(
            r'data-status="(\w+)">.*?<a [^>]*>(\d+)</a>.*?<a [^>]*>(\d+)</a>', page.text, re.S
        )
    )
    assert counts == {
        "processing": (1, 1),
        "completed": (1, 1),
        "partial": (0, 0),
        "failed": (0, 1),
    }
    assert text_of(page.text, "overdue-count") == "1"
    assert text_of(page.text, "flagged-count") == "2"
    assert "<strong>default</strong>" in page.text  # the clinic to re-link
    assert len(re.findall(r'<rect class="bar bar-', page.text)) == 3  # failed; completed, open


def test_dashboard_counts_webhooks_waiting_in_the_inbox_beside_flagged_jobs(staff, post_webhook):
    # An outcome for a note no job matches (yet): no job is flagged, but it waits for a person.
    post_webhook(event("note.created", appointment_id="NO-SUCH-NOTE"))
    page = staff.get("/console/").text
    assert text_of(page, "flagged-count") == "0"
    assert text_of(page, "inbox-count") == "1"
    tile = re.search(r'<a class="tile[^"]*" href="([^"]+)">\s*<span[^>]*id="inbox-count"', page)
    assert tile
    assert tile.group(1) == "/console/inbox"
    assert "webhooks in the inbox" in page


def test_job_list_filters_like_the_api_and_pages_by_cursor(
    staff, client, worker, cobalt, clock: FakeClock
):
    failed = failed_note(client, worker, cobalt, "1")
    opened = []
    for _ in range(3):
        clock.advance(seconds=1)
        opened.append(encounter(client))

    def listed(query: str) -> list[str]:
        response = staff.get(f"/console/jobs{query}")
        assert response.status_code == 200, response.text
        return re.findall(r'<tr data-job-id="([^"]+)"', response.text)

    assert listed("?status=failed") == [failed]
    assert listed("?kind=telephone_encounter&status=&clinic=") == opened[::-1]
    assert listed("?created_to=2026-11-23") == []
    assert listed("?overdue=false&flagged=false") == [*opened[::-1], failed]
    first = staff.get("/console/jobs?limit=2&kind=telephone_encounter").text
    more = html.unescape(re.search(r'href="([^"]*cursor=[^"]*)"', first).group(1))
    assert "kind=telephone_encounter" in more
    assert "limit=2" in more
    assert re.findall(r'data-job-id="([^"]+)"', staff.get(more).text) == [opened[0]]

    bad = staff.get("/console/jobs?created_from=soon&status=done")
    assert bad.status_code == 422
    assert "created from" in bad.text
    assert "status" in bad.text


def test_search_is_a_post_and_the_term_never_reaches_a_url_or_the_audit_log(
    staff, client, sessions
):
    mrn = "MRN-CONSOLE-5521"
    mine = encounter(client, mrn)
    encounter(client, "MRN-OTHER")
    found = staff.post("/console/jobs/search", {"patient_mrn": mrn, "kind": "telephone_encounter"})
    assert found.status_code == 200
    assert re.findall(r'<tr data-job-id="([^"]+)"', found.text) == [mine]
    assert f'name="patient_mrn" value="{mrn}"' in found.text  # kept in the form, not a link
    assert not re.search(rf'href="[^"]*{mrn}', found.text)
    [entry] = audits(sessions, "jobs.search")
    assert entry.detail["searched_by"] == ["patient_mrn"]
    assert mrn not in str(entry.detail)

    in_url = staff.get(f"/console/jobs?patient_mrn={mrn}")
    assert in_url.status_code == 422
    assert "never put in a URL" in in_url.text
    assert mine not in in_url.text
    assert staff.post("/console/jobs/search", {"patient_mrn": " "}).status_code == 422


# --- The job page -------------------------------------------------------------------------------


def test_job_page_hides_phi_until_show_details_and_each_click_is_audited(
    staff, client, worker, cobalt, post_webhook, sessions
):
    accept_encounter(cobalt)
    job_id = encounter(client, "MRN-PHI-CANARY")
    worker.run_once()
    post_webhook(
        event(
            "telephone_encounter.failed",
            job_id="4242",
            telephone_encounter_id="te_77",
            message="Medication not found for CANARY-MESSAGE",
            available_medications=["Canarycillin 5 mg"],
        )
    )
    secrets = ("MRN-PHI-CANARY", "CANARY-MESSAGE", "Canarycillin")

    page = staff.get(f"/console/jobs/{job_id}")
    assert page.status_code == 200
    assert text_of(page.text, "job-status") == "failed"
    assert text_of(page.text, "error-code") == "medication_not_found"
    assert "submission_accepted" in page.text
    assert "telephone_encounter.failed" in page.text
    for secret in secrets:
        assert secret not in page.text
    assert audits(sessions, "job.read") == []

    shown = staff.post(f"/console/jobs/{job_id}/details")
    assert shown.status_code == 200
    assert shown.headers["Cache-Control"] == "no-store"
    for secret in secrets:
        assert secret in shown.text  # request, outcome, and the raw webhook body
    assert text_of(shown.text, "error-message") == "Medication not found for CANARY-MESSAGE"
    assert len(audits(sessions, "delivery.read")) == 1
    staff.post(f"/console/jobs/{job_id}/details")
    reads = audits(sessions, "job.read")
    assert [(str(e.job_id), e.actor, e.detail) for e in reads] == [
        (job_id, "support-1", {"via": "console"})
    ] * 2
    assert 'data-action="job.read"' in staff.get(f"/console/jobs/{job_id}").text


def test_details_show_every_key_of_the_outcome_including_cobalts_own(
    staff, client, worker, cobalt, post_webhook
):
    accept_encounter(cobalt)
    job_id = encounter(client, "MRN-1")
    worker.run_once()
    post_webhook(
        event(
            "telephone_encounter.created_partial",
            job_id="4242",
            telephone_encounter_id="te_77",
            refill_failure_reason="Pharmacy <closed> for e-prescriptions",
            available_medications=["Lisinopril 10 mg", "Metformin 500 mg"],
            refill_attempt={"step": "pharmacy", "tries": 2},
        )
    )
    shown = staff.post(f"/console/jobs/{job_id}/details").text
    outcome = shown[shown.index('id="outcome"') : shown.index("<h3>Request</h3>")]
    assert "<code>refill_failure_reason</code>" in outcome
    assert "Pharmacy &lt;closed&gt; for e-prescriptions" in outcome  # as text, escaped
    assert "<li>Metformin 500 mg</li>" in outcome
    assert "&#34;tries&#34;: 2" in outcome


def test_a_job_page_explains_its_states_in_plain_words(staff, client, worker, cobalt):
    cobalt.add(responses.POST, f"{COBALT}/notes", body=requests.ReadTimeout("slow"))
    job_id = note(client)
    worker.run_once()  # no answer: the submission is unknown
    page = html.unescape(staff.get(f"/console/jobs/{job_id}").text)
    assert re.search(r"unknown, 1 attempt\s*<span class=\"explain\">it may or may not have", page)
    assert "waiting for Cobalt to report what happened in the chart" in page
    assert "no answer from Cobalt: the request may or may not have reached it" in page  # timeline


def test_every_state_the_console_shows_has_plain_words():
    assert set(words.JOB_STATUSES) == {str(s) for s in JobStatus}
    assert set(words.SUBMISSIONS) == {str(s) for s in Submission}
    states = {value for name, value in vars(DeliveryState).items() if name.isupper()}
    assert set(words.DELIVERY_STATES) == states
    assert set(words.ATTENTION) == set(ATTENTION_MESSAGES)


def test_the_inbox_explains_every_delivery_state_it_lists_in_plain_words(staff):
    page = staff.get("/console/inbox").text
    explained = all_text_of(page, "delivery-states", "dl")
    listed = re.findall(r'<option value="(\w+)"', page)
    assert listed == [str(s) for s in INBOX_STATES]
    assert "held" in listed  # signed but too old: kept for a person
    for state in listed:
        assert f"{state} {words.DELIVERY_STATES[state]}" in explained


def test_unknown_jobs_deliveries_and_pages_are_friendly_404_pages(staff):
    paths = (
        f"/console/jobs/{uuid.uuid4()}",
        "/console/jobs/nope",
        "/console/deliveries/9",
        "/console/no-such-page",
    )
    for path in paths:
        response = staff.get(path)
        assert response.status_code == 404
        assert response.mimetype == "text/html"
        assert "Back to the dashboard" in response.text
        assert response.headers["Cache-Control"] == "no-store"


def test_retry_through_the_form_makes_a_new_job_and_audits_it(
    staff, client, worker, cobalt, sessions
):
    failed = failed_note(client, worker, cobalt)
    page = staff.get(f"/console/jobs/{failed}").text
    assert 'id="retry-form"' in page
    assert "confirm_not_in_emr" not in page  # rejected by Cobalt: nothing to confirm

    missing = staff.post(f"/console/jobs/{failed}/retry", {"reason": "  "})
    assert missing.status_code == 422
    assert "reason" in text_of(missing.text, "retry-error")
    response = staff.post(f"/console/jobs/{failed}/retry", {"reason": "appointment fixed"})
    assert response.status_code == 303
    new_id = response.headers["Location"].rsplit("/", 1)[1]
    new_page = staff.get(response.headers["Location"]).text
    assert f"Retried job {failed} as this new job" in new_page
    assert text_of(new_page, "job-status") == "processing"
    [entry] = audits(sessions, "job.retry")
    assert (str(entry.job_id), entry.actor) == (failed, "support-1")
    assert entry.detail["reason"] == "appointment fixed"
    assert entry.detail["new_job_id"] == new_id
    assert entry.detail["via"] == "console"
    old_page = staff.get(f"/console/jobs/{failed}").text
    assert text_of(old_page, "retried-as") == new_id
    assert "appointment fixed" in old_page  # the audit entry, on the job page


def test_a_refused_retry_shows_the_services_reason_with_409(
    staff, client, worker, cobalt, sessions, clock: FakeClock
):
    accept_note(cobalt)
    job_id = note(client)
    worker.run_once()
    events_log(cobalt)  # Cobalt's log has nothing for it
    clock.advance(minutes=31)
    worker.run_once()
    with transaction(sessions) as db:  # failed with no proof (as before the deadline rule)
        row = db.get(Job, uuid.UUID(job_id))
        row.status, row.error_code, row.attention_code = "failed", "no_outcome", None
        row.finished_at, row.inflight_key = clock(), None
    page = staff.get(f"/console/jobs/{job_id}").text
    assert 'name="confirm_not_in_emr"' in page  # the service will ask for it
    outlook = text_of(page, "retry-outlook")
    assert "may have reached Cobalt (Cobalt accepted it and never reported an outcome)" in outlook
    # The next steps are the button and the checkbox on this page, not API calls.
    assert "press Reconcile now on this page" in outlook
    assert "tick \u201cI checked the chart\u201d and press Retry" in outlook
    before = count_jobs(sessions)

    refused = staff.post(f"/console/jobs/{job_id}/retry", {"reason": "caller asked"})
    assert refused.status_code == 409
    assert "I checked the chart" in text_of(refused.text, "retry-error")
    confirmed = staff.post(
        f"/console/jobs/{job_id}/retry", {"reason": "chart checked", "confirm_not_in_emr": "yes"}
    )
    assert confirmed.status_code == 409
    assert "press Reconcile now on this page" in text_of(confirmed.text, "retry-error")
    for shown in (page, refused.text, confirmed.text):
        for api_words in ("POST /v1", "confirm_not_in_emr:", "/reconcile)"):
            assert api_words not in html.unescape(shown)
    assert count_jobs(sessions) == before
    assert audits(sessions, "job.retry") == []

    clock.advance(seconds=1)
    reconciled = staff.post(f"/console/jobs/{job_id}/reconcile", {"reason": "before retry"})
    assert reconciled.status_code == 303
    # The flash says the lookup found nothing, never an outcome it did not find.
    notice = html.unescape(staff.get(reconciled.headers["Location"]).text)
    assert "Cobalt's log has no outcome for this job yet (searched 0 events)" in notice
    assert "Looked the job up" not in notice
    retried = staff.post(
        f"/console/jobs/{job_id}/retry", {"reason": "chart checked", "confirm_not_in_emr": "yes"}
    )
    assert retried.status_code == 303
    assert [e.detail["confirm_not_in_emr"] for e in audits(sessions, "job.retry")] == [True]


def test_reconcile_now_applies_what_cobalt_logged_and_explains_a_failure(
    staff, client, worker, cobalt, sessions
):
    accept_encounter(cobalt)
    job_id = encounter(client)
    worker.run_once()
    cobalt.add(responses.GET, f"{COBALT}/webhook-events", status=503)
    broken = staff.post(f"/console/jobs/{job_id}/reconcile", {"reason": "caller waiting"})
    assert broken.status_code == 502
    assert "could not be read" in text_of(broken.text, "reconcile-error")

    cobalt.replace(
        responses.GET,
        f"{COBALT}/webhook-events",
        json={
            "success": True,
            "webhook_events": [
                {
                    "event_id": "evt_found",
                    "event_type": "telephone_encounter.created",
                    "job_id": "4242",
                    "data": {"telephone_encounter_id": "te_77"},
                    "created_at": "2026-11-23T12:00:30Z",
                }
            ],
            "pagination": {},
        },
    )
    response = staff.post(f"/console/jobs/{job_id}/reconcile", {"reason": "caller waiting"})
    assert response.status_code == 303
    page = html.unescape(staff.get(response.headers["Location"]).text)
    assert "Found telephone_encounter.created in Cobalt's log: the job is now completed." in page
    assert text_of(page, "job-status") == "completed"
    entries = audits(sessions, "job.reconcile")
    assert [(e.actor, e.detail["reason"]) for e in entries] == [("support-1", "caller waiting")] * 2


# --- Deliveries and the inbox -------------------------------------------------------------------


def test_replay_is_a_dry_run_first_then_applied_and_both_are_audited(
    staff, client, worker, cobalt, post_webhook, monkeypatch, sessions
):
    accept_encounter(cobalt)
    job_id = encounter(client)
    worker.run_once()
    break_applying(monkeypatch)
    post_webhook(
        event("telephone_encounter.created", job_id="4242", telephone_encounter_id="te_77")
    )
    monkeypatch.undo()  # the bug is fixed and deployed
    inbox = staff.get("/console/inbox?state=failed").text
    [delivery_id] = re.findall(r'href="/console/deliveries/(\d+)"', inbox)
    assert "telephone_encounter.created" in inbox

    page = staff.get(f"/console/deliveries/{delivery_id}").text
    assert "te_77" in page  # the ids are shown; the raw body is not
    assert '"job_id"' not in page
    dry = staff.post(f"/console/deliveries/{delivery_id}/replay", {"reason": "bug fixed"})
    assert dry.status_code == 200
    result = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text_of(dry.text, "dry-run")))
    assert "nothing was kept" in result
    assert 'id="apply-replay"' in dry.text
    assert 'id="settled-once"' not in dry.text
    assert re.search(r"failed\s*</span> → <span[^>]*>applied", dry.text)
    assert re.search(r"processing\s*</span> → <span[^>]*>completed", dry.text)
    assert client.get(f"/v1/jobs/{job_id}").json["status"] == "processing"

    applied = staff.post(
        f"/console/deliveries/{delivery_id}/replay",
        {"reason": csrf_free(dry.text, "reason"), "dry_run": "no"},
    )
    assert applied.status_code == 303
    after = staff.get(applied.headers["Location"]).text
    assert "the delivery went failed → applied; its job processing → completed" in after
    assert client.get(f"/v1/jobs/{job_id}").json["status"] == "completed"
    entries = audits(sessions, "delivery.replay")
    assert [(e.detail["dry_run"], e.detail["reason"]) for e in entries] == [
        (True, "bug fixed"),
        (False, "bug fixed"),
    ]
    again = staff.post(
        f"/console/deliveries/{delivery_id}/replay", {"reason": "twice", "dry_run": "no"}
    )
    assert again.status_code == 409
    assert "applied already" in text_of(again.text, "replay-error")


def test_a_dry_run_of_an_applied_delivery_offers_no_apply_button(
    staff, client, worker, cobalt, post_webhook
):
    accept_encounter(cobalt)
    job_id = encounter(client)
    worker.run_once()
    post_webhook(
        event("telephone_encounter.created", job_id="4242", telephone_encounter_id="te_77")
    )
    job_page = staff.get(f"/console/jobs/{job_id}").text
    [delivery_id] = re.findall(r'href="/console/deliveries/(\d+)"', job_page)
    page = staff.get(f"/console/deliveries/{delivery_id}").text
    assert "a replay can only be a dry run" in text_of(page, "dry-run-only")

    dry = staff.post(f"/console/deliveries/{delivery_id}/replay", {"reason": "curious"})
    assert dry.status_code == 200
    assert 'id="apply-replay"' not in dry.text  # it would only ever answer 409
    assert "cannot be applied again" in text_of(dry.text, "settled-once")


def test_a_parked_note_outcome_shows_the_likely_job_and_never_applies_it(
    staff, client, worker, cobalt, post_webhook, clock: FakeClock
):
    accept_note(cobalt)
    first = note(client, "APPT-1")
    worker.run_once()
    post_webhook(event("note.created", appointment_id="APPT-1"))  # settles the first note
    clock.advance(minutes=1)
    # A second outcome for that appointment: no note is in flight for it, so it is parked.
    post_webhook(event("note.failed", appointment_id="APPT-1", message="EMR timeout"))
    post_webhook(event("appointment.updated", appointment_id="APPT-1"))  # not a note event
    post_webhook(event("note.created", appointment_id="APPT-OTHER"))
    clock.advance(minutes=1)
    later = note(client, "APPT-1")  # created after the delivery arrived: not its job

    inbox = staff.get("/console/inbox").text
    rows = re.findall(r'href="/console/deliveries/(\d+)">.*?<code>([\w.]+)</code>', inbox, re.S)
    by_type = {event_type: delivery_id for delivery_id, event_type in rows}
    assert re.findall(r'data-likely-job="([^"]+)"', inbox) == [first]
    page = staff.get(f"/console/deliveries/{by_type['note.failed']}").text
    likely = all_text_of(page, "likely-job", "dd")
    assert "a note for the same appointment, same clinic" in likely
    assert "never applied" in likely
    assert f'href="/console/jobs/{first}"' in page
    assert later not in page
    for other in ("appointment.updated", "note.created"):
        assert 'id="likely-job"' not in staff.get(f"/console/deliveries/{by_type[other]}").text
    assert client.get(f"/v1/jobs/{first}").json["status"] == "completed"  # nothing applied


def test_a_delivery_that_failed_to_apply_shows_the_job_with_its_cobalt_id(
    staff, client, worker, cobalt, post_webhook, monkeypatch
):
    accept_encounter(cobalt)
    job_id = encounter(client)
    worker.run_once()
    break_applying(monkeypatch)
    post_webhook(event("telephone_encounter.created", job_id="4242"))
    monkeypatch.undo()
    inbox = staff.get("/console/inbox").text
    assert re.findall(r'data-likely-job="([^"]+)"', inbox) == [job_id]
    [delivery_id] = re.findall(r'href="/console/deliveries/(\d+)"', inbox)
    page = staff.get(f"/console/deliveries/{delivery_id}").text
    assert "by the same Cobalt job id" in all_text_of(page, "likely-job", "dd")


def csrf_free(page: str, name: str) -> str:
    """The value of a hidden field the page carries (what the browser would send back)."""
    found = re.search(rf'type="hidden" name="{name}" value="([^"]*)"', page)
    assert found
    return html.unescape(found.group(1))


def test_a_delivery_body_is_shown_on_request_and_the_read_is_audited(staff, post_webhook, sessions):
    post_webhook(event("appointment.created", appointment_id="APPT-BODY-CANARY"))
    inbox = staff.get("/console/inbox").text
    assert 'data-state="unknown_type"' in inbox
    [delivery_id] = re.findall(r'href="/console/deliveries/(\d+)"', inbox)
    assert "APPT-BODY-CANARY" not in staff.get(f"/console/deliveries/{delivery_id}").text
    shown = staff.post(f"/console/deliveries/{delivery_id}/details")
    assert "APPT-BODY-CANARY" in text_of(shown.text, "body")
    [entry] = audits(sessions, "delivery.read")
    assert (entry.actor, entry.detail["delivery_id"]) == ("support-1", int(delivery_id))
    assert staff.get("/console/inbox?state=applied").status_code == 422


# --- Sign-in throttle ---------------------------------------------------------------------------


def _from(app: Flask, address: str) -> Console:
    console = anonymous(app)
    console.client.environ_base["HTTP_X_FORWARDED_FOR"] = f"203.0.113.9, {address}"
    return console


def test_repeated_failed_sign_ins_from_one_address_are_throttled(app, sessions, clock):
    clock.advance(minutes=5)  # 10 minutes left in the quarter of an hour
    guesser = _from(app, "198.51.100.7")
    for _ in range(10):
        assert guesser.sign_in("wst_" + "x" * 43).status_code == 401
    refused = guesser.sign_in(new_token(sessions, "dave", "support"))
    assert refused.status_code == 429  # even with a good token, until the quarter ends
    assert refused.headers["Retry-After"] == "600"
    assert "Too many failed sign-ins from your address. Try again in 10 minutes." in (
        html.unescape(refused.text)
    )
    assert audits(sessions, "console.sign_in") == []
    # Another address is not held back, and the quarter's end frees this one.
    assert (
        _from(app, "198.51.100.8").sign_in(new_token(sessions, "erin", "support")).status_code
        == 303
    )
    clock.advance(minutes=10)
    assert guesser.sign_in(new_token(sessions, "fay", "support")).status_code == 303


def test_a_successful_sign_in_clears_the_address_failures(app, sessions):
    office = _from(app, "198.51.100.7")
    for _ in range(9):
        assert office.sign_in("wst_wrong").status_code == 401
    assert office.sign_in(new_token(sessions, "gus", "support")).status_code == 303
    colleague = _from(app, "198.51.100.7")
    for _ in range(10):
        assert colleague.sign_in("wst_wrong").status_code == 401
    assert colleague.sign_in("wst_wrong").status_code == 429


def test_the_throttle_counts_the_address_the_router_saw_not_a_forged_one(app):
    for forged in range(11):
        console = anonymous(app)
        console.client.environ_base["HTTP_X_FORWARDED_FOR"] = f"10.0.0.{forged}, 198.51.100.7"
        status = console.sign_in("wst_wrong").status_code
    assert status == 429


def test_the_throttle_is_shared_by_every_web_process(app, settings):
    other = create_app(settings)  # a second process on the same database
    other.test_client_class = app.test_client_class
    other.extensions["webhook_service"]["clock"] = app.extensions["webhook_service"]["clock"]
    try:
        for failure in range(10):
            web = app if failure % 2 else other
            assert _from(web, "198.51.100.7").sign_in("wst_wrong").status_code == 401
        assert _from(other, "198.51.100.7").sign_in("wst_wrong").status_code == 429
        assert _from(app, "198.51.100.7").sign_in("wst_wrong").status_code == 429
    finally:
        other.extensions["webhook_service"]["engine"].dispose()
