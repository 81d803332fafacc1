"""The worker: claims, leases, one note per appointment, and many workers at once."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest
import responses
from sqlalchemy import make_url, select, update

from tests.conftest import COBALT, FakeClock, event, make_settings, pending_encounter
from tests.processes import throwaway_postgres_database
from tests.test_lifecycle_http import ENCOUNTER, NOTE, accept_note, poll, submit
from webhook_service import services
from webhook_service.cobalt import CobaltClient
from webhook_service.db import make_engine, make_session_factory, transaction
from webhook_service.migrations import upgrade
from webhook_service.models import Clinic, Job, JobEvent
from webhook_service.worker import Worker


def timeline(sessions, job_id: str) -> list[str]:
    with sessions() as session:
        rows = session.scalars(
            select(JobEvent.type).where(JobEvent.job_id == uuid.UUID(job_id)).order_by(JobEvent.id)
        )
        return list(rows)


def test_second_note_for_same_appointment_waits_for_the_first(
    client, worker: Worker, cobalt, clock: FakeClock, post_webhook, sessions
):
    accept_note(cobalt)
    first = submit(client, "/v1/notes", NOTE)
    clock.advance(seconds=1)  # due a moment later: equal instants are claimed in no set order
    second = submit(client, "/v1/notes", {**NOTE, "note": "Addendum"})
    assert worker.run_once()
    assert not worker.run_once(), "the second note must not go while the first is in flight"
    assert poll(client, second["id"])["submission"]["state"] == "waiting"
    assert len([c for c in cobalt.calls if c.request.url.endswith("/notes")]) == 1

    post_webhook(event("note.created", appointment_id="728948"))
    assert poll(client, first["id"])["status"] == "completed"
    assert poll(client, second["id"])["status"] == "processing"
    assert worker.run_once(), "the first note settled, so the second goes now"
    post_webhook(event("note.created", appointment_id="728948"))
    assert poll(client, second["id"])["status"] == "completed"
    assert "submission_waiting" in timeline(sessions, second["id"])


def test_a_note_settled_by_its_cobalt_job_id_lets_the_next_note_go(
    client, worker: Worker, cobalt, post_webhook, sessions, clock: FakeClock
):
    """The webhook names the note's Cobalt job (settled without loading the job): the
    appointment's slot is freed and the note waiting behind it is sent next."""
    accept_note(cobalt, job_id="cj_first")
    first = submit(client, "/v1/notes", NOTE)
    # Submitted a moment later, as in life: two jobs due at the same instant are claimed in
    # no set order on PostgreSQL (ties follow the rows' places in the table).
    clock.advance(seconds=1)
    second = submit(client, "/v1/notes", {**NOTE, "note": "Addendum"})
    assert worker.run_once()
    assert not worker.run_once()
    post_webhook(event("note.created", job_id="cj_first", appointment_id="728948"))
    assert poll(client, first["id"])["status"] == "completed"
    assert poll(client, first["id"])["cobalt"]["job_id"] == "cj_first"
    assert worker.run_once(), "the first note settled by its job id, so the second goes now"
    assert poll(client, second["id"])["submission"]["state"] == "accepted"
    assert timeline(sessions, first["id"])[-1] == "webhook_applied"


def test_notes_for_different_appointments_go_together(client, worker, cobalt):
    accept_note(cobalt)
    submit(client, "/v1/notes", NOTE)
    submit(client, "/v1/notes", {**NOTE, "appointment_id": "999"})
    assert worker.run_once()
    assert worker.run_once()
    assert len([c for c in cobalt.calls if c.request.url.endswith("/notes")]) == 2


def test_worker_killed_mid_call_leaves_job_unknown_not_resent(
    client, worker: Worker, cobalt, clock: FakeClock, sessions, settings
):
    accept_note(cobalt)
    job = submit(client, "/v1/notes", NOTE)
    # A worker claims the job and dies before recording Cobalt's answer.
    from webhook_service.db import transaction
    from webhook_service.services import claim_due_job

    with transaction(sessions) as session:
        from datetime import timedelta

        assert claim_due_job(session, now=clock(), lease=timedelta(seconds=60)) is not None
    assert poll(client, job["id"])["submission"]["state"] == "sending"
    clock.advance(seconds=61)
    assert not worker.run_once()
    assert poll(client, job["id"])["submission"]["state"] == "unknown"
    assert "claim_expired" in timeline(sessions, job["id"])
    clock.advance(minutes=30)
    assert not worker.run_once()
    assert not [c for c in cobalt.calls if c.request.url.endswith("/notes")]


