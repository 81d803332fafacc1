"""Support and jobs with `attention`: the inbox, the filter, recording what the chart shows,
and a front end learning of a retry (`retried_as`)."""

from __future__ import annotations

import re
import uuid

from click.testing import CliRunner
from sqlalchemy import select

from tests.conftest import FakeClock, event, new_token
from tests.test_console import (
    all_text_of,
    staff,  # noqa: F401  (the signed-in console fixture)
    text_of,
)
from tests.test_lifecycle_http import accept_encounter, accept_note, poll
from tests.test_support import audits, encounter, events_log, listed, note, reject_notes, timeline
from webhook_service.cli import main
from webhook_service.http.console import words
from webhook_service.models import Job

FOUND = {"reason": "looked in the EMR", "found_in_chart": True}
NOT_FOUND = {"reason": "looked in the EMR", "found_in_chart": False}


def with_attention(client, worker, cobalt, clock: FakeClock, *, kind: str = "note") -> str:
    """A job Cobalt accepted, with no outcome anywhere 31 minutes on."""
    if kind == "note":
        accept_note(cobalt, job_id="cj_1")
        job_id = note(client)
    else:
        accept_encounter(cobalt)
        job_id = encounter(client)
    worker.run_once()
    events_log(cobalt)
    clock.advance(minutes=31)
    worker.run_once()
    return job_id


# --- Finding them ------------------------------------------------------------------------------


def test_jobs_with_attention_are_in_the_inbox_the_attention_filter_and_flagged(
    client, support, worker, cobalt, clock: FakeClock
):
    waiting = with_attention(client, worker, cobalt, clock)
    accept_encounter(cobalt)
    fresh = encounter(client)
    worker.run_once()

    assert listed(support, "?attention=true") == [waiting]
    assert listed(support, "?attention=false") == [fresh]
    assert listed(support, "?flagged=true") == [waiting]
    inbox = support.get("/v1/inbox").json
    assert [job["id"] for job in inbox["attention_jobs"]] == [waiting]
    assert inbox["attention_jobs"][0]["attention"]["code"] == "no_outcome"
    assert support.get("/v1/inbox?state=parked").json["attention_jobs"] == []
    assert support.get("/v1/jobs?attention=maybe").status_code == 422


def test_the_attention_filter_is_in_the_openapi_description(client):
    spec = client.get("/openapi.json").json
    parameters = spec["paths"]["/v1/jobs"]["get"]["parameters"]
    assert "attention" in [p["name"] for p in parameters]
    assert "post" in spec["paths"]["/v1/jobs/{job_id}/chart-outcome"]


def test_the_console_inbox_lists_the_jobs_waiting_for_a_chart_check(
    staff,  # noqa: F811
    app,
    client,
    worker,
    cobalt,
    clock: FakeClock,
    sessions,
):
    api = app.test_client(token=new_token(sessions, "support-api", "support"))
    empty = staff.get("/console/inbox").text
    assert "No job is waiting for a chart check" in all_text_of(empty, "attention-jobs", "section")

    waiting = with_attention(client, worker, cobalt, clock)
    accept_encounter(cobalt)
    encounter(client)  # a fresh job: no attention
    worker.run_once()

    page = staff.get("/console/inbox").text
    section = all_text_of(page, "attention-jobs", "section")
    shown = re.findall(r'data-job-id="([^"]+)"', page)
    assert shown == [job["id"] for job in api.get("/v1/inbox").json["attention_jobs"]]
    assert shown == [waiting]
    assert f'href="/console/jobs/{waiting}"' in page
    assert "note" in section
    assert "2026-11-23 12:31:00 UTC" in section  # since the deadline passed
    assert f"accepted {words.SUBMISSIONS['accepted']}" in section
    assert words.ATTENTION["no_outcome"] in section
    assert "record what you see with the form on its page, or press Reconcile now" in section

    # Like the API's, a page filtered to one delivery state or a later page leaves them out.
    parked = staff.get("/console/inbox?state=parked").text
    assert 'id="attention-jobs"' not in parked
    assert "inbox's first page" in all_text_of(parked, "attention-elsewhere", "p")


def test_the_dashboard_says_flagged_jobs_include_those_waiting_for_a_chart_check(
    staff,  # noqa: F811
    client,
    worker,
    cobalt,
    clock: FakeClock,
):
    with_attention(client, worker, cobalt, clock)
    page = staff.get("/console/").text
    assert text_of(page, "flagged-count") == "1"
    assert text_of(page, "attention-count") == "1"
    tile = all_text_of(page, "flagged-tile", "a")
    assert "1 of them waiting for someone to check the chart (listed in the inbox)" in tile


