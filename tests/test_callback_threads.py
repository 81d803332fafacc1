"""The worker's callback threads: rung by the listener when a change commits (PostgreSQL),
polling without one (SQLite), and apart from the threads that call Cobalt."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine

from tests.test_callbacks import ENCOUNTERS, Receiver, receiver, register, settings  # noqa: F401
from tests.test_lifecycle_http import ENCOUNTER, submit
from webhook_service import callback_sender
from webhook_service.callback_sender import CallbackSender
from webhook_service.wakeups import Wakeups


@pytest.fixture
def listener(engine: Engine) -> Iterator[Wakeups]:
    hub = Wakeups(engine, name="worker-listen")
    yield hub
    hub.stop()


def _wait_for(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """A generous bound for something the threads do on their own (not a measure)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _run(sender: CallbackSender, stop: threading.Event, doorbell) -> list[threading.Thread]:  # type: ignore[no-untyped-def]
    """The worker's callback threads: one fanning out, two sending."""
    handoff = threading.Semaphore(0)
    threads = [
        threading.Thread(target=sender.run_fan_out, args=(stop, doorbell, handoff, 2)),
        *(threading.Thread(target=sender.run_sending, args=(stop, handoff)) for _ in range(2)),
    ]
    for thread in threads:
        thread.daemon = True
        thread.start()
    return threads


@pytest.mark.postgres_only
def test_a_committed_change_rings_the_sender_at_once(
    client: FlaskClient,
    receiver: Receiver,  # noqa: F811
    sender: CallbackSender,
    listener: Wakeups,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With nothing due the threads wait for the listener's ring; a submission's change rings
    them, and the callback goes out, long before they would look again by themselves."""
    monkeypatch.setattr(callback_sender, "IDLE_LISTENING_SECONDS", 600.0)
    monkeypatch.setattr(callback_sender, "SENDER_IDLE_SECONDS", 600.0)
    receiver.trust(register(client, receiver.url)["secret"])
    stop = threading.Event()
    with listener.watch(every=True) as doorbell:
        threads = _run(sender, stop, doorbell)
        try:
            time.sleep(0.3)  # the threads have looked, found nothing, and wait (600 s)
            assert receiver.got == []
            job = submit(client, ENCOUNTERS, ENCOUNTER)
            _wait_for(lambda: len(receiver.got) == 1)
        finally:
            stop.set()
            listener.stop()
            for thread in threads:
                thread.join(5)
    assert [(r.job_id, r.job_status, r.verified) for r in receiver.got] == [
        (job["id"], "processing", True)
    ]


@pytest.mark.sqlite_only
def test_without_a_listener_the_sender_looks_by_itself(
    client: FlaskClient,
    receiver: Receiver,  # noqa: F811
    sender: CallbackSender,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SQLite has no NOTIFY: the fanning-out thread looks on its own every
    IDLE_POLLING_SECONDS and hands what it finds to a sending thread."""
    monkeypatch.setattr(callback_sender, "SENDER_IDLE_SECONDS", 600.0)
    receiver.trust(register(client, receiver.url)["secret"])
    stop = threading.Event()
    threads = _run(sender, stop, None)
    try:
        time.sleep(0.3)
        job = submit(client, ENCOUNTERS, ENCOUNTER)
        _wait_for(lambda: len(receiver.got) == 1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    assert receiver.got[0].job_id == job["id"]


@pytest.fixture
def sender(settings, sessions, clock) -> CallbackSender:  # type: ignore[no-untyped-def]  # noqa: F811
    return CallbackSender(settings, sessions, clock=clock)


def test_a_hanging_receiver_holds_one_sender_and_no_one_elses_callbacks(
    app,  # type: ignore[no-untyped-def]
    client: FlaskClient,
    receiver: Receiver,  # noqa: F811
    sender: CallbackSender,
    sessions,
    listener: Wakeups,
    is_postgres: bool,
) -> None:
    """Front end A's receiver hangs on its callback (6 s, under the timeout): the thread that
    fans out never calls a receiver, so front end B's job, submitted while A's call hangs,
    is fanned out and called back by another sending thread in the meantime."""
    from tests.conftest import new_token
    from webhook_service.models import CallbackAttempt
    from webhook_service.sandbox.app import create_sandbox_app
    from webhook_service.sandbox.server import start_sandbox_server

    other_app = create_sandbox_app()
    server, served = start_sandbox_server(other_app)
    hanging = Receiver(other_app, f"http://127.0.0.1:{server.port}/callbacks")
    hanging.state.behaviour.hang_rate = 1.0
    hanging.state.behaviour.hang_seconds = 6
    hanging.trust(register(client, hanging.url)["secret"])
    b = app.test_client(token=new_token(sessions, "frontend-b", "frontend"))
    receiver.trust(register(b, receiver.url)["secret"])
    stop = threading.Event()
    with listener.watch(every=True) if is_postgres else _no_watch() as doorbell:
        threads = _run(sender, stop, doorbell)
        try:
            submit(client, ENCOUNTERS, ENCOUNTER)
            _wait_for(lambda: len(hanging.got) == 1)  # A's call is in, and hangs
            job = submit(b, ENCOUNTERS, {**ENCOUNTER, "patient_mrn": "MRN-B"})
            _wait_for(lambda: len(receiver.got) == 1, timeout=5.0)

            def attempts() -> int:
                with sessions() as session:
                    return session.query(CallbackAttempt).count()

            _wait_for(lambda: attempts() >= 1, timeout=3.0)  # B's, recorded after its answer
            assert attempts() == 1, "only B's: A's call still hangs"
        finally:
            stop.set()
            listener.stop()
            for thread in threads:
                thread.join(10)
            server.shutdown()
            served.join(5)
    assert receiver.got[0].job_id == job["id"]


@contextmanager
def _no_watch() -> Iterator[None]:
    yield None
