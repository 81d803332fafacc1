"""Migration 0014: front ends' Idempotency-Keys are stored only as keyed hashes, and a
replay with a key stored before it still finds its job."""

from __future__ import annotations

from sqlalchemy import text

from tests.conftest import PHI_KEY, PHI_SEARCH_KEY, BearerClient, make_settings, new_token
from tests.test_lifecycle_http import NOTE
from tests.test_migrations import empty_database  # noqa: F401  (the fixture, both databases)
from webhook_service.db import make_engine, make_session_factory
from webhook_service.http import create_app
from webhook_service.migrations import downgrade, upgrade

KEY = "visit-42 Jane Doe knee"  # free text a front end chose: it may quote a patient


def test_stored_keys_are_hashed_and_a_replay_still_finds_its_job(empty_database, monkeypatch):  # noqa: F811
    monkeypatch.setenv("PHI_ENCRYPTION_KEYS", PHI_KEY)
    monkeypatch.setenv("PHI_SEARCH_KEY", PHI_SEARCH_KEY)
    monkeypatch.setenv("WEBHOOK_SERVICE_ENV", "test")
    upgrade(empty_database)
    app = create_app(make_settings(empty_database))
    app.test_client_class = BearerClient
    engine = make_engine(empty_database)
    try:
        token = new_token(make_session_factory(engine), "web-app", "frontend")
        front_end = app.test_client(token=token)
        first = front_end.post("/v1/notes", json=NOTE, headers={"Idempotency-Key": KEY})
        assert first.status_code == 202
        with engine.begin() as conn:
            [stored] = conn.execute(text("SELECT idempotency_key FROM jobs")).scalars()
            assert KEY not in stored
            assert stored.startswith("hmac:")
            # As the release before 0014 stored it.
            conn.execute(text("UPDATE jobs SET idempotency_key = :key"), {"key": KEY})
        downgrade(empty_database, "0013")
        upgrade(empty_database)
        with engine.connect() as conn:
            [migrated] = conn.execute(text("SELECT idempotency_key FROM jobs")).scalars()
        assert migrated == stored
        again = front_end.post("/v1/notes", json=NOTE, headers={"Idempotency-Key": KEY})
        assert again.status_code in (200, 202)
        assert again.json["id"] == first.json["id"]
        assert again.headers.get("Idempotent-Replayed") == "true"
    finally:
        app.extensions["webhook_service"]["engine"].dispose()
        engine.dispose()


def test_a_key_the_previous_release_wrote_during_the_deploy_still_matches(app, client, engine):
    first = client.post("/v1/notes", json=NOTE, headers={"Idempotency-Key": KEY})
    with engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET idempotency_key = :key"), {"key": KEY})
    again = client.post("/v1/notes", json=NOTE, headers={"Idempotency-Key": KEY})
    assert again.json["id"] == first.json["id"]
