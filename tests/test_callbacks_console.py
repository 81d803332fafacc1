"""The support console's callback pages: endpoints and deliveries, one delivery's attempts
(answers shown only on an audited request), and resend with a reason (CSRF'd, audited)."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from tests import test_callbacks as cb
from tests.conftest import FakeClock, new_token
from tests.test_callbacks import ENCOUNTERS, Receiver, deliver_all, register
from tests.test_console import Console, anonymous, text_of
from tests.test_lifecycle_http import ENCOUNTER, submit
from webhook_service.callback_sender import CallbackSender
from webhook_service.db import SessionFactory
from webhook_service.models import AuditEvent, CallbackDelivery
from webhook_service.services.callbacks import RETRY_SCHEDULE

# The callback tests' fixtures: private networks allowed, a local receiver, a sender.
settings, receiver, sender = cb.settings, cb.receiver, cb.sender


def signed_in(app: Flask, sessions: SessionFactory) -> Console:
    console = anonymous(app)
    assert console.sign_in(new_token(sessions, "support-1", "support")).status_code == 303
    return console


def failed_delivery(
    client: FlaskClient, sender: CallbackSender, receiver: Receiver, clock: FakeClock
) -> None:
    receiver.trust(register(client, receiver.url)["secret"])
    receiver.answer(*[500] * 20)
    submit(client, ENCOUNTERS, ENCOUNTER)
    deliver_all(sender)
    for pause in RETRY_SCHEDULE:
        clock.advance(seconds=pause.total_seconds())
        sender.send_one()


def test_staff_see_endpoints_and_deliveries_and_resend_one(
    app: Flask,
    client: FlaskClient,
    sessions: SessionFactory,
    sender: CallbackSender,
    receiver: Receiver,
    clock: FakeClock,
) -> None:
    failed_delivery(client, sender, receiver, clock)
    client.post("/v1/callback/enable")
    receiver.answer()
    console = signed_in(app, sessions)

    listing = console.get("/console/callbacks")
    assert listing.status_code == 200
    assert receiver.url in listing.text
    assert 'data-state="failed"' in listing.text
    with sessions() as session:
        delivery = session.scalars(select(CallbackDelivery)).one()

    page = console.get(f"/console/callbacks/{delivery.id}")
    assert page.status_code == 200
    assert text_of(page.text, "callback-state") == "failed"
    assert page.text.count('data-succeeded="no"') == 1 + len(RETRY_SCHEDULE)
    assert "sandbox fault" not in page.text, "answers stay hidden until asked for"

    shown = console.post(f"/console/callbacks/{delivery.id}/details")
    assert shown.status_code == 200
    assert "sandbox fault" in shown.text

    refused = console.post(f"/console/callbacks/{delivery.id}/resend", {"reason": ""})
    assert refused.status_code == 422
    resent = console.post(f"/console/callbacks/{delivery.id}/resend", {"reason": "receiver fixed"})
    assert resent.status_code == 303
    assert sender.send_one()
    assert receiver.got[-1].verified
    assert receiver.got[-1].answered == 204
    after = console.get(f"/console/callbacks/{delivery.id}")
    assert text_of(after.text, "callback-state") == "delivered"

    with sessions() as session:
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert "callback.read" in actions
    assert "callback.resend" in actions


def test_a_resend_without_the_csrf_token_is_refused(
    app: Flask,
    client: FlaskClient,
    sessions: SessionFactory,
    sender: CallbackSender,
    receiver: Receiver,
    clock: FakeClock,
) -> None:
    failed_delivery(client, sender, receiver, clock)
    console = signed_in(app, sessions)
    with sessions() as session:
        delivery = session.scalars(select(CallbackDelivery)).one()
    forged = console.post(f"/console/callbacks/{delivery.id}/resend", {"reason": "x"}, csrf=False)
    assert forged.status_code == 400
    with sessions() as session:
        assert session.scalars(select(CallbackDelivery.state)).one() == "failed"


def test_resending_to_a_disabled_endpoint_says_why(
    app: Flask,
    client: FlaskClient,
    sessions: SessionFactory,
    sender: CallbackSender,
    receiver: Receiver,
    clock: FakeClock,
) -> None:
    failed_delivery(client, sender, receiver, clock)
    console = signed_in(app, sessions)
    with sessions() as session:
        delivery = session.scalars(select(CallbackDelivery)).one()
    refused = console.post(f"/console/callbacks/{delivery.id}/resend", {"reason": "again"})
    assert refused.status_code == 409
    assert "disabled" in text_of(refused.text, "resend-error")


def test_a_bad_filter_is_422_and_an_unknown_delivery_404(
    app: Flask, sessions: SessionFactory
) -> None:
    console = signed_in(app, sessions)
    assert console.get("/console/callbacks", query_string={"state": "lost"}).status_code == 422
    assert console.get("/console/callbacks/999").status_code == 404
