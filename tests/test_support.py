"""The support API and CLI: find jobs, read their story, retry, reconcile, replay, export."""

from __future__ import annotations

import csv
import io
import json
import logging
import uuid
from datetime import timedelta
from typing import Any

import pytest
import requests
import responses
from click.testing import CliRunner
from sqlalchemy import select

from tests.conftest import COBALT, PHI_KEY, PHI_SEARCH_KEY, START, FakeClock, event
from tests.test_lifecycle_http import ENCOUNTER, NOTE, accept_encounter, accept_note
from webhook_service.cli import main
from webhook_service.models import AuditEvent, Clinic, WebhookDelivery

# --- Helpers ----------------------------------------------------------------------------------


def note(client, appointment: str = "728948") -> str:
    response = client.post("/v1/notes", json={**NOTE, "appointment_id": appointment})
    assert response.status_code == 202, response.json
    return str(response.json["id"])


def encounter(client, mrn: str = "MRN-1001") -> str:
    response = client.post("/v1/telephone-encounters", json={**ENCOUNTER, "patient_mrn": mrn})
    assert response.status_code == 202, response.json
    return str(response.json["id"])


def listed(support, query: str = "") -> list[str]:
    response = support.get(f"/v1/jobs{query}")
    assert response.status_code == 200, response.json
    return [job["id"] for job in response.json["jobs"]]


def audits(sessions, action: str) -> list[AuditEvent]:
    with sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def timeline(support, job_id: str) -> list[str]:
    response = support.get(f"/v1/jobs/{job_id}/events")
    assert response.status_code == 200, response.json
    return [entry["type"] for entry in response.json["events"]]


def reject_notes(cobalt) -> None:
    cobalt.add(
        responses.POST,
        f"{COBALT}/notes",
        status=400,
        json={"success": False, "message": "Appointment not found"},
    )


def events_log(cobalt, *items: dict[str, Any]) -> None:
    cobalt.add(
        responses.GET,
        f"{COBALT}/webhook-events",
        json={"success": True, "webhook_events": list(items), "pagination": {}},
    )


