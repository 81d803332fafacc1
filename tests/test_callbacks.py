"""Callbacks to front ends: registration, signed deliveries from the record of job changes,
the retry schedule, disabling, rotation, refusals of unsafe targets, and support's view.

Every callback lands on a real local receiver (the sandbox's), which verifies it with the
official `standardwebhooks` package; only the clock is faked (signatures carry the wall
clock's time, as a receiver checks them against its own).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.conftest import START, FakeClock, make_settings
from tests.test_lifecycle_http import ENCOUNTER, accept_encounter, submit
from webhook_service import callback_client
from webhook_service.callback_sender import CallbackSender
from webhook_service.db import SessionFactory
from webhook_service.http import create_app
from webhook_service.models import CallbackAttempt, CallbackDelivery
from webhook_service.sandbox.app import create_sandbox_app
from webhook_service.sandbox.receiver import CallbackReceiver
from webhook_service.sandbox.server import start_sandbox_server
from webhook_service.services.callbacks import RETRY_SCHEDULE
from webhook_service.settings import Settings
from webhook_service.worker import Worker

ENCOUNTERS = "/v1/telephone-encounters"


@pytest.fixture
def settings(database_url: str) -> Settings:
    # The receiver is on this machine: private networks allowed, as in development.
    return make_settings(
        database_url, CALLBACK_ALLOW_PRIVATE_NETWORKS=True, CALLBACK_TIMEOUT_SECONDS=2
    )


class Receiver:
    """The sandbox's callback receiver on a local port, and what it got."""

    def __init__(self, app: Flask, url: str) -> None:
        self.app, self.url = app, url
        self.state: CallbackReceiver = app.extensions["callback_receiver"]

    def trust(self, *secrets: str) -> None:
        self.state.secrets = list(secrets)

    def answer(self, *statuses: int) -> None:
        self.state.behaviour.answers = list(statuses)

    @property
    def got(self) -> list[Any]:
        return list(self.state.received)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    app = create_sandbox_app()
    server, thread = start_sandbox_server(app)
    yield Receiver(app, f"http://127.0.0.1:{server.port}/callbacks")
    server.shutdown()
    thread.join(5)


@pytest.fixture
def sender(settings: Settings, sessions: SessionFactory, clock: FakeClock) -> CallbackSender:
    return CallbackSender(settings, sessions, clock=clock)


@pytest.fixture
def stubbed_cobalt(cobalt: responses.RequestsMock) -> responses.RequestsMock:
    """Cobalt stubbed; calls to this machine (the receiver) pass through."""
    cobalt.add_passthru("http://127.0.0.1")
    accept_encounter(cobalt)
    return cobalt


def register(client: FlaskClient, url: str) -> dict[str, Any]:
    response = client.put("/v1/callback", json={"url": url})
    assert response.status_code == 201, response.json
    assert response.json["secret"].startswith("whsec_")
    return response.json  # type: ignore[no-any-return]


def changes_readable(sender: CallbackSender) -> None:
    """Wait until every recorded change may be read (PostgreSQL): the record of changes
    leaves out those of transactions older ones may still commit around, and xmin is the
    whole server's (other databases' open transactions hold it back for a moment)."""
    with sender.sessions() as session:
        if session.get_bind().dialect.name != "postgresql":
            return
    for _ in range(200):
        with sender.sessions() as session:
            newest, xmin = session.execute(
                text(
                    "SELECT (SELECT max(txid) FROM job_changes), "
                    "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
                )
            ).one()
        if newest is None or newest < xmin:
            return
        time.sleep(0.05)
    raise AssertionError("a transaction held the server's xmin back for 10 s")


