"""Pre-flight: each clinic's copy of Cobalt's provider, location and pharmacy lists, the
`GET /v1/reference/...` routes, and the check a telephone encounter passes before it is stored.

Cobalt is the sandbox (its Flask app, reached through `responses`), so the lists have Cobalt's
shapes and its `reference_lists` knob breaks them; the clock is the test's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from tests.conftest import (
    ACCESS_TOKEN,
    COBALT,
    START,
    BearerClient,
    FakeClock,
    make_settings,
    new_token,
)
from tests.test_console import Console, anonymous
from tests.test_support import audits
from webhook_service.cobalt import (
    CobaltClient,
    CobaltRejected,
    CobaltTransient,
    CobaltUnreadable,
)
from webhook_service.db import SessionFactory, transaction
from webhook_service.http import create_app
from webhook_service.sandbox.app import create_sandbox_app, get_sandbox
from webhook_service.sandbox.config import AccessTokenConfig, SandboxConfig
from webhook_service.sandbox.data import DEMO_IDS, Provider
from webhook_service.services import default_clinic
from webhook_service.services.reference import (
    FRESH,
    KINDS,
    Item,
    KnownIds,
    read_items,
    record_fetch,
)
from webhook_service.settings import Settings
from webhook_service.worker import Worker

UNKNOWN = DEMO_IDS["unknown_provider_id"]


class Emr:
    """The sandbox standing in for Cobalt: its lists, its knob, and the reads it answered."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.reads: list[str] = []

    def forward(self, request: Any) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(request.url)
        self.reads.append(url.path.rsplit("/", 1)[-1])
        reply = self.app.test_client().get(url.path, headers=dict(request.headers))
        return reply.status_code, {"content-type": "application/json"}, reply.get_data()

    def lists(self, state: str) -> None:
        get_sandbox(self.app).store.update_faults({"reference_lists": state})

    def add_provider(self, ehr_id: str) -> None:
        providers = get_sandbox(self.app).seed.providers
        providers[ehr_id] = Provider(ehr_id, "Nadia", "Quinn", "1487650099", "Cardiology")


@pytest.fixture
def emr(cobalt: responses.RequestsMock) -> Emr:
    config = SandboxConfig(
        client_id="ci_test",
        client_secret="cs_test",
        access_tokens=[
            AccessTokenConfig(access_token=ACCESS_TOKEN, access_token_reference_id="atr_clinic_1")
        ],
    )
    found = Emr(create_sandbox_app(config))
    for kind in KINDS:
        cobalt.add_callback(responses.GET, f"{COBALT}/{kind}", callback=found.forward)
    return found


@pytest.fixture
def fetched(emr: Emr, worker: Worker, sessions: SessionFactory, clock: FakeClock) -> Emr:
    """The default clinic exists and the worker has fetched its three lists; a minute
    passes, so the copy is no longer fresh (a miss refreshes it)."""
    with transaction(sessions) as session:
        default_clinic(session, worker.settings, clock())
    assert worker.refresh_reference_lists() == 1
    assert sorted(emr.reads) == sorted(KINDS)
    emr.reads.clear()
    clock.advance(minutes=1)
    return emr


def encounter_body(**fields: str) -> dict[str, str]:
    return {
        "patient_mrn": DEMO_IDS["patient_mrn"],
        "provider_id": DEMO_IDS["provider_id"],
        "location_id": DEMO_IDS["location_id"],
        "assigned_to_id": DEMO_IDS["assigned_to_id"],
        "pharmacy_ehr_id": DEMO_IDS["pharmacy_ehr_id"],
        **fields,
    }


def submit(client: FlaskClient, key: str | None = None, **fields: str) -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/v1/telephone-encounters", json=encounter_body(**fields), headers=headers)


# --- The check -------------------------------------------------------------------------------


def test_ids_in_the_clinics_lists_are_accepted_without_asking_cobalt(fetched, client, count_rows):
    for _ in range(2):  # the first submission finds the default clinic, the next one knows it
        assert submit(client).status_code == 202
    assert fetched.reads == []
    assert count_rows("jobs") == 2


def test_an_id_added_in_the_emr_since_the_copy_is_found_by_one_refresh(fetched, client):
    fetched.add_provider("PRV-2001")
    response = submit(client, provider_id="PRV-2001")
    assert response.status_code == 202, response.json
    assert fetched.reads == ["providers"]  # one list refreshed, the one that missed
    listed = client.get("/v1/reference/providers").json
    assert "PRV-2001" in {item["ehr_id"] for item in listed["items"]}