def break_applying(monkeypatch) -> None:
    """Make applying a webhook raise, as a bug would (`monkeypatch.undo()` deploys the fix)."""

    def boom(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("a bug while applying")

    monkeypatch.setattr("webhook_service.services.webhooks.apply_delivery", boom)


# --- Listing and filters ----------------------------------------------------------------------


def test_list_is_newest_first_and_shows_what_support_acts_on(client, support, clock, sessions):
    first = note(client, "1")
    clock.advance(seconds=1)
    second = encounter(client)
    body = support.get("/v1/jobs").json
    assert [job["id"] for job in body["jobs"]] == [second, first]
    assert body["next_cursor"] is None
    job = body["jobs"][0]
    assert job["kind"] == "telephone_encounter"
    assert (job["flagged"], job["retry_of"], job["retried_as"]) == (False, None, None)
    assert isinstance(job["clinic_id"], int)
    entry = audits(sessions, "jobs.list")[0]
    assert entry.actor == "support-1"
    assert entry.detail["job_ids"] == [second, first]


def test_list_filters_by_status_kind_and_clinic(client, support, worker, cobalt, clock):
    reject_notes(cobalt)
    failed = note(client, "1")
    worker.run_once()
    clock.advance(seconds=1)
    processing = encounter(client)
    assert listed(support, "?status=failed") == [failed]
    assert listed(support, "?status=processing") == [processing]
    assert listed(support, "?kind=telephone_encounter") == [processing]
    assert listed(support, "?kind=note&status=processing") == []
    clinic = support.get("/v1/jobs").json["jobs"][0]["clinic_id"]
    assert listed(support, f"?clinic={clinic}") == [processing, failed]
    assert listed(support, f"?clinic={clinic + 1}") == []


def test_created_range_is_half_open(client, support, clock: FakeClock):
    at_start = note(client, "1")
    clock.advance(minutes=1)
    a_minute_later = note(client, "2")
    clock.advance(minutes=1)
    note(client, "3")
    start = START.isoformat()
    one_minute = (START + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    two_minutes = (START + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%S")  # no offset: UTC
    assert listed(support, f"?created_from={one_minute}&created_to={two_minutes}") == [
        a_minute_later
    ]
    assert listed(support, f"?created_to={one_minute}") == [at_start]
    assert len(listed(support, f"?created_from={start.replace('+', '%2B')}")) == 3
    assert len(listed(support, f"?created_from={START.date().isoformat()}")) == 3


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=done", "status"),
        ("kind=fax", "kind"),
        ("clinic=abc", "clinic"),
        ("clinic=99999999999", "clinic"),
        ("created_from=yesterday", "created_from"),
        ("created_from=0001-01-01T00:00%2B01:00", "created_from"),
        ("created_from=2026-11-24&created_to=2026-11-23", "created_to"),
        ("overdue=maybe", "overdue"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("status=failed&status=completed", "status"),
        ("sort=asc", "sort"),
        ("patient_mrn=MRN-1001", "patient_mrn"),
    ],
)
def test_bad_list_parameters_are_422_naming_the_parameter(support, query, field):
    response = support.get(f"/v1/jobs?{query}")
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert field in [error["field"] for error in response.json["errors"]]


def test_overdue_lists_processing_jobs_past_their_expected_time(
    client, support, worker, cobalt, clock: FakeClock
):
    reject_notes(cobalt)
    failed_note = note(client, "1")
    worker.run_once()
    open_note = note(client, "2")
    open_encounter = encounter(client)
    clock.advance(minutes=2, seconds=30)  # encounters are expected in 2 min, notes in 3
    assert listed(support, "?overdue=true") == [open_encounter]
    assert set(listed(support, "?overdue=false")) == {open_note, failed_note}
    clock.advance(minutes=1)
    assert set(listed(support, "?overdue=true")) == {open_encounter, open_note}


def test_flagged_lists_conflicting_outcomes_and_deliveries_that_failed_to_apply(
    client, support, worker, cobalt, post_webhook, monkeypatch, clock
):
    accept_note(cobalt, job_id="cj_1")
    conflicted = note(client, "1")
    worker.run_once()
    post_webhook(event("note.created", job_id="cj_1", appointment_id="1"))
    post_webhook(event("note.failed", job_id="cj_1", failure_reason="late and different"))
    accept_encounter(cobalt)
    stuck = encounter(client)
    worker.run_once()
    break_applying(monkeypatch)
    post_webhook(
        event("telephone_encounter.created", job_id="4242", telephone_encounter_id="te_77")
    )
    calm = note(client, "2")
    assert set(listed(support, "?flagged=true")) == {conflicted, stuck}
    assert listed(support, "?flagged=false") == [calm]
    flags = {job["id"]: job["flagged"] for job in support.get("/v1/jobs").json["jobs"]}
    assert flags == {conflicted: True, stuck: True, calm: False}


def test_flagged_includes_open_and_failed_jobs_of_a_clinic_to_relink(
    client, support, worker, cobalt, post_webhook
):
    accept_note(cobalt)
    done = note(client, "1")
    worker.run_once()
    post_webhook(event("note.created", appointment_id="1"))
    waiting = note(client, "2")
    assert listed(support, "?flagged=true") == []
    post_webhook(event("login_required"))  # for the clinic whose reference id the worker learnt
    assert listed(support, "?flagged=true") == [waiting]
    assert listed(support, "?flagged=false") == [done]


def test_cursor_pages_stay_stable_when_jobs_are_created_between_pages(
    client, support, clock: FakeClock
):
    # Five jobs in the same microsecond: the id breaks the tie, so none is lost or repeated.
    older = [note(client, str(n)) for n in range(5)]
    seen: list[str] = []
    cursor = None
    for page in range(3):
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = support.get(f"/v1/jobs{query}").json
        seen += [job["id"] for job in body["jobs"]]
        cursor = body["next_cursor"]
        if page == 0:
            clock.advance(seconds=1)
            note(client, "new-1")
            note(client, "new-2")
    assert cursor is None
    assert sorted(seen) == sorted(older)
    assert len(seen) == len(set(seen)) == 5


# --- Search -----------------------------------------------------------------------------------


def test_a_status_filter_pages_through_every_job_in_that_status_and_no_other(
    client, support, worker, cobalt, clock: FakeClock
):
    # Failed and processing jobs interleaved in time, two of them in the same microsecond.
    reject_notes(cobalt)
    failed, processing = [], []
    for n in range(5):
        failed.append(note(client, f"f{n}"))
        while worker.run_once():  # the note is rejected
            pass
        processing.append(encounter(client, f"MRN-{n}"))  # not sent yet
        if n != 2:
            clock.advance(seconds=1)
    for status, expected in (("failed", failed), ("processing", processing)):
        seen, cursor = [], ""
        while True:
            body = support.get(f"/v1/jobs?status={status}&limit=2{cursor}").json
            seen += [job["id"] for job in body["jobs"]]
            assert {job["status"] for job in body["jobs"]} <= {status}
            if body["next_cursor"] is None:
                break
            cursor = f"&cursor={body['next_cursor']}"
        assert sorted(seen) == sorted(expected)
        assert len(seen) == len(set(seen))
        assert seen[0] == expected[-1]  # newest first


def test_search_by_mrn_or_appointment_finds_the_right_jobs_and_never_records_the_value(
    client, support, sessions, caplog, capsys
):
    caplog.set_level(logging.DEBUG)
    mrn, other_mrn, appointment = "MRN-SEARCH-7731", "MRN-OTHER-1", "APPT-SEARCH-4410"
    mine = [encounter(client, mrn), encounter(client, mrn)]
    encounter(client, other_mrn)
    my_note = note(client, appointment)
    note(client, "APPT-OTHER")

    by_mrn = support.post("/v1/jobs/search", json={"patient_mrn": mrn})
    assert by_mrn.status_code == 200
    assert sorted(job["id"] for job in by_mrn.json["jobs"]) == sorted(mine)
    by_appointment = support.post("/v1/jobs/search", json={"appointment_id": appointment})
    assert [job["id"] for job in by_appointment.json["jobs"]] == [my_note]
    narrowed = support.post(
        "/v1/jobs/search", json={"patient_mrn": mrn, "status": "failed", "limit": 1}
    )
    assert narrowed.json == {"jobs": [], "next_cursor": None}
    paged = support.post("/v1/jobs/search", json={"patient_mrn": mrn, "limit": 1}).json
    rest = support.post(
        "/v1/jobs/search", json={"patient_mrn": mrn, "cursor": paged["next_cursor"]}
    ).json
    assert sorted([paged["jobs"][0]["id"], rest["jobs"][0]["id"]]) == sorted(mine)

    entries = audits(sessions, "jobs.search")
    assert len(entries) == 5
    assert entries[0].detail["searched_by"] == ["patient_mrn"]
    recorded = json.dumps([e.detail for e in entries])
    from webhook_service.phi import search_hash

    for secret in (mrn, appointment, search_hash(mrn), search_hash(appointment)):
        assert secret not in recorded
    logged = caplog.text + json.dumps([r.__dict__ for r in caplog.records], default=str)
    logged += "".join(capsys.readouterr())
    assert "request" in logged
    assert mrn not in logged
    assert appointment not in logged


def test_search_needs_a_term_and_refuses_unknown_fields(support):
    for body in ({}, {"status": "failed"}, {"patient_mrn": "   "}, {"mrn": "1"}):
        response = support.post("/v1/jobs/search", json=body)
        assert response.status_code == 422, body
    assert (
        support.post("/v1/jobs/search", data="[", content_type="application/json").status_code
        == 400
    )
    assert support.post("/v1/jobs/search", data="x", content_type="text/plain").status_code == 415


# --- Timeline and deliveries ------------------------------------------------------------------


def test_events_show_the_whole_timeline_in_order_with_its_deliveries(
    client, support, worker, cobalt, post_webhook, sessions, clock: FakeClock
):
    accept_note(cobalt, job_id="cj_1")
    job_id = note(client)
    clock.advance(seconds=5)
    worker.run_once()
    clock.advance(seconds=5)
    post_webhook(event("note.created", job_id="cj_1", appointment_id="728948"))
    body = support.get(f"/v1/jobs/{job_id}/events").json
    assert [e["type"] for e in body["events"]] == [
        "created",
        "submission_accepted",
        "webhook_applied",
    ]
    times = [e["at"] for e in body["events"]]
    assert times == sorted(times)
    assert body["events"][1]["detail"]["cobalt_job_id"] == "cj_1"
    [delivery] = body["deliveries"]
    assert delivery["event_type"] == "note.created"
    assert delivery["state"] == "applied"
    assert delivery["signature_match"]
    assert delivery["attempt"] == 1
    assert "body" not in delivery
    assert [str(e.job_id) for e in audits(sessions, "job.events")] == [job_id]
    assert support.get(f"/v1/jobs/{uuid.uuid4()}/events").status_code == 404
    assert support.get("/v1/jobs/not-a-uuid/events").status_code == 404


def test_a_delivery_is_read_with_its_raw_body_and_the_read_is_audited(
    support, post_webhook, sessions
):
    payload = event("appointment.created", appointment_id="A-1")
    post_webhook(payload)
    [entry] = support.get("/v1/inbox").json["deliveries"]
    response = support.get(f"/v1/deliveries/{entry['id']}")
    assert response.status_code == 200
    assert json.loads(response.json["body"]) == payload
    assert response.json["state"] == "unknown_type"
    assert response.headers["Cache-Control"] == "no-store"
    assert [e.detail["delivery_id"] for e in audits(sessions, "delivery.read")] == [entry["id"]]
    for missing in ("999999", "abc", "0", "-1", str(2**70)):
        assert support.get(f"/v1/deliveries/{missing}").status_code == 404


# --- Retry ------------------------------------------------------------------------------------


def test_retry_after_a_4xx_rejection_creates_a_new_job_the_worker_submits(
    client, support, worker, cobalt, sessions
):
    reject_notes(cobalt)
    failed = note(client)
    worker.run_once()
    response = support.post(f"/v1/jobs/{failed}/retry", json={"reason": "appointment fixed"})
    assert response.status_code == 202, response.json
    new = response.json
    assert response.headers["Location"] == f"/v1/jobs/{new['id']}"
    assert (new["status"], new["retry_of"], new["submission"]["state"]) == (
        "processing",
        failed,
        "pending",
    )
    assert timeline(support, failed)[-1] == "retried_as"
    assert timeline(support, new["id"]) == ["created", "retry_of"]
    assert support.get("/v1/jobs?status=failed").json["jobs"][0]["retried_as"] == new["id"]
    [entry] = audits(sessions, "job.retry")
    assert (str(entry.job_id), entry.detail["reason"]) == (failed, "appointment fixed")
    assert entry.detail["new_job_id"] == new["id"]

    cobalt.replace(responses.POST, f"{COBALT}/notes", json={"success": True, "message": "ok"})
    assert worker.run_once()
    sent = [c for c in cobalt.calls if c.request.url.endswith("/notes")]
    assert len(sent) == 2
    assert json.loads(sent[1].request.body) == NOTE
    polled = client.get(f"/v1/jobs/{new['id']}")  # the front end that sent it can poll it
    assert polled.json["submission"]["state"] == "accepted"

    again = support.post(f"/v1/jobs/{failed}/retry", json={"reason": "again"})
    assert again.status_code == 409
    assert new["id"] in again.json["detail"]


def test_retry_after_cobalt_reported_the_failure_needs_no_confirmation(
    client, support, worker, cobalt, post_webhook
):
    accept_note(cobalt)
    job_id = note(client)
    worker.run_once()
    post_webhook(event("note.failed", appointment_id="728948", failure_reason="EMR busy"))
    response = support.post(f"/v1/jobs/{job_id}/retry", json={"reason": "EMR is back"})
    assert response.status_code == 202, response.json


def test_retry_is_refused_while_the_first_try_may_be_in_the_chart(
    client, support, worker, cobalt, clock: FakeClock, sessions
):
    accept_note(cobalt)
    accepted = note(client, "1")
    worker.run_once()
    cobalt.replace(responses.POST, f"{COBALT}/notes", body=requests.ReadTimeout("slow"))
    unknown = note(client, "2")
    worker.run_once()
    reason = {"reason": "front desk asked"}
    refused = support.post(f"/v1/jobs/{accepted}/retry", json=reason)
    assert refused.status_code == 409
    assert "failed" in refused.json["detail"]  # still processing

    events_log(cobalt)  # Cobalt's log has nothing for them
    clock.advance(minutes=31)
    worker.run_once()  # nothing found: past the deadline both stay processing, with attention
    assert "reconcile_lookup" in timeline(support, unknown)
    for job_id in (accepted, unknown):
        assert support.get(f"/v1/jobs/{job_id}").json["attention"]["code"] == "no_outcome"
        confirmed = support.post(
            f"/v1/jobs/{job_id}/retry", json={**reason, "confirm_not_in_emr": True}
        )
        assert confirmed.status_code == 409
        assert confirmed.mimetype == "application/problem+json"
        assert "processing" in confirmed.json["detail"]

    # Someone looks in the chart: not there. That is the proof a retry needs.
    for job_id in (accepted, unknown):
        checked = support.post(
            f"/v1/jobs/{job_id}/chart-outcome",
            json={"reason": "checked the chart", "found_in_chart": False},
        )
        assert checked.status_code == 200, checked.json
        assert checked.json["error"]["code"] == "not_in_chart"
        retried = support.post(f"/v1/jobs/{job_id}/retry", json=reason)
        assert retried.status_code == 202, retried.json
        assert timeline(support, retried.json["id"])[-1] == "retry_of"
    entries = audits(sessions, "job.retry")
    assert [e.detail["confirm_not_in_emr"] for e in entries] == [False, False]


def test_retry_is_refused_when_cobalt_reported_a_success(
    client, support, worker, cobalt, clock: FakeClock
):
    accept_note(cobalt)
    job_id = note(client)
    worker.run_once()
    clock.advance(minutes=4)
    events_log(
        cobalt,
        {
            "event_id": "evt_1",
            "event_type": "note.created",
            "data": {"appointment_id": "728948"},
            "created_at": "2026-11-23T12:10:00Z",
        },
    )
    clock.advance(seconds=1)
    reconciled = support.post(f"/v1/jobs/{job_id}/reconcile", json={"reason": "check"})
    assert reconciled.status_code == 200
    # The success found in Cobalt's log settles the job that had attention for lack of news.
    assert reconciled.json["status"] == "completed"
    refused = support.post(
        f"/v1/jobs/{job_id}/retry", json={"reason": "sure", "confirm_not_in_emr": True}
    )
    assert refused.status_code == 409


def test_retry_body_is_validated(client, support):
    job_id = note(client)
    for body in ({}, {"reason": ""}, {"reason": "x", "confirm_not_in_emr": "yes"}, {"why": "x"}):
        assert support.post(f"/v1/jobs/{job_id}/retry", json=body).status_code == 422
    assert support.post(f"/v1/jobs/{uuid.uuid4()}/retry", json={"reason": "x"}).status_code == 404


# --- Reconcile now ----------------------------------------------------------------------------


def test_reconcile_now_applies_an_outcome_found_in_cobalts_log(
    client, support, worker, cobalt, sessions
):
    accept_encounter(cobalt)
    job_id = encounter(client)
    worker.run_once()
    events_log(
        cobalt,
        {
            "event_id": "evt_found",
            "event_type": "telephone_encounter.created",
            "job_id": "4242",
            "data": {"telephone_encounter_id": "te_77"},
            "created_at": "2026-11-23T12:00:30Z",
        },
    )
    response = support.post(f"/v1/jobs/{job_id}/reconcile", json={"reason": "caller waiting"})
    assert response.status_code == 200, response.json
    assert response.json["status"] == "completed"
    assert response.json["lookup"] == {
        "found": True,
        "event_type": "telephone_encounter.created",
        "applied": True,
        "events_searched": 1,
        "status_before": "processing",
        "status_after": "completed",
        "summary": "Found telephone_encounter.created in Cobalt's log: the job is now completed.",
    }
    lookup = next(c for c in cobalt.calls if "/webhook-events" in c.request.url)
    assert "job_id=4242" in lookup.request.url
    assert timeline(support, job_id)[-4:] == [
        "reconcile_requested",
        "reconcile_lookup",
        "webhook_applied",
        "reconciled",
    ]
    [entry] = audits(sessions, "job.reconcile")
    assert (str(entry.job_id), entry.detail["reason"]) == (job_id, "caller waiting")


def test_reconcile_now_says_when_cobalts_log_has_nothing_for_the_job(
    client, support, worker, cobalt
):
    accept_note(cobalt)
    job_id = note(client, "728948")
    worker.run_once()
    # The log holds events, none of them this note's outcome: another appointment's note,
    # and an event of another resource for the same appointment.
    events_log(
        cobalt,
        {
            "event_id": "evt_other_note",
            "event_type": "note.created",
            "data": {"appointment_id": "999"},
            "created_at": "2026-11-23T12:00:30Z",
        },
        {
            "event_id": "evt_appointment",
            "event_type": "appointment.updated",
            "data": {"appointment_id": "728948"},
            "created_at": "2026-11-23T12:00:40Z",
        },
    )
    response = support.post(f"/v1/jobs/{job_id}/reconcile", json={"reason": "caller waiting"})
    assert response.status_code == 200, response.json
    lookup = response.json["lookup"]
    assert (lookup["found"], lookup["event_type"], lookup["applied"]) == (False, None, False)
    assert lookup["events_searched"] == 2
    assert lookup["status_before"] == lookup["status_after"] == response.json["status"]
    assert lookup["summary"].startswith(
        "Cobalt's log has no outcome for this job yet (searched 2 events)"
    )
    assert "nothing changed" in lookup["summary"]


def test_reconcile_now_says_when_what_it_found_changes_nothing(
    client, support, worker, cobalt, post_webhook
):
    accept_encounter(cobalt)
    job_id = encounter(client)
    worker.run_once()
    post_webhook(event("telephone_encounter.failed", job_id="4242", message="no provider"))
    events_log(
        cobalt,
        {
            "event_id": "evt_failed",
            "event_type": "telephone_encounter.failed",
            "job_id": "4242",
            "data": {},
            "created_at": "2026-11-23T12:00:30Z",
        },
    )
    response = support.post(f"/v1/jobs/{job_id}/reconcile", json={"reason": "double check"})
    assert response.status_code == 200, response.json
    lookup = response.json["lookup"]
    assert (lookup["found"], lookup["applied"]) == (True, False)
    assert lookup["summary"] == (
        "Found telephone_encounter.failed in Cobalt's log, but the job already showed failed: "
        "nothing changed."
    )


def test_reconcile_when_cobalt_fails_is_502_and_still_audited(
    client, support, worker, cobalt, sessions
):
    accept_encounter(cobalt)
    job_id = encounter(client)
    worker.run_once()
    cobalt.add(responses.GET, f"{COBALT}/webhook-events", status=503)
    response = support.post(f"/v1/jobs/{job_id}/reconcile", json={"reason": "check"})
    assert response.status_code == 502
    assert response.mimetype == "application/problem+json"
    assert len(audits(sessions, "job.reconcile")) == 1


# --- Replay and inbox -------------------------------------------------------------------------


def test_replay_dry_run_changes_nothing_and_a_real_replay_applies(
    client, support, worker, cobalt, post_webhook, monkeypatch, sessions
):
    accept_encounter(cobalt)
    job_id = encounter(client)
    worker.run_once()
    break_applying(monkeypatch)
    post_webhook(
        event("telephone_encounter.created", job_id="4242", telephone_encounter_id="te_77")
    )
    monkeypatch.undo()  # the bug is fixed and deployed
    [failed] = support.get("/v1/inbox?state=failed").json["deliveries"]
    before = timeline(support, job_id)

    dry = support.post(f"/v1/deliveries/{failed['id']}/replay", json={"reason": "bug fixed"})
    assert dry.status_code == 200, dry.json
    assert dry.json == {
        "delivery_id": failed["id"],
        "dry_run": True,
        "state_before": "failed",
        "state_after": "applied",
        "state_detail": None,
        "job_id": job_id,
        "job_status_before": "processing",
        "job_status_after": "completed",
    }
    assert client.get(f"/v1/jobs/{job_id}").json["status"] == "processing"
    assert timeline(support, job_id) == before
    with sessions() as session:
        assert session.get(WebhookDelivery, failed["id"]).state == "failed"

    real = support.post(
        f"/v1/deliveries/{failed['id']}/replay", json={"reason": "bug fixed", "dry_run": False}
    )
    assert real.status_code == 200
    assert real.json["state_after"] == "applied"
    assert client.get(f"/v1/jobs/{job_id}").json["status"] == "completed"
    assert timeline(support, job_id)[-2:] == ["webhook_applied", "webhook_replayed"]
    assert [e.detail["dry_run"] for e in audits(sessions, "delivery.replay")] == [True, False]

    again = support.post(
        f"/v1/deliveries/{failed['id']}/replay", json={"reason": "twice", "dry_run": False}
    )
    assert again.status_code == 409


def test_inbox_lists_parked_failed_and_unknown_type_deliveries(
    client, support, worker, cobalt, post_webhook, monkeypatch, clock: FakeClock
):
    accept_note(cobalt)
    note(client)
    worker.run_once()
    post_webhook(event("note.created", appointment_id="728948"))  # applied: not in the inbox
    clock.advance(seconds=1)
    post_webhook(event("telephone_encounter.created", job_id="no-such-job"))  # parked
    clock.advance(seconds=1)
    post_webhook(event("appointment.created", appointment_id="9"))  # unknown type
    clock.advance(seconds=1)
    break_applying(monkeypatch)
    post_webhook(event("note.failed", appointment_id="1"))  # failed to apply

    states = [d["state"] for d in support.get("/v1/inbox").json["deliveries"]]
    assert states == ["failed", "unknown_type", "parked"]
    assert [d["state"] for d in support.get("/v1/inbox?state=parked").json["deliveries"]] == [
        "parked"
    ]
    walked, cursor = [], ""
    while True:
        body = support.get(f"/v1/inbox?limit=1{cursor}").json
        walked += [d["state"] for d in body["deliveries"]]
        if not body["next_cursor"]:
            break
        cursor = f"&cursor={body['next_cursor']}"
    assert walked == states
    assert support.get("/v1/inbox?state=applied").status_code == 422


# --- CSV export -------------------------------------------------------------------------------


def test_csv_export_streams_every_matching_job_with_formula_cells_escaped(
    client, support, worker, cobalt, post_webhook, sessions, monkeypatch
):
    monkeypatch.setattr("webhook_service.http.support.EXPORT_BATCH", 2)  # several batches
    accept_encounter(cobalt)
    hostile = encounter(client)
    worker.run_once()
    post_webhook(
        event(
            "telephone_encounter.failed",
            job_id="4242",
            reasons=[{"code": '=HYPERLINK("http://evil.example","x")'}],
        )
    )
    others = [note(client, str(n)) for n in range(4)]
    response = support.get("/v1/jobs.csv?kind=note")
    assert response.status_code == 200
    assert response.is_streamed
    assert response.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0] == [
        "id",
        "kind",
        "status",
        "created_at",
        "finished_at",
        "error_code",
        "cobalt_job_id",
        "telephone_encounter_id",
        "flagged",
    ]
    assert sorted(row[0] for row in rows[1:]) == sorted(others)

    everything = list(csv.reader(io.StringIO(support.get("/v1/jobs.csv").get_data(as_text=True))))
    [row] = [row for row in everything if row[0] == hostile]
    assert row[5] == """'=HYPERLINK("http://evil.example","x")"""
    assert row[2:4] == ["failed", "2026-11-23T12:00:00Z"]
    assert len(everything) == 6
    entries = audits(sessions, "jobs.export")
    assert [e.detail["filters"] for e in entries] == [{"kind": "note"}, {}]
    assert support.get("/v1/jobs.csv?limit=5").status_code == 422


# --- Access -----------------------------------------------------------------------------------


def test_every_support_route_is_403_for_a_front_end_and_401_without_a_token(app, client):
    job_id = note(client)
    routes = [
        ("get", "/v1/jobs"),
        ("post", "/v1/jobs/search"),
        ("get", "/v1/jobs.csv"),
        ("get", f"/v1/jobs/{job_id}/events"),
        ("post", f"/v1/jobs/{job_id}/retry"),
        ("post", f"/v1/jobs/{job_id}/reconcile"),
        ("get", "/v1/deliveries/1"),
        ("post", "/v1/deliveries/1/replay"),
        ("get", "/v1/inbox"),
    ]
    anonymous = app.test_client(token="")
    for method, path in routes:
        body = {"json": {"reason": "x"}} if method == "post" else {}
        forbidden = getattr(client, method)(path, **body)
        assert forbidden.status_code == 403, path
        assert forbidden.mimetype == "application/problem+json"
        unauthenticated = getattr(anonymous, method)(path, **body)
        assert unauthenticated.status_code == 401, path
        assert unauthenticated.headers["WWW-Authenticate"].startswith("Bearer")


def test_openapi_describes_the_support_routes(client):
    spec = client.get("/openapi.json").json
    assert {
        "/v1/jobs",
        "/v1/jobs/search",
        "/v1/jobs.csv",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/retry",
        "/v1/jobs/{job_id}/reconcile",
        "/v1/deliveries/{delivery_id}",
        "/v1/deliveries/{delivery_id}/replay",
        "/v1/inbox",
    } <= set(spec["paths"])
    parameters = {p["name"] for p in spec["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert {"status", "created_from", "created_to", "overdue", "flagged", "cursor"} <= parameters
    assert "patient_mrn" not in parameters
    assert "patient_mrn" in spec["components"]["schemas"]["JobSearchRequest"]["properties"]


# --- CLI --------------------------------------------------------------------------------------


def test_support_cli_lists_shows_and_retries_as_the_named_person(
    database_url, client, worker, cobalt, sessions
):
    reject_notes(cobalt)
    failed = note(client)
    worker.run_once()
    env = {
        "DATABASE_URL": database_url,
        "PHI_ENCRYPTION_KEYS": PHI_KEY,
        "PHI_SEARCH_KEY": PHI_SEARCH_KEY,
        "WEBHOOK_SERVICE_ENV": "test",
        "USER": "alice",
    }
    runner = CliRunner()
    listed_ = runner.invoke(main, ["jobs", "list", "--status", "failed"], env=env)
    assert listed_.exit_code == 0, listed_.output
    assert f"{failed}\tnote\tfailed" in listed_.output
    shown = runner.invoke(main, ["jobs", "show", failed, "--as", "bob"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "submission_rejected" in shown.output
    assert "Appointment not found" not in shown.output  # no PHI on a terminal

    no_reason = runner.invoke(main, ["jobs", "retry", failed], env=env)
    assert no_reason.exit_code == 2
    retried = runner.invoke(main, ["jobs", "retry", failed, "--reason", "fixed"], env=env)
    assert retried.exit_code == 0, retried.output
    again = runner.invoke(main, ["jobs", "retry", failed, "--reason", "fixed"], env=env)
    assert again.exit_code == 1
    assert "already retried" in again.output
    bad = runner.invoke(main, ["jobs", "list", "--from", "soon"], env=env)
    assert bad.exit_code == 2
    assert "created_from" in bad.output

    actors = [(e.actor, e.action, e.detail.get("via")) for e in audits(sessions, "job.retry")]
    assert actors == [("alice", "job.retry", "cli")]
    assert audits(sessions, "job.events")[0].actor == "bob"
    with sessions() as session:
        assert session.scalars(select(Clinic)).one()  # one clinic: the default