def test_worker_learns_the_clinic_reference_id(client, worker, cobalt, sessions):
    accept_note(cobalt)
    submit(client, "/v1/notes", NOTE)
    worker.run_once()
    with sessions() as session:
        assert session.scalars(select(Clinic)).one().access_token_reference_id == "atr_clinic_1"


def test_request_body_sent_is_exactly_what_the_front_end_posted(client, worker, cobalt):
    accept_note(cobalt)
    body = {**NOTE, "icd_10_codes": ["E11.9"], "cpt_codes": ["99213"]}
    submit(client, "/v1/notes", body)
    worker.run_once()
    sent = next(c for c in cobalt.calls if c.request.url.endswith("/notes"))
    assert json.loads(sent.request.body) == body


def test_many_workers_submit_each_job_exactly_once(
    client, settings, sessions, clock: FakeClock, is_postgres
):
    """Four workers race over 40 jobs; Cobalt sees each job once, and every job is sent."""
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def cobalt_accepts(request):
        body = json.loads(request.body)
        with lock:
            seen[body["patient_mrn"]] += 1
        return (200, {}, json.dumps({"success": True, "job_id": body["patient_mrn"]}))

    for n in range(40):
        client.post(
            "/v1/telephone-encounters",
            json={
                "patient_mrn": f"MRN-{n}",
                "provider_id": "p",
                "location_id": "l",
                "assigned_to_id": "s",
            },
        )
    with responses.RequestsMock(assert_all_requests_are_fired=False) as cobalt:
        cobalt.add_callback(
            responses.POST, f"{COBALT}/telephone-encounters", callback=cobalt_accepts
        )
        cobalt.add(responses.GET, f"{COBALT}/settings", json={"access_token_reference_id": "a"})

        def work() -> None:
            worker = Worker(settings, sessions, CobaltClient(COBALT, "c", "s"), clock=clock)
            while worker.run_once():
                pass

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert len(seen) == 40
    assert set(seen.values()) == {1}
    with sessions() as session:
        states = Counter(session.scalars(select(Job.submission_state)))
    assert states == {"accepted": 40}


# --- The database goes away while Cobalt is answering ---------------------------------------