def test_the_console_job_list_filters_by_attention(
    staff,  # noqa: F811
    client,
    worker,
    cobalt,
    clock: FakeClock,
):
    waiting = with_attention(client, worker, cobalt, clock)
    accept_encounter(cobalt)
    fresh = encounter(client)
    worker.run_once()

    form = staff.get("/console/jobs").text
    assert re.search(r'<select name="attention">\s*<option value="">any</option>', form)
    chosen = staff.get("/console/jobs?attention=true").text
    assert re.findall(r'<tr data-job-id="([^"]+)"', chosen) == [waiting]
    assert '<option value="true" selected>waiting for a chart check</option>' in chosen
    others = staff.get("/console/jobs?attention=false").text
    assert re.findall(r'<tr data-job-id="([^"]+)"', others) == [fresh]


# --- Recording what the chart shows ---------------------------------------------------------


def test_found_in_the_chart_completes_the_job_and_its_front_end_sees_it(
    client, support, worker, cobalt, clock: FakeClock, sessions
):
    job_id = with_attention(client, worker, cobalt, clock)
    before = client.get(f"/v1/jobs/{job_id}")
    clock.advance(minutes=5)

    recorded = support.post(f"/v1/jobs/{job_id}/chart-outcome", json=FOUND)
    assert recorded.status_code == 200, recorded.json
    polled = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": before.headers["ETag"]})
    assert polled.status_code == 200
    job = polled.json
    assert job["status"] == "completed"
    assert job["attention"] is None
    assert job["error"] is None
    assert job["outcome"]["event"] == "chart_confirmed"
    assert job["outcome"]["message"] == "Support found it in the chart."
    assert timeline(support, job_id)[-1] == "chart_outcome_recorded"
    [entry] = audits(sessions, "job.chart_outcome")
    assert (entry.actor, entry.detail["reason"], entry.detail["found_in_chart"]) == (
        "support-1",
        "looked in the EMR",
        True,
    )


def test_a_different_outcome_from_cobalt_afterwards_is_recorded_and_flagged(
    client, support, worker, cobalt, clock: FakeClock, post_webhook, sessions
):
    job_id = with_attention(client, worker, cobalt, clock)
    assert support.post(f"/v1/jobs/{job_id}/chart-outcome", json=FOUND).status_code == 200
    post_webhook(event("note.failed", job_id="cj_1", appointment_id="728948") | _now(clock))
    job = support.get(f"/v1/jobs/{job_id}").json
    assert job["status"] == "completed", "terminal is terminal"
    assert listed(support, "?flagged=true") == [job_id]
    assert timeline(support, job_id)[-1] == "outcome_conflict"


def test_not_in_the_chart_fails_the_job_frees_its_appointment_and_allows_a_retry(
    client, support, worker, cobalt, clock: FakeClock
):
    job_id = with_attention(client, worker, cobalt, clock)
    later = note(client)
    worker.run_once()
    assert poll(client, later)["submission"]["state"] == "waiting"

    recorded = support.post(f"/v1/jobs/{job_id}/chart-outcome", json=NOT_FOUND)
    assert recorded.status_code == 200, recorded.json
    assert recorded.json["status"] == "failed"
    assert recorded.json["error"]["code"] == "not_in_chart"
    worker.run_once()
    assert poll(client, later)["submission"]["state"] == "accepted", "the slot is free"
    retried = support.post(f"/v1/jobs/{job_id}/retry", json={"reason": "not in the chart"})
    assert retried.status_code == 202, retried.json


def test_the_chart_cannot_settle_a_job_too_early_or_twice(
    client, support, worker, cobalt, clock: FakeClock
):
    accept_encounter(cobalt)
    young = encounter(client)
    worker.run_once()
    early = support.post(f"/v1/jobs/{young}/chart-outcome", json=FOUND)
    assert early.status_code == 409
    assert early.mimetype == "application/problem+json"
    assert "expected time" in early.json["detail"]

    clock.advance(minutes=3)  # overdue, not yet past the deadline: allowed
    assert support.post(f"/v1/jobs/{young}/chart-outcome", json=FOUND).status_code == 200
    again = support.post(f"/v1/jobs/{young}/chart-outcome", json=NOT_FOUND)
    assert again.status_code == 409
    assert "completed" in again.json["detail"]
    assert poll(client, young)["status"] == "completed"