@pytest.mark.parametrize("key", [None, "retry-key-1"])
def test_an_id_still_absent_after_the_refresh_is_refused_naming_the_field(
    fetched, client, count_rows, clock, key
):
    submit(client)  # the default clinic is known: the next one takes the fast path
    response = submit(client, key, provider_id=UNKNOWN)
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    problem = response.json
    assert problem["type"].endswith("/not-in-emr-list")
    assert [(e["field"], e["code"]) for e in problem["errors"]] == [
        ("provider_id", "provider_not_found")
    ]
    assert UNKNOWN in problem["errors"][0]["message"]
    assert "fetched at 2026-11-23T12:01:00Z" in problem["errors"][0]["message"]
    assert count_rows("jobs") == 1  # only the first: nothing of the refused one was stored
    assert fetched.reads == ["providers"]
    # Again at once: the copy is fresh, so no second call to Cobalt.
    clock.advance(seconds=FRESH.total_seconds() / 2)
    assert submit(client, key, provider_id=UNKNOWN).status_code == 422
    assert fetched.reads == ["providers"]


def test_every_absent_id_is_named_with_its_code(fetched, client):
    response = submit(client, location_id="LOC-0000", pharmacy_ehr_id="PHR-0000")
    assert response.status_code == 422
    assert {(e["field"], e["code"]) for e in response.json["errors"]} == {
        ("location_id", "location_not_found"),
        ("pharmacy_ehr_id", "pharmacy_not_found"),
    }


def test_an_id_with_a_nul_character_is_refused_not_a_database_error(fetched, client):
    # PostgreSQL takes no NUL in a text parameter: the check must not send one.
    response = submit(client, provider_id="PRV-1001\x00")
    assert response.status_code == 422, response.json
    assert [e["field"] for e in response.json["errors"]] == ["provider_id"]


def test_no_pharmacy_is_not_checked(fetched, client):
    body = encounter_body()
    del body["pharmacy_ehr_id"]
    assert client.post("/v1/telephone-encounters", json=body).status_code == 202
    assert fetched.reads == []


def test_an_inactive_provider_is_listed_and_not_refused(fetched, client):
    """Cobalt refuses a provider id only when it "doesn't exist in the providers table";
    inactive providers are in it. The copy shows the status for pickers; Cobalt decides."""
    inactive = DEMO_IDS["inactive_provider_id"]
    listed = {i["ehr_id"]: i["status"] for i in client.get("/v1/reference/providers").json["items"]}
    assert listed[inactive] == "inactive"
    assert submit(client, provider_id=inactive).status_code == 202


@pytest.mark.parametrize("state", ["unavailable", "unreadable"])
def test_a_miss_is_accepted_when_the_list_cannot_be_had(fetched, client, count_rows, state):
    """Cobalt down, or answering something that is not the list: Cobalt decides, as before."""
    fetched.lists(state)
    response = submit(client, provider_id=UNKNOWN)
    assert response.status_code == 202, response.json
    assert count_rows("jobs") == 1
    assert fetched.reads == ["providers"]  # tried once, bounded, then accepted
    # The copy held is kept (an unreadable answer never empties it).
    listed = client.get("/v1/reference/providers").json
    assert DEMO_IDS["provider_id"] in {item["ehr_id"] for item in listed["items"]}


def test_a_list_never_fetched_blocks_nothing_and_asks_nobody(emr, client, count_rows):
    assert submit(client, provider_id=UNKNOWN).status_code == 202
    assert emr.reads == []
    assert count_rows("jobs") == 1


def test_the_check_can_be_turned_off(fetched, database_url, sessions, clock, count_rows):
    app = create_app(make_settings(database_url, PREFLIGHT_CHECKS="false"))
    app.extensions["webhook_service"]["clock"] = clock
    app.test_client_class = BearerClient
    try:
        client = app.test_client(token=new_token(sessions, "no-checks", "frontend"))
        assert submit(client, provider_id=UNKNOWN).status_code == 202
    finally:
        app.extensions["webhook_service"]["engine"].dispose()
    assert fetched.reads == []
    assert count_rows("jobs") == 1


def test_notes_are_not_checked(fetched, client):
    response = client.post("/v1/notes", json={"appointment_id": "728948", "note": "Doing well."})
    assert response.status_code == 202
    assert fetched.reads == []