def fan_out(sender: CallbackSender) -> None:
    """Fan out until no enabled endpoint has a change of its client's jobs left behind: the
    record passes a change only when no older write transaction of the database may still
    commit, so one round can leave it for the next (as the worker's next round takes it)."""
    changes_readable(sender)
    for _ in range(100):
        sender.fan_out()
        with sender.sessions() as session:
            left = session.execute(
                text(
                    "SELECT count(*) FROM job_changes c JOIN callback_endpoints e "
                    "ON e.client_id = c.client_id AND e.state = 'enabled' "
                    "JOIN api_clients a ON a.id = e.client_id AND a.revoked_at IS NULL "
                    "WHERE c.txid > e.fanned_out_txid "
                    "OR (c.txid = e.fanned_out_txid AND c.seq > e.fanned_out_seq)"
                )
            ).scalar_one()
        if not left:
            return
        time.sleep(0.05)
    raise AssertionError("changes were left behind by 100 rounds of fan-out")


def deliver_all(sender: CallbackSender) -> int:
    fan_out(sender)
    sent = 0
    while sender.send_one():
        sent += 1
    return sent


def deliveries(sessions: SessionFactory) -> list[CallbackDelivery]:
    with sessions() as session:
        return list(session.scalars(select(CallbackDelivery).order_by(CallbackDelivery.id)))


def attempts(sessions: SessionFactory) -> list[CallbackAttempt]:
    with sessions() as session:
        return list(session.scalars(select(CallbackAttempt).order_by(CallbackAttempt.id)))


# --- Registration ---------------------------------------------------------------------------


def test_registering_shows_the_secret_once(client: FlaskClient, receiver: Receiver) -> None:
    created = register(client, receiver.url)
    assert created["url"] == receiver.url
    assert created["state"] == "enabled"
    read = client.get("/v1/callback")
    assert read.status_code == 200
    assert read.json["secret"] is None
    again = client.put("/v1/callback", json={"url": receiver.url + "/v2"})
    assert again.status_code == 200
    assert again.json["secret"] is None
    assert client.get("/v1/callback").json["url"] == receiver.url + "/v2"


def test_no_callback_is_404_and_a_bad_body_is_422(client: FlaskClient) -> None:
    assert client.get("/v1/callback").status_code == 404
    assert client.delete("/v1/callback").status_code == 404
    assert client.post("/v1/callback/rotate-secret").status_code == 404
    bad = client.put("/v1/callback", json={"address": "https://x.example"})
    assert bad.status_code == 422
    assert bad.headers["Content-Type"] == "application/problem+json"


def test_support_cannot_register_and_front_ends_cannot_read_deliveries(
    client: FlaskClient, support: FlaskClient
) -> None:
    assert support.put("/v1/callback", json={"url": "https://x.example"}).status_code == 403
    assert client.get("/v1/callback-deliveries").status_code == 403


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://callbacks.example.com/hook", "must be https"),
        ("https://127.0.0.1/hook", "not a public address"),
        ("https://localhost:8443/hook", "not a public address"),
        ("https://169.254.169.254/latest/meta-data", "not a public address"),
        ("https://10.1.2.3/hook", "not a public address"),
        ("https://[::1]/hook", "not a public address"),
        ("https://[::ffff:127.0.0.1]/hook", "not a public address"),
        ("https://user:pw@callbacks.example.com/hook", "credentials"),
        ("ftp://callbacks.example.com/hook", "absolute https URL"),
        ("https://[oops/hook", "not a valid URL"),
    ],
)
def test_unsafe_targets_are_refused_when_registering(
    database_url: str, sessions: SessionFactory, url: str, why: str
) -> None:
    app = _app(database_url, sessions)
    response = app.test_client().put("/v1/callback", json={"url": url})
    assert response.status_code == 422
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json["errors"][0]["field"] == "url"
    assert why in response.json["errors"][0]["message"]


