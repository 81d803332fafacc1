"""Access control, PHI at rest, retention, audit, CORS and the clients CLI."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
import responses
from click.testing import CliRunner
from cryptography.fernet import Fernet
from sqlalchemy import select, text

from tests.conftest import COBALT, PHI_KEY, PHI_SEARCH_KEY, FakeClock, event, new_token
from tests.test_lifecycle_http import ENCOUNTER, NOTE, accept_encounter, accept_note
from webhook_service import phi
from webhook_service.cli import main
from webhook_service.db import transaction
from webhook_service.models import AuditEvent, Job
from webhook_service.services import purge_expired_phi, reencrypt_phi


@pytest.fixture
def other_frontend(app, sessions):
    return app.test_client(token=new_token(sessions, "frontend-b", "frontend"))


@pytest.fixture
def anonymous(app):
    return app.test_client(token="")


@pytest.fixture
def revoked(app, sessions, clock):
    token = new_token(sessions, "frontend-old", "frontend")
    with transaction(sessions) as session:
        from webhook_service.services import revoke_client

        revoke_client(session, "frontend-old", clock())
    return app.test_client(token=token)


def created_job(client) -> str:
    response = client.post("/v1/notes", json=NOTE)
    assert response.status_code == 202
    return str(response.json["id"])


# --- Who may do what ------------------------------------------------------------------------


def test_missing_or_bad_token_is_401_with_challenge(app, anonymous, client):
    job_id = created_job(client)
    bad = app.test_client(token="wst_not-a-real-token")
    for caller in (anonymous, bad):
        for response in (
            caller.post("/v1/notes", json=NOTE),
            caller.get(f"/v1/jobs/{job_id}"),
        ):
            assert response.status_code == 401
            assert response.mimetype == "application/problem+json"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert job_id not in response.get_data(as_text=True)


def test_revoked_token_is_401(revoked):
    assert revoked.post("/v1/notes", json=NOTE).status_code == 401


def test_other_front_end_gets_404_as_if_the_job_did_not_exist(client, other_frontend):
    job_id = created_job(client)
    theirs = other_frontend.get(f"/v1/jobs/{job_id}")
    missing = other_frontend.get(f"/v1/jobs/{uuid.uuid4()}")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json["title"] == missing.json["title"]
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200


def test_support_sees_every_job_and_the_read_is_audited(client, support, sessions):
    job_id = created_job(client)
    assert support.get(f"/v1/jobs/{job_id}").status_code == 200
    with sessions() as session:
        entry = session.scalars(select(AuditEvent)).one()
    assert (entry.actor, entry.action, str(entry.job_id)) == ("support-1", "job.read", job_id)


def test_support_cannot_submit_on_behalf_of_a_front_end(support):
    response = support.post("/v1/notes", json=NOTE)
    assert response.status_code == 403
    assert "insufficient_scope" in response.headers["WWW-Authenticate"]


def test_idempotency_keys_are_per_client(client, other_frontend):
    first = client.post("/v1/notes", json=NOTE, headers={"Idempotency-Key": "k1"})
    second = other_frontend.post(
        "/v1/notes", json={**NOTE, "note": "other"}, headers={"Idempotency-Key": "k1"}
    )
    assert first.status_code == second.status_code == 202
    assert first.json["id"] != second.json["id"]


def test_webhooks_and_health_need_no_token(anonymous, post_webhook):
    assert anonymous.get("/healthz").status_code == 200
    assert post_webhook(event("appointment.created")).status_code == 200


# --- CORS -----------------------------------------------------------------------------------


def test_cors_allows_configured_origin_and_exposes_polling_headers(database_url, sessions):
    from tests.conftest import make_settings
    from webhook_service.http import create_app

    app = create_app(make_settings(database_url, CORS_ALLOWED_ORIGINS="https://app.example"))
    try:
        client = app.test_client()
        preflight = client.options(
            "/v1/notes",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "Authorization, Content-Type",
            },
        )
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
        token = new_token(sessions, "browser", "frontend")
        created = client.post(
            "/v1/notes",
            json=NOTE,
            headers={"Origin": "https://app.example", "Authorization": f"Bearer {token}"},
        )
        exposed = created.headers["Access-Control-Expose-Headers"]
        for header in ("ETag", "Retry-After", "Location"):
            assert header in exposed
        elsewhere = client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in elsewhere.headers
        denied = client.options(
            "/v1/notes",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "Access-Control-Allow-Origin" not in denied.headers
    finally:
        app.extensions["webhook_service"]["engine"].dispose()


# --- PHI at rest ----------------------------------------------------------------------------


MARKERS = {
    "note": "CANARY-NOTE-7f3a",
    "mrn": "CANARY-MRN-55c1",
    "caller": "CANARY-CALLER-9d2e",
    "med": "CANARY-MED-e81b",
    "appointment": "CANARY-APPT-31aa",
}


def dump_database(engine) -> str:
    """Every table's every row as text: what someone with the database but no key sees."""
    from webhook_service.models import Base

    parts = []
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            # Plain SQL, so no column type decrypts anything on the way out.
            for row in conn.execute(text(f"SELECT * FROM {table.name}")):  # noqa: S608
                parts.append(" ".join(_as_text(value) for value in row))
    return "\n".join(parts)