# --- The lists for front ends ----------------------------------------------------------------


def test_each_list_is_served_with_an_etag_and_a_304(fetched, client):
    for kind in KINDS:
        response = client.get(f"/v1/reference/{kind}")
        assert response.status_code == 200
        body = response.json
        assert body["fetched_at"] == "2026-11-23T12:00:00Z"
        assert all(set(item) == {"ehr_id", "name", "status"} for item in body["items"])
        again = client.get(
            f"/v1/reference/{kind}", headers={"If-None-Match": response.headers["ETag"]}
        )
        assert again.status_code == 304
    providers = client.get("/v1/reference/providers").json["items"]
    assert {"ehr_id": "PRV-1001", "name": "Amara Okafor", "status": "active"} in providers


def test_a_new_fetch_changes_the_etag(fetched, client, worker, clock):
    etag = client.get("/v1/reference/providers").headers["ETag"]
    fetched.add_provider("PRV-2002")
    clock.advance(seconds=worker.settings.reference_ttl_seconds)
    worker.refresh_reference_lists()
    response = client.get("/v1/reference/providers", headers={"If-None-Match": etag})
    assert response.status_code == 200
    assert "PRV-2002" in {item["ehr_id"] for item in response.json["items"]}


def test_a_list_never_fetched_is_empty_with_no_time(client):
    assert client.get("/v1/reference/locations").json == {"items": [], "fetched_at": None}


def test_an_unknown_list_is_404_and_support_may_not_read_lists(client, support):
    assert client.get("/v1/reference/staff").status_code == 404
    assert support.get("/v1/reference/providers").status_code == 403


# --- The worker's schedule -------------------------------------------------------------------


def test_the_worker_fetches_again_only_when_the_copy_has_aged(fetched, worker, clock):
    assert worker.refresh_reference_lists() == 0
    clock.advance(seconds=worker.settings.reference_ttl_seconds)
    assert worker.refresh_reference_lists() == 1
    assert sorted(fetched.reads) == sorted(KINDS)


def test_a_failed_fetch_is_tried_again_within_a_minute(fetched, worker, clock):
    fetched.lists("unavailable")
    clock.advance(seconds=worker.settings.reference_ttl_seconds)
    assert worker.refresh_reference_lists() == 1
    fetched.lists("available")
    fetched.reads.clear()
    clock.advance(seconds=30)
    assert worker.refresh_reference_lists() == 0
    clock.advance(seconds=31)
    assert worker.refresh_reference_lists() == 1
    assert sorted(fetched.reads) == sorted(KINDS)


# --- The console -----------------------------------------------------------------------------


@pytest.fixture
def staff(app: Flask, sessions: SessionFactory) -> Iterator[Console]:
    console = anonymous(app)
    assert console.sign_in(new_token(sessions, "support-1", "support")).status_code == 303
    return console


def test_the_console_shows_each_clinics_lists_and_when_they_were_fetched(fetched, staff):
    page = staff.get("/console/clinics").text
    assert "PRV-1001" in page
    assert "Amara Okafor" in page
    assert "LOC-3001" in page
    assert "PHR-4001" in page
    assert "2026-11-23 12:00:00 UTC" in page
    assert "Refresh now" in page


def test_refresh_now_fetches_the_lists_and_is_audited(fetched, staff, sessions, app):
    fetched.add_provider("PRV-2003")
    clinic_id = _default_clinic_id(sessions, app)
    response = staff.post(f"/console/clinics/{clinic_id}/refresh")
    assert response.status_code == 303
    assert sorted(fetched.reads) == sorted(KINDS)
    assert "PRV-2003" in staff.get("/console/clinics").text
    (entry,) = audits(sessions, "reference.refresh")
    assert entry.actor == "support-1"
    assert entry.detail["clinic_id"] == clinic_id
    assert entry.detail["failed"] == []


def test_refresh_now_without_the_forms_csrf_token_does_nothing(fetched, staff, sessions, app):
    clinic_id = _default_clinic_id(sessions, app)
    response = staff.post(f"/console/clinics/{clinic_id}/refresh", csrf=False)
    assert response.status_code == 400
    assert fetched.reads == []
    assert audits(sessions, "reference.refresh") == []