@pytest.mark.postgres_only
def test_cobalts_answer_is_recorded_when_the_database_comes_back(postgres_server_url: str):
    """Cobalt accepts an encounter while our database refuses connections: the worker keeps
    trying to record the answer, so the job keeps the ids its webhook will be matched by
    (without them it could only fail as `no_outcome`)."""
    with throwaway_postgres_database(postgres_server_url) as url:
        upgrade(url)
        engine = make_engine(url)
        sessions = make_session_factory(engine)
        settings = make_settings(url)
        job_id = pending_encounter(sessions, settings, ENCOUNTER)
        name = make_url(url).database
        admin = (
            make_url(postgres_server_url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        outage = threading.Event()

        def accept_during_an_outage(_request):
            # The claim is committed and the call is in flight: now the database goes away.
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
            outage.set()
            threading.Timer(1.0, _allow_connections, (admin, name)).start()
            reply = {"success": True, "job_id": 4242, "telephone_encounter_id": "te_77"}
            return 200, {}, json.dumps(reply)

        worker = Worker(
            settings,
            sessions,
            CobaltClient(COBALT, "ci_test", "cs_test", connect_timeout=1, read_timeout=1),
            jitter=lambda: 0.0,
            housekeeping=False,
        )
        with responses.RequestsMock() as cobalt:
            cobalt.add_callback(
                responses.POST, f"{COBALT}/telephone-encounters", accept_during_an_outage
            )
            assert worker.run_once()
        assert outage.is_set()
        with sessions() as session:
            recorded = session.get(Job, job_id)
            assert recorded is not None
            assert (recorded.submission_state, recorded.cobalt_job_id) == ("accepted", "4242")
            assert recorded.cobalt_telephone_encounter_id == "te_77"
        engine.dispose()


def _allow_connections(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


@pytest.mark.postgres_only
def test_claiming_a_waiting_note_never_deadlocks_with_settling_its_predecessor(
    postgres_server_url: str,
):
    """A webhook settles note 1 (freeing the appointment's slot and waking note 2) while a
    worker claims note 2: the claim must not wait on note 1's slot inside its row lock on
    note 2, or PostgreSQL kills one of them as a deadlock (the webhook answered 503)."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with throwaway_postgres_database(postgres_server_url) as url:
        upgrade(url)
        engine = make_engine(url)
        sessions = make_session_factory(engine)
        with transaction(sessions) as session:
            clinic = Clinic(name="c", access_token="t", created_at=start, updated_at=start)
            session.add(clinic)
            session.flush()
            common = {
                "kind": "note",
                "status": "processing",
                "clinic_id": clinic.id,
                "request_body": {},
                "request_hash": "h",
                "appointment_hash": "appt",
                "created_at": start,
                "updated_at": start,
            }
            first = Job(
                id=uuid.uuid4(),
                submission_state="accepted",
                submit_attempts=1,
                inflight_key=f"{clinic.id}:appt",
                **common,
            )
            second = Job(
                id=uuid.uuid4(),
                submission_state="waiting",
                submit_attempts=0,
                next_attempt_at=start,
                **common,
            )
            session.add_all([first, second])
            clinic_id = clinic.id
        outcome: dict[str, str] = {}

        def claim() -> None:
            try:
                with transaction(sessions) as session:
                    services.claim_due_job(
                        session, now=start + timedelta(seconds=1), lease=timedelta(seconds=60)
                    )
                outcome["claim"] = "ok"
            except Exception as exc:
                outcome["claim"] = type(getattr(exc, "orig", exc)).__name__

        settling = sessions()
        settling.begin()
        # What settling note 1 does: free its slot, then wake the notes waiting for it.
        held = settling.get(Job, first.id, with_for_update=True)
        assert held is not None
        held.inflight_key = None
        settling.flush()
        worker = threading.Thread(target=claim)
        worker.start()
        worker.join(0.5)  # the claim runs while the settling transaction is open
        try:
            settling.execute(
                update(Job)
                .where(Job.submission_state == "waiting", Job.clinic_id == clinic_id)
                .values(next_attempt_at=start)
            )
            settling.commit()
            outcome["settle"] = "ok"
        except Exception as exc:
            settling.rollback()
            outcome["settle"] = type(getattr(exc, "orig", exc)).__name__
        finally:
            settling.close()
        worker.join(30)
        engine.dispose()
    assert outcome == {"claim": "ok", "settle": "ok"}


def test_cobalt_calls_go_through_the_proxy_the_environment_names(monkeypatch):
    """Deployments that reach Cobalt through an egress proxy name it in HTTP(S)_PROXY; the
    client reads the environment once, when it is made, and every call goes through it."""
    seen: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.path)  # a proxy is sent the absolute URL
            body = json.dumps({"job_id": "cj_proxied"}).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Proxy) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        client = CobaltClient("http://cobalt.invalid/v1", "ci", "cs", connect_timeout=2)
        monkeypatch.delenv("HTTP_PROXY")  # read when the client was made, not per call
        first = client.create_note("token", {"note": "x"})
        second = client.create_note("token", {"note": "y"})
        proxy.shutdown()
    assert first.job_id == second.job_id == "cj_proxied"
    assert seen == ["http://cobalt.invalid/v1/notes"] * 2


def test_a_worker_process_logs_its_start_and_stop_once_with_its_thread_count(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import os
    import signal

    from webhook_service.worker_process import _run_process

    settings = make_settings(database_url, WORKER_CONCURRENCY=4, WORKER_POLL_SECONDS=0.1)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    timer = threading.Timer(1.0, os.kill, args=(os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        with caplog.at_level("INFO", logger="webhook_service.worker"):
            _run_process(settings)
    finally:
        timer.cancel()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("worker started") == 1
    assert messages.count("worker stopped") == 1
    started = next(r for r in caplog.records if r.getMessage() == "worker started")
    assert started.threads == 4  # type: ignore[attr-defined]