def _as_text(value: object) -> str:
    if isinstance(value, bytes | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def phi_encounter():
    return {
        **ENCOUNTER,
        "patient_mrn": MARKERS["mrn"],
        "caller": MARKERS["caller"],
        "refill_medication_name": MARKERS["med"],
        "message": MARKERS["note"],
    }


def test_no_phi_is_readable_in_the_database_without_the_key(
    client, worker, cobalt, post_webhook, engine
):
    accept_encounter(cobalt)
    accept_note(cobalt)
    client.post("/v1/telephone-encounters", json=phi_encounter())
    client.post(
        "/v1/notes", json={"appointment_id": MARKERS["appointment"], "note": MARKERS["note"]}
    )
    worker.run_once()
    worker.run_once()
    post_webhook(
        event(
            "telephone_encounter.failed",
            job_id="4242",
            failure_reason=f"Medication {MARKERS['med']} not found",
            available_medications=[MARKERS["med"] + " 10 mg"],
        )
    )
    post_webhook(event("note.created", appointment_id=MARKERS["appointment"]))
    everything = dump_database(engine)
    for marker in MARKERS.values():
        assert marker not in everything


def test_support_can_find_jobs_by_mrn_through_the_keyed_hash(client, sessions):
    client.post("/v1/telephone-encounters", json=phi_encounter())
    with sessions() as session:
        found = session.scalars(
            select(Job).where(Job.patient_mrn_hash == phi.search_hash(MARKERS["mrn"]))
        ).all()
    assert len(found) == 1
    assert found[0].request_body["patient_mrn"] == MARKERS["mrn"]


def test_key_rotation_keeps_old_rows_readable_and_reencrypts_them(client, sessions, engine):
    job_id = created_job(client)
    new_key = Fernet.generate_key().decode()
    phi.configure(phi.PhiKeys((new_key, PHI_KEY), PHI_SEARCH_KEY))
    try:
        with sessions() as session:
            assert session.get(Job, uuid.UUID(job_id)).request_body == NOTE
        with transaction(sessions) as session:
            assert reencrypt_phi(session) >= 1
        phi.configure(phi.PhiKeys((new_key,), PHI_SEARCH_KEY))
        with sessions() as session:
            assert session.get(Job, uuid.UUID(job_id)).request_body == NOTE
    finally:
        phi.configure(phi.PhiKeys((PHI_KEY,), PHI_SEARCH_KEY))


def test_retention_purges_phi_but_keeps_ids_statuses_and_timeline(
    client, worker, cobalt, post_webhook, clock: FakeClock, sessions, engine
):
    accept_encounter(cobalt)
    response = client.post("/v1/telephone-encounters", json=phi_encounter())
    job_id = response.json["id"]
    worker.run_once()
    post_webhook(
        event(
            "telephone_encounter.failed",
            job_id="4242",
            failure_reason="Medication not found",
            available_medications=["Metformin 500 mg"],
        )
    )
    clock.advance(days=29)
    with transaction(sessions) as session:
        assert purge_expired_phi(session, now=clock(), retention=_days(30)) == 0
    clock.advance(days=2)
    with transaction(sessions) as session:
        assert purge_expired_phi(session, now=clock(), retention=_days(30)) == 1
    job = client.get(f"/v1/jobs/{job_id}").json
    assert job["status"] == "failed"
    assert job["error"]["code"] == "medication_not_found"
    assert job["purged_at"] is not None
    assert job["outcome"] == {"event": "telephone_encounter.failed"}
    with sessions() as session:
        stored = session.get(Job, uuid.UUID(job_id))
        assert stored.request_body is None
        raw = session.execute(
            text("SELECT count(*) FROM webhook_deliveries WHERE raw_body_enc IS NOT NULL")
        ).scalar()
    assert raw == 0


def _days(n: int):
    from datetime import timedelta

    return timedelta(days=n)


# --- Logs never carry PHI -------------------------------------------------------------------


def test_phi_canary_never_reaches_the_logs(
    client, support, worker, cobalt, post_webhook, caplog, capsys
):
    """Marker strings pass through every path with DEBUG logging; none may be logged."""
    caplog.set_level(logging.DEBUG)
    # Submit (and a validation error echoing PHI fields back).
    created = client.post("/v1/telephone-encounters", json=phi_encounter())
    client.post("/v1/telephone-encounters", json={**phi_encounter(), "reason": MARKERS["note"] * 3})
    # Cobalt 4xx for one, acceptance for the other.
    cobalt.add(
        responses.POST,
        f"{COBALT}/notes",
        status=400,
        json={"success": False, "message": f"Appointment {MARKERS['appointment']} invalid"},
    )
    client.post(
        "/v1/notes", json={"appointment_id": MARKERS["appointment"], "note": MARKERS["note"]}
    )
    accept_encounter(cobalt)
    worker.run_once()
    worker.run_once()
    # Webhook failure and success, a bad signature, and a support read.
    failure = event(
        "telephone_encounter.failed",
        job_id="4242",
        failure_reason=f"{MARKERS['med']} not found for {MARKERS['mrn']}",
        available_medications=[MARKERS["med"]],
    )
    post_webhook(failure)
    post_webhook(event("telephone_encounter.created", job_id="4242", caller=MARKERS["caller"]))
    post_webhook(failure, secret="whsec_wrong")
    support.get(f"/v1/jobs/{created.json['id']}")
    logged = caplog.text + json.dumps([r.__dict__ for r in caplog.records], default=str)
    logged += "".join(capsys.readouterr())
    assert "webhook stored" in logged, "the test must actually capture the service's logs"
    for marker in MARKERS.values():
        assert marker not in logged


def test_clients_cli_creates_lists_and_revokes(cli_env, app, clock):
    env = cli_env
    runner = CliRunner()
    created = runner.invoke(main, ["clients", "create", "web-app", "--role", "frontend"], env=env)
    assert created.exit_code == 0, created.output
    token = created.output.strip().splitlines()[-1]
    assert token.startswith("wst_")
    client = app.test_client(token=token)
    assert client.post("/v1/notes", json=NOTE).status_code == 202

    listed = runner.invoke(main, ["clients", "list"], env=env)
    assert "web-app\tfrontend" in listed.output
    assert token not in listed.output

    again = runner.invoke(main, ["clients", "create", "web-app", "--role", "frontend"], env=env)
    assert again.exit_code != 0
    assert "already exists" in again.output

    assert runner.invoke(main, ["clients", "revoke", "web-app"], env=env).exit_code == 0
    # The web process trusts a checked token for AUTH_CACHE_SECONDS (another process revoked it).
    clock.advance(seconds=app.extensions["webhook_service"]["settings"].auth_cache_seconds)
    assert client.post("/v1/notes", json=NOTE).status_code == 401


def test_a_revoked_token_stops_working_within_the_auth_cache_bound(app, sessions, clock):
    token = new_token(sessions, "frontend-soon-revoked", "frontend")
    caller = app.test_client(token=token)
    assert caller.post("/v1/notes", json=NOTE).status_code == 202
    with transaction(sessions) as session:
        from webhook_service.services import revoke_client

        revoke_client(session, "frontend-soon-revoked", clock())
    bound = app.extensions["webhook_service"]["settings"].auth_cache_seconds
    assert bound == 5  # the documented default
    clock.advance(seconds=bound - 1)
    assert caller.post("/v1/notes", json=NOTE).status_code == 202  # still trusted: checked
    clock.advance(seconds=1)
    assert caller.post("/v1/notes", json=NOTE).status_code == 401


def test_without_the_auth_cache_a_revoked_token_is_refused_at_once(settings, sessions, clock):
    from webhook_service.http import create_app
    from webhook_service.services import revoke_client

    app = create_app(settings.model_copy(update={"auth_cache_seconds": 0}))
    app.extensions["webhook_service"]["clock"] = clock
    try:
        token = new_token(sessions, "frontend-uncached", "frontend")
        caller = app.test_client()
        caller.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        assert caller.post("/v1/notes", json=NOTE).status_code == 202
        with transaction(sessions) as session:
            revoke_client(session, "frontend-uncached", clock())
        assert caller.post("/v1/notes", json=NOTE).status_code == 401
    finally:
        app.extensions["webhook_service"]["engine"].dispose()