def test_a_public_https_target_is_accepted(
    database_url: str, sessions: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(callback_client, "resolve", lambda host, port: ["93.184.215.14"])
    app = _app(database_url, sessions)
    response = app.test_client().put("/v1/callback", json={"url": "https://hooks.example.com/a"})
    assert response.status_code == 201


def _app(database_url: str, sessions: SessionFactory) -> Flask:
    """An app as production runs it: no private networks."""
    from tests.conftest import BearerClient, new_token

    production = make_settings(database_url, WEBHOOK_SERVICE_ENV="production", SECRET_KEY="s" * 40)
    app = create_app(production)
    app.test_client_class = BearerClient
    app.config["TEST_TOKEN"] = new_token(sessions, "frontend-prod", "frontend")
    return app


# --- Deliveries -----------------------------------------------------------------------------


def test_each_change_of_a_job_is_posted_signed_and_verifies(
    client: FlaskClient,
    worker: Worker,
    sender: CallbackSender,
    receiver: Receiver,
    stubbed_cobalt: responses.RequestsMock,
    sessions: SessionFactory,
) -> None:
    secret = register(client, receiver.url)["secret"]
    receiver.trust(secret)
    job = submit(client, ENCOUNTERS, ENCOUNTER)
    assert deliver_all(sender) == 1, "the job's creation is a change"
    assert worker.run_once()  # sent to Cobalt: submission progress is not a change
    assert deliver_all(sender) == 0
    got = receiver.got
    assert [r.verified for r in got] == [True]
    assert got[0].event_type == "job.updated"
    assert got[0].job_id == job["id"]
    assert got[0].job_status == "processing"
    # The body is the job resource as a poll renders it.
    with sessions() as session:
        body = session.scalars(select(CallbackDelivery.body)).one()
    assert body is not None
    assert b'"type":"job.updated"' in body


def test_the_settled_job_is_posted_as_a_poll_renders_it(
    client: FlaskClient,
    worker: Worker,
    sender: CallbackSender,
    receiver: Receiver,
    stubbed_cobalt: responses.RequestsMock,
    post_webhook: Any,
    sessions: SessionFactory,
) -> None:
    import json

    from tests.conftest import event

    receiver.trust(register(client, receiver.url)["secret"])
    job = submit(client, ENCOUNTERS, ENCOUNTER)
    worker.run_once()
    post_webhook(event("telephone_encounter.created", job_id="4242"))
    deliver_all(sender)
    got = receiver.got
    assert [(r.job_status, r.verified) for r in got] == [
        ("processing", True),
        ("completed", True),
    ]
    with sessions() as session:
        last = session.scalars(
            select(CallbackDelivery).order_by(CallbackDelivery.id.desc())
        ).first()
    assert last is not None
    assert last.body is not None
    assert json.loads(last.body)["data"] == client.get(f"/v1/jobs/{job['id']}").json


def test_a_failing_receiver_is_retried_on_the_schedule_with_the_same_webhook_id(
    client: FlaskClient,
    sender: CallbackSender,
    receiver: Receiver,
    clock: FakeClock,
    sessions: SessionFactory,
) -> None:
    receiver.trust(register(client, receiver.url)["secret"])
    receiver.answer(*[500] * 20)
    submit(client, ENCOUNTERS, ENCOUNTER)
    assert deliver_all(sender) == 1
    for pause in RETRY_SCHEDULE:
        clock.advance(seconds=pause.total_seconds() - 1)
        assert not sender.send_one(), f"nothing is due before {pause} has passed"
        clock.advance(seconds=1)
        assert sender.send_one(), f"the retry after {pause} is due"
    clock.advance(days=30)
    assert not sender.send_one(), "after the last retry the delivery has failed"
    got = receiver.got
    assert len(got) == 1 + len(RETRY_SCHEDULE)
    assert len({r.webhook_id for r in got}) == 1, "every attempt has the same webhook-id"
    assert all(r.verified for r in got)
    [delivery] = deliveries(sessions)
    assert delivery.state == "failed"
    assert delivery.attempts == 1 + len(RETRY_SCHEDULE)
    span = sum(RETRY_SCHEDULE, timedelta())
    assert timedelta(days=2.5) < span < timedelta(days=3.5), "about three days"
    kept = attempts(sessions)
    assert [a.status_code for a in kept] == [500] * len(got)
    assert all(not a.succeeded and a.latency_ms is not None for a in kept)


def test_an_endpoint_failing_for_days_is_disabled_until_its_owner_re_enables_it(
    client: FlaskClient,
    sender: CallbackSender,
    receiver: Receiver,
    clock: FakeClock,
    sessions: SessionFactory,
) -> None:
    receiver.trust(register(client, receiver.url)["secret"])
    receiver.answer(*[503] * 20)
    submit(client, ENCOUNTERS, ENCOUNTER)
    deliver_all(sender)
    for pause in RETRY_SCHEDULE:
        clock.advance(seconds=pause.total_seconds())
        sender.send_one()
    shown = client.get("/v1/callback").json
    assert shown["state"] == "disabled"
    assert shown["failing_since"] is not None

    # While disabled, nothing is sent, not even the next job's changes.
    receiver.answer()
    second = submit(client, ENCOUNTERS, {**ENCOUNTER, "reason": "Second"})
    assert deliver_all(sender) == 0
    assert len(receiver.got) == 1 + len(RETRY_SCHEDULE)

    # The owner re-enables it (registering again does too): what it missed is sent.
    enabled = client.post("/v1/callback/enable")
    assert enabled.status_code == 200
    assert enabled.json["state"] == "enabled"
    assert enabled.json["failing_since"] is None
    assert deliver_all(sender) == 1
    assert receiver.got[-1].job_id == second["id"]
    assert receiver.got[-1].verified


def test_a_success_clears_the_failures(
    client: FlaskClient, sender: CallbackSender, receiver: Receiver, clock: FakeClock
) -> None:
    receiver.trust(register(client, receiver.url)["secret"])
    receiver.answer(500, 500)
    submit(client, ENCOUNTERS, ENCOUNTER)
    deliver_all(sender)
    assert client.get("/v1/callback").json["failing_since"] is not None
    for pause in RETRY_SCHEDULE[:2]:
        clock.advance(seconds=pause.total_seconds())
        sender.send_one()
    assert [r.answered for r in receiver.got] == [500, 500, 204]
    assert client.get("/v1/callback").json["failing_since"] is None


def test_changes_of_one_job_are_delivered_in_order(
    client: FlaskClient,
    worker: Worker,
    sender: CallbackSender,
    receiver: Receiver,
    stubbed_cobalt: responses.RequestsMock,
    post_webhook: Any,
    clock: FakeClock,
) -> None:
    from tests.conftest import event

    receiver.trust(register(client, receiver.url)["secret"])
    receiver.answer(500)  # the first change fails once
    submit(client, ENCOUNTERS, ENCOUNTER)
    fan_out(sender)
    assert sender.send_one()
    worker.run_once()
    post_webhook(event("telephone_encounter.created", job_id="4242"))
    fan_out(sender)
    assert not sender.send_one(), "the outcome waits for the job's earlier change"
    clock.advance(seconds=RETRY_SCHEDULE[0].total_seconds())
    assert deliver_all(sender) == 2
    assert [(r.job_status, r.answered) for r in receiver.got] == [
        ("processing", 500),
        ("processing", 204),
        ("completed", 204),
    ]


def test_another_clients_jobs_are_not_posted(
    client: FlaskClient,
    app: Flask,
    sessions: SessionFactory,
    sender: CallbackSender,
    receiver: Receiver,
) -> None:
    from tests.conftest import new_token

    receiver.trust(register(client, receiver.url)["secret"])
    other = app.test_client(token=new_token(sessions, "frontend-b", "frontend"))
    submit(other, ENCOUNTERS, ENCOUNTER)
    assert deliver_all(sender) == 0
    assert receiver.got == []


def test_removing_the_callback_cancels_what_is_pending(
    client: FlaskClient, sender: CallbackSender, receiver: Receiver, sessions: SessionFactory
) -> None:
    receiver.trust(register(client, receiver.url)["secret"])
    receiver.answer(500)
    submit(client, ENCOUNTERS, ENCOUNTER)
    deliver_all(sender)
    assert client.delete("/v1/callback").status_code == 204
    assert client.get("/v1/callback").status_code == 404
    assert [d.state for d in deliveries(sessions)] == ["cancelled"]
    submit(client, ENCOUNTERS, ENCOUNTER)
    assert deliver_all(sender) == 0
    # Registering again makes a new endpoint with a new secret.
    again = register(client, receiver.url)
    assert again["secret"]


# --- Secret rotation -------------------------------------------------------------------------


def test_after_a_rotation_both_secrets_verify_for_a_day_then_only_the_new(
    client: FlaskClient,
    sender: CallbackSender,
    receiver: Receiver,
    clock: FakeClock,
) -> None:
    old = register(client, receiver.url)["secret"]
    rotated = client.post("/v1/callback/rotate-secret")
    assert rotated.status_code == 200
    new = rotated.json["secret"]
    assert new.startswith("whsec_")
    assert new != old
    assert rotated.json["previous_secret_expires_at"] is not None
    assert client.get("/v1/callback").json["secret"] is None

    for secrets, expected in (([old], True), ([new], True)):
        receiver.trust(*secrets)
        submit(client, ENCOUNTERS, ENCOUNTER)
        deliver_all(sender)
        assert receiver.got[-1].verified is expected

    clock.advance(hours=24)
    receiver.trust(old)
    submit(client, ENCOUNTERS, ENCOUNTER)
    deliver_all(sender)
    assert receiver.got[-1].verified is False, "a day on, the old secret no longer signs"
    receiver.trust(new)
    submit(client, ENCOUNTERS, ENCOUNTER)
    deliver_all(sender)
    assert receiver.got[-1].verified is True


def test_signatures_follow_the_standard_webhooks_specification() -> None:
    secret = callback_client.new_secret()
    body = b'{"type":"job.updated"}'
    import time

    now = int(time.time())
    headers = callback_client.signed_headers([secret], "msg_1", now, body)
    assert Webhook(secret).verify(body, headers) == {"type": "job.updated"}
    with pytest.raises(WebhookVerificationError):
        Webhook(callback_client.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)


# --- Refusals at send time, bounded attempts --------------------------------------------------


def test_a_name_that_resolves_to_loopback_by_send_time_is_refused(
    client: FlaskClient,
    database_url: str,
    sessions: SessionFactory,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    receiver: Receiver,
) -> None:
    """Registered while the name was public; by send time DNS says 127.0.0.1."""
    monkeypatch.setattr(callback_client, "resolve", lambda host, port: ["93.184.215.14"])
    app = _app(database_url, sessions)
    front = app.test_client()
    assert front.put("/v1/callback", json={"url": "https://hooks.example.com/a"}).status_code == 201
    submit(front, ENCOUNTERS, ENCOUNTER)
    monkeypatch.setattr(callback_client, "resolve", lambda host, port: ["127.0.0.1"])
    production = CallbackSender(
        make_settings(database_url, WEBHOOK_SERVICE_ENV="production"), sessions, clock=clock
    )
    fan_out(production)
    assert production.send_one()
    [attempt] = attempts(sessions)
    assert attempt.status_code is None
    assert attempt.error is not None
    assert attempt.error.startswith("refused:")
    assert "127.0.0.1" in attempt.error


def test_the_address_actually_connected_to_is_checked(
    database_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check before connecting was told a public address; the socket reached 127.0.0.1."""
    monkeypatch.setattr(callback_client, "resolve", lambda host, port: ["93.184.215.14"])
    port = receiver.url.split(":")[2].split("/")[0]
    answer = callback_client.send(
        f"https://localhost:{port}/callbacks",
        b"{}",
        {},
        allow_private=False,
        connect_timeout=2,
        total_timeout=2,
    )
    assert not answer.succeeded
    assert answer.error is not None
    assert "127.0.0.1" in answer.error
    assert receiver.got == [], "nothing was sent to the private address"


def test_a_hanging_receiver_costs_one_bounded_attempt(
    client: FlaskClient,
    database_url: str,
    sessions: SessionFactory,
    clock: FakeClock,
    receiver: Receiver,
) -> None:
    receiver.trust(register(client, receiver.url)["secret"])
    receiver.state.behaviour.hang_rate = 1.0
    receiver.state.behaviour.hang_seconds = 3
    submit(client, ENCOUNTERS, ENCOUNTER)
    quick = make_settings(
        database_url, CALLBACK_ALLOW_PRIVATE_NETWORKS=True, CALLBACK_TIMEOUT_SECONDS=0.5
    )
    hurried = CallbackSender(quick, sessions, clock=clock)
    deliver_all(hurried)
    [attempt] = attempts(sessions)
    assert attempt.error == "timeout"
    assert not attempt.succeeded
    [delivery] = deliveries(sessions)
    assert delivery.state == "pending"
    assert delivery.next_attempt_at == clock.now + RETRY_SCHEDULE[0]


@responses.activate
def test_an_attempt_keeps_a_bounded_excerpt_of_the_answer(
    client: FlaskClient, sender: CallbackSender, sessions: SessionFactory
) -> None:
    url = "https://hooks.example.com/emr"
    responses.add(responses.POST, url, body="E" * 100_000, status=502)
    register(client, url)
    submit(client, ENCOUNTERS, ENCOUNTER)
    deliver_all(sender)
    [attempt] = attempts(sessions)
    assert attempt.status_code == 502
    assert attempt.response_excerpt == "E" * callback_client.EXCERPT_CHARS


@responses.activate
def test_a_redirect_is_not_followed(
    client: FlaskClient, sender: CallbackSender, sessions: SessionFactory
) -> None:
    url = "https://hooks.example.com/emr"
    responses.add(responses.POST, url, status=307, headers={"Location": "http://169.254.169.254/"})
    register(client, url)
    submit(client, ENCOUNTERS, ENCOUNTER)
    deliver_all(sender)
    assert [c.request.url for c in responses.calls] == [url]
    [attempt] = attempts(sessions)
    assert attempt.status_code == 307
    assert not attempt.succeeded


# --- Support --------------------------------------------------------------------------------


def test_support_lists_reads_and_resends_a_delivery(
    client: FlaskClient,
    support: FlaskClient,
    sender: CallbackSender,
    receiver: Receiver,
    sessions: SessionFactory,
    clock: FakeClock,
) -> None:
    receiver.trust(register(client, receiver.url)["secret"])
    receiver.answer(*[500] * 20)
    job = submit(client, ENCOUNTERS, ENCOUNTER)
    deliver_all(sender)
    for pause in RETRY_SCHEDULE:
        clock.advance(seconds=pause.total_seconds())
        sender.send_one()
    # The endpoint has been disabled; its owner fixes the receiver and re-enables it.
    assert client.post("/v1/callback/enable").status_code == 200
    receiver.answer()

    endpoints = support.get("/v1/callback-endpoints")
    assert endpoints.status_code == 200
    assert [e["client"] for e in endpoints.json["endpoints"]] == ["frontend-a"]
    listed = support.get("/v1/callback-deliveries", query_string={"job_id": job["id"]})
    assert listed.status_code == 200
    [delivery] = listed.json["deliveries"]
    assert delivery["state"] == "failed"
    assert delivery["client"] == "frontend-a"
    one = support.get(f"/v1/callback-deliveries/{delivery['id']}")
    assert one.status_code == 200
    assert len(one.json["attempt_log"]) == 1 + len(RETRY_SCHEDULE)
    assert {a["status_code"] for a in one.json["attempt_log"]} == {500}

    resent = support.post(
        f"/v1/callback-deliveries/{delivery['id']}/resend", json={"reason": "receiver fixed"}
    )
    assert resent.status_code == 202, resent.json
    assert resent.json["state"] == "pending"
    assert sender.send_one()
    assert receiver.got[-1].answered == 204
    assert receiver.got[-1].verified
    assert receiver.got[-1].webhook_id == delivery["webhook_id"]
    after = support.get(f"/v1/callback-deliveries/{delivery['id']}").json
    assert after["state"] == "delivered"
    assert after["attempt_log"][-1]["trigger"] == "resend"


def test_support_lists_refuse_bad_filters(support: FlaskClient) -> None:
    bad = support.get("/v1/callback-deliveries", query_string={"state": "lost", "job_id": "x"})
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json["errors"]} == {"state", "job_id"}
    assert support.get("/v1/callback-deliveries/nope").status_code == 404
    # Digits Python's isdigit() accepts but int() does not: a clear answer, never a 500.
    assert support.get("/v1/callback-deliveries/\u00b2").status_code == 404
    superscript = support.get("/v1/callback-deliveries", query_string={"limit": "\u00b2"})
    assert superscript.status_code == 422
    assert [e["field"] for e in superscript.json["errors"]] == ["limit"]
    missing = support.post("/v1/callback-deliveries/999/resend", json={"reason": "why not"})
    assert missing.status_code == 404


def test_resending_to_a_disabled_endpoint_is_409(
    client: FlaskClient,
    support: FlaskClient,
    sender: CallbackSender,
    receiver: Receiver,
    clock: FakeClock,
) -> None:
    receiver.trust(register(client, receiver.url)["secret"])
    receiver.answer(*[500] * 20)
    submit(client, ENCOUNTERS, ENCOUNTER)
    deliver_all(sender)
    for pause in RETRY_SCHEDULE:
        clock.advance(seconds=pause.total_seconds())
        sender.send_one()
    [delivery] = support.get("/v1/callback-deliveries").json["deliveries"]
    refused = support.post(
        f"/v1/callback-deliveries/{delivery['id']}/resend", json={"reason": "try again"}
    )
    assert refused.status_code == 409
    assert "disabled" in refused.json["detail"]


def test_the_secret_is_encrypted_at_rest(
    client: FlaskClient, receiver: Receiver, engine: Any
) -> None:
    from sqlalchemy import text

    secret = register(client, receiver.url)["secret"]
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT secret_enc FROM callback_endpoints")).scalar_one()
    assert secret.encode() not in bytes(stored)


def test_the_retry_scale_shrinks_the_schedule_for_reliability_runs(
    client: FlaskClient,
    database_url: str,
    sessions: SessionFactory,
    clock: FakeClock,
    receiver: Receiver,
) -> None:
    receiver.trust(register(client, receiver.url)["secret"])
    receiver.answer(500)
    submit(client, ENCOUNTERS, ENCOUNTER)
    scaled = make_settings(
        database_url, CALLBACK_ALLOW_PRIVATE_NETWORKS=True, CALLBACK_RETRY_SCALE=0.01
    )
    deliver_all(CallbackSender(scaled, sessions, clock=clock))
    [delivery] = deliveries(sessions)
    assert delivery.next_attempt_at == clock.now + RETRY_SCHEDULE[0] * 0.01


def test_a_revoked_clients_endpoint_hears_nothing_more(
    client: FlaskClient, sender: CallbackSender, receiver: Receiver, sessions: SessionFactory
) -> None:
    from webhook_service.db import transaction
    from webhook_service.services import revoke_client

    receiver.trust(register(client, receiver.url)["secret"])
    submit(client, ENCOUNTERS, ENCOUNTER)
    with transaction(sessions) as session:
        revoke_client(session, "frontend-a", START)
    assert deliver_all(sender) == 0
    assert receiver.got == []


def test_several_workers_fan_out_each_change_once(
    client: FlaskClient,
    settings: Settings,
    sessions: SessionFactory,
    clock: FakeClock,
    receiver: Receiver,
) -> None:
    import threading

    receiver.trust(register(client, receiver.url)["secret"])
    for n in range(6):
        submit(client, ENCOUNTERS, {**ENCOUNTER, "reason": f"Refill {n}"})
    senders = [CallbackSender(settings, sessions, clock=clock) for _ in range(4)]
    changes_readable(senders[0])
    errors: list[BaseException] = []

    def fan_out(sender: CallbackSender) -> None:
        try:
            for _ in range(5):
                sender.fan_out()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=fan_out, args=(s,)) for s in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    fan_out(senders[0])  # whatever a round left for the next
    made = deliveries(sessions)
    assert len(made) == 6
    assert len({d.change_seq for d in made}) == 6