def test_a_failed_refresh_says_why_and_keeps_the_copy(fetched, staff, sessions, app):
    fetched.lists("unavailable")
    clinic_id = _default_clinic_id(sessions, app)
    staff.post(f"/console/clinics/{clinic_id}/refresh")
    page = staff.get("/console/clinics").text
    assert "Not refreshed" in page
    assert "503" in page
    assert "Amara Okafor" in page  # the copy already held
    (entry,) = audits(sessions, "reference.refresh")
    assert entry.detail["failed"] == sorted(KINDS)


def _default_clinic_id(sessions: SessionFactory, app: Flask) -> int:
    settings: Settings = app.extensions["webhook_service"]["settings"]
    with transaction(sessions) as session:
        return default_clinic(session, settings, START).id


def test_a_process_remembers_the_ids_it_read_for_half_a_minute(fetched, engine, clock):
    """Hits are answered from memory (no query on the hot path). A remembered id the EMR
    has since dropped is sent to Cobalt, which decides, as with the check off; never longer
    than `KnownIds.MEMORY`."""
    seconds = [0.0]
    known = KnownIds(clock=lambda: seconds[0])
    wanted = {"providers": DEMO_IDS["provider_id"], "locations": None, "pharmacies": None}
    with engine.begin() as connection:
        clinic_id = connection.execute(text("SELECT id FROM clinics")).scalar_one()
        assert known.hold_all(connection, clinic_id, wanted)
        record_fetch(connection, clinic_id, "providers", [], clock())
        seconds[0] += KnownIds.MEMORY - 1
        assert known.hold_all(connection, clinic_id, wanted)
        seconds[0] += 1
        assert not known.hold_all(connection, clinic_id, wanted)


# --- Reading Cobalt's lists ------------------------------------------------------------------


def test_a_list_is_read_by_ehr_id_with_a_name_and_status() -> None:
    items = read_items(
        [
            {"id": "p1", "ehr_id": "PRV-1", "name": "Ann Lee", "status": "active"},
            {"ehr_id": 42, "first_name": "Bo", "last_name": "Chan"},  # an integer id, no name
            {"ehr_id": "PRV-1", "name": "Ann Lee (again)"},  # the first one wins
            {"name": "no id"},
            "not an object",
        ]
    )
    assert items == [Item("PRV-1", "Ann Lee", "active"), Item("42", "Bo Chan", None)]
    assert read_items([]) == []  # an empty list is a list (and refuses nothing)


def test_a_list_with_no_usable_entry_is_unreadable_not_empty() -> None:
    with pytest.raises(CobaltUnreadable):
        read_items([{"id": "p1", "name": "Ann Lee"}])


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, {"success": True, "data": {}}, CobaltUnreadable),
        (200, {"success": False, "message": "nope"}, CobaltUnreadable),
        (503, {"success": False, "message": "down"}, CobaltTransient),
        (403, {"success": False, "error": "login_required"}, CobaltRejected),
        (302, {}, CobaltTransient),
    ],
)
def test_cobalts_list_answers_are_classified(cobalt, status, body, error) -> None:
    cobalt.add(responses.GET, f"{COBALT}/pharmacies", json=body, status=status)
    client = CobaltClient(COBALT, "ci_test", "cs_test", connect_timeout=1, read_timeout=1)
    with pytest.raises(error):
        client.reference_list(ACCESS_TOKEN, "pharmacies")
    (call,) = [c for c in cobalt.calls if c.request.url.endswith("/pharmacies")]
    assert call.request.headers["access_token"] == ACCESS_TOKEN


def test_the_sandbox_serves_cobalts_shapes_and_its_knob_breaks_them(emr) -> None:
    client = emr.app.test_client()
    headers = {"client_id": "ci_test", "client_secret": "cs_test", "access_token": ACCESS_TOKEN}
    providers = client.get("/v1/providers", headers=headers).json["providers"]
    assert {"id", "ehr_id", "name", "npi", "timezone", "status", "hide_in_availability"} <= set(
        providers[0]
    )
    locations = client.get("/v1/locations", headers=headers).json["locations"]
    assert {"id", "ehr_id", "name", "status", "address", "phone", "fax"} <= set(locations[0])
    emr.lists("unavailable")
    down = client.get("/v1/pharmacies", headers=headers)
    assert (down.status_code, down.json["success"]) == (503, False)
    emr.lists("unreadable")
    odd = client.get("/v1/pharmacies", headers=headers)
    assert odd.status_code == 200
    assert "pharmacies" not in odd.json