def test_chart_outcome_body_and_role_are_checked(client, support):
    job_id = note(client)
    for body in ({"reason": "x"}, {"found_in_chart": True}, {**FOUND, "found_in_chart": "yes"}):
        response = support.post(f"/v1/jobs/{job_id}/chart-outcome", json=body)
        assert response.status_code == 422, body
    missing = support.post(f"/v1/jobs/{uuid.uuid4()}/chart-outcome", json=FOUND)
    assert missing.status_code == 404
    assert client.post(f"/v1/jobs/{job_id}/chart-outcome", json=FOUND).status_code == 403


def test_the_cli_records_what_the_chart_shows_as_the_named_person(
    cli_env, client, worker, cobalt, clock: FakeClock, sessions
):
    job_id = with_attention(client, worker, cobalt, clock, kind="telephone_encounter")
    runner = CliRunner()
    listed_ = runner.invoke(main, ["jobs", "list", "--attention", "--as", "alice"], env=cli_env)
    assert listed_.exit_code == 0, listed_.output
    assert job_id in listed_.output
    shown = runner.invoke(main, ["jobs", "show", job_id, "--as", "alice"], env=cli_env)
    assert "attention: no_outcome" in shown.output
    args = ["jobs", "chart-outcome", job_id, "--not-found", "--reason", "EMR checked"]
    done = runner.invoke(main, [*args, "--as", "alice"], env=cli_env)
    assert done.exit_code == 0, done.output
    assert "failed" in done.output
    again = runner.invoke(main, [*args, "--as", "alice"], env=cli_env)
    assert again.exit_code == 1
    assert "this one is failed" in again.output
    [entry] = audits(sessions, "job.chart_outcome")
    assert (entry.actor, entry.detail["via"], entry.detail["found_in_chart"]) == (
        "alice",
        "cli",
        False,
    )


def test_the_console_job_page_records_what_the_chart_shows(
    staff,  # noqa: F811
    client,
    worker,
    cobalt,
    clock: FakeClock,
    sessions,
):
    job_id = with_attention(client, worker, cobalt, clock)
    page = staff.get(f"/console/jobs/{job_id}").text
    assert "may or may not be in the chart" in text_of(page, "attention")
    assert 'id="chart-form"' in page

    unchosen = staff.post(f"/console/jobs/{job_id}/chart-outcome", {"reason": "looked"})
    assert unchosen.status_code == 422
    assert "chart" in text_of(unchosen.text, "chart-error")
    done = staff.post(
        f"/console/jobs/{job_id}/chart-outcome", {"reason": "looked", "found_in_chart": "no"}
    )
    assert done.status_code == 303
    page = staff.get(done.headers["Location"]).text
    assert text_of(page, "job-status") == "failed"
    assert text_of(page, "error-code") == "not_in_chart"
    assert 'id="chart-form"' not in page
    [entry] = audits(sessions, "job.chart_outcome")
    assert entry.detail["via"] == "console"


# --- retried_as ---------------------------------------------------------------------------------


def test_a_front_end_polling_the_old_job_learns_of_a_support_retry(
    client, support, worker, cobalt, sessions
):
    reject_notes(cobalt)
    job_id = note(client)
    worker.run_once()
    before = client.get(f"/v1/jobs/{job_id}")
    assert before.json["retried_as"] is None
    assert (
        client.get(
            f"/v1/jobs/{job_id}", headers={"If-None-Match": before.headers["ETag"]}
        ).status_code
        == 304
    )

    retried = support.post(f"/v1/jobs/{job_id}/retry", json={"reason": "appointment fixed"})
    assert retried.status_code == 202, retried.json
    polled = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": before.headers["ETag"]})
    assert polled.status_code == 200, "the old ETag no longer matches"
    assert polled.json["retried_as"] == retried.json["id"]
    assert polled.json["status"] == "failed"
    assert poll(client, retried.json["id"])["status"] == "processing", "the same front end"
    with sessions() as session:
        assert session.scalar(select(Job.retried_as).where(Job.id == uuid.UUID(job_id)))


def _now(clock: FakeClock) -> dict[str, str]:
    """An event's `created` at the test clock's now (an old event is held for support)."""
    return {"created": clock().isoformat().replace("+00:00", "Z")}
