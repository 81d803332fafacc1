"""Fault injection against the real processes on PostgreSQL, each run ending with an account.

Every scenario lives in `reliability/scenarios/` (`reliability/run.py` also runs them at
full size, outside pytest); here each runs at CI size and its account, printed in full, must
show no job lost, none submitted to Cobalt twice, none applied twice, none settled to the
wrong outcome.
`FAULT_JOBS` sets the chaos scenario's size (default 120; the full run uses 1,000).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from reliability.account import Account
from reliability.runner import Size
from reliability.scenarios.busy_day import busy_day_note
from reliability.scenarios.chaos import chaos
from reliability.scenarios.connection_cap import connection_cap
from reliability.scenarios.foreign_events import foreign_events
from reliability.scenarios.gateway import gateway_errors
from reliability.scenarios.postgres_restart import postgres_restart
from reliability.scenarios.replay import replayed_bodies
from reliability.scenarios.same_appointment import same_appointment_notes
from reliability.scenarios.web_kill import web_kills
from reliability.scenarios.worker_kill import worker_kills
from tests.processes import throwaway_postgres_database
from webhook_service.db import make_engine, make_session_factory, transaction
from webhook_service.migrations import upgrade
from webhook_service.models import JobEvent
from webhook_service.sandbox.data import DEMO_IDS
from webhook_service.schemas import TelephoneEncounterRequest
from webhook_service.services import (
    Lookup,
    default_clinic,
    record_lookup,
    record_webhook,
    submit_job,
)
from webhook_service.settings import Settings
from webhook_service.signatures import SignatureMatch, compact_json

pytestmark = [pytest.mark.e2e, pytest.mark.postgres_only]

FAULT_JOBS = int(os.environ.get("FAULT_JOBS", "120"))


@pytest.fixture
def throwaway_postgres(postgres_server_url: str) -> Iterator[str]:
    with throwaway_postgres_database(postgres_server_url) as url:
        yield url


def report(account: Account) -> None:
    """Print the account (pytest shows it with -s, and on failure) and check its rules."""
    print("\n" + account.table())
    assert account.figures["lost"] == 0, account.table()
    assert account.figures["duplicated_submissions"] == 0, account.table()
    assert account.figures["applied_twice"] == 0, account.table()
    assert account.violations == [], account.table()


def test_chaos_every_sandbox_fault_at_once(throwaway_postgres: str, tmp_path: Path) -> None:
    """20% duplicated, 10% dropped, 20% reordered webhooks, 5% of submissions answered 500,
    2% hanging past the read timeout: every job ends as Cobalt said, sent exactly once."""
    account = chaos(throwaway_postgres, tmp_path, Size(FAULT_JOBS))
    report(account)
    # Cobalt received exactly one accepted submission per job.
    assert account.figures["accepted_once"] == FAULT_JOBS
    assert account.figures["cobalt_submissions"] == FAULT_JOBS
    # The faults really happened.
    assert account.figures["fault_drop"] > 0
    assert account.figures["fault_duplicate"] > 0
    assert account.figures["fault_submit_error"] > 0
    assert account.figures["reconciled"] >= 1
    # Only an encounter whose reply hung may end without Cobalt's outcome, one per hang at most.
    assert account.figures["unmatchable"] <= account.figures["fault_submit_hang"]


def test_worker_killed_mid_submission_repeatedly(throwaway_postgres: str, tmp_path: Path) -> None:
    """`kill -9` while half the submissions hang at Cobalt, five times: the claims expire,
    nothing is resent, nothing is lost."""
    account = worker_kills(throwaway_postgres, tmp_path, Size(40, deadline_seconds=30), kills=5)
    report(account)
    assert account.figures["kills"] >= 3
    assert account.figures["in_flight_at_kill"] >= 1
    assert account.figures["claims_expired"] >= 1


def test_postgres_restarted_while_webhooks_arrive(tmp_path: Path) -> None:
    """The database is down for 4 s as the webhooks come: each is stored or answered 503,
    and what Cobalt gave up on is found by reconciliation."""
    account = postgres_restart(tmp_path, Size(60, deadline_seconds=45))
    report(account)
    assert account.figures["refused"] >= 1  # some deliveries met the outage


def test_database_full_while_webhooks_arrive(postgres_server_url: str, tmp_path: Path) -> None:
    """A 20-connection database fills up with other clients as the webhooks come: each is
    stored or answered 503, what Cobalt gave up on is found by reconciliation, and the web
    processes serve again by themselves."""
    account = connection_cap(postgres_server_url, tmp_path, Size(60, deadline_seconds=45))
    report(account)
    assert account.figures["refused"] >= 1  # some deliveries met the full server


def test_web_killed_during_a_webhook_burst(throwaway_postgres: str, tmp_path: Path) -> None:
    """gunicorn's workers SIGKILLed during a burst: a delivery is stored or redelivered or
    reconciled, never lost and never applied twice."""
    account = web_kills(throwaway_postgres, tmp_path, Size(60, deadline_seconds=45))
    report(account)
    assert account.figures["kills"] >= 5


def test_notes_for_one_appointment_each_reconciled_to_their_own_outcome(
    throwaway_postgres: str, tmp_path: Path
) -> None:
    """Notes for one appointment go to Cobalt one at a time; with their webhooks dropped,
    each must be reconciled to its own event, not to the earliest one of the appointment."""
    report(same_appointment_notes(throwaway_postgres, tmp_path, notes=3))


# --- A race injected at the database: reconciliation against a webhook for the same job ---------


def test_reconcile_racing_a_webhook_applies_the_outcome_once(throwaway_postgres: str) -> None:
    """A webhook commits while the worker's reconciliation of the same job waits for its lock.

    The worker must see the job as the webhook left it (settled) and change nothing: the
    outcome is applied once, and the timeline says so once. (The web-kill run meets this
    race by chance: deliveries held up in gunicorn's backlog arrive as the lookup runs.)
    """
    postgres_url = throwaway_postgres
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    sessions = make_session_factory(engine)
    now = datetime.now(UTC)
    cobalt_job_id = f"race-{uuid.uuid4().hex[:8]}"
    settings = Settings(WEBHOOK_SERVICE_ENV="test", DATABASE_URL=postgres_url)
    request = TelephoneEncounterRequest.model_validate(
        {
            "patient_mrn": DEMO_IDS["patient_mrn"],
            "provider_id": DEMO_IDS["provider_id"],
            "location_id": DEMO_IDS["location_id"],
            "assigned_to_id": DEMO_IDS["assigned_to_id"],
        }
    )
    with transaction(sessions) as session:
        clinic = default_clinic(session, settings, now)
        job, _ = submit_job(
            session, request=request, clinic=clinic, client=None, idempotency_key=None, now=now
        )
        job.submission_state = "accepted"
        job.cobalt_job_id = cobalt_job_id
        job_id, access_token = job.id, clinic.access_token
    payload = {
        "id": f"evt_{uuid.uuid4().hex[:12]}",
        "object": "event",
        "created": now.isoformat(),
        "type": "telephone_encounter.created",
        "job_id": cobalt_job_id,
        "data": {"telephone_encounter_id": "te_race", "message": "Created."},
    }
    found = {
        "event_id": payload["id"],
        "event_type": payload["type"],
        "job_id": cobalt_job_id,
        "data": payload["data"],
        "created_at": payload["created"],
    }
    lookup = Lookup(job_id, "telephone_encounter", access_token, cobalt_job_id, None, now)
    errors: list[BaseException] = []

    def reconcile() -> None:
        try:
            with transaction(sessions) as session:
                record_lookup(session, lookup, [found], datetime.now(UTC))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    # The web process applies the webhook and holds the job's row lock until it commits.
    web = sessions()
    try:
        with web.begin():
            record_webhook(
                web,
                raw_body=compact_json(payload),
                headers={"webhook-id": f"msg_{uuid.uuid4().hex[:12]}", "webhook-attempt": "1"},
                match=SignatureMatch("raw", 0),
                now=now,
            )
            worker = threading.Thread(target=reconcile, name="reconcile")
            worker.start()
            waited = _wait_for_lock_wait(engine, seconds=10)
        worker.join(30)
    finally:
        web.close()
    assert not worker.is_alive()
    assert errors == []
    assert waited, "the reconciliation never waited for the webhook's row lock"
    with sessions() as session:
        applied = session.scalar(
            select(func.count())
            .select_from(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.type == "webhook_applied")
        )
        timeline = list(
            session.scalars(
                select(JobEvent.type).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            )
        )
    engine.dispose()
    assert applied == 1, f"outcome applied {applied} times: {timeline}"


def _wait_for_lock_wait(engine: Engine, seconds: float) -> bool:
    """Until another session of this database waits for a row lock (bounded)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        if waiting:
            return True
        time.sleep(0.02)
    return False


def test_gateway_errors_are_never_resent_and_never_reported_as_failures(
    throwaway_postgres: str, tmp_path: Path
) -> None:
    """A gateway's 502/504 (HTML, no Cobalt JSON) may come before or after Cobalt queued the
    job: nothing is sent twice, and what cannot be known stays processing with attention."""
    account = gateway_errors(throwaway_postgres, tmp_path, Size(60, deadline_seconds=20))
    report(account)
    assert account.figures["gateway_answers"] >= 4
    assert account.figures["accepted_once"] == account.figures["cobalt_submissions"]


def test_foreign_events_sharing_an_appointment_never_settle_a_note(
    throwaway_postgres: str, tmp_path: Path
) -> None:
    """An `appointment.failed` for the appointment of every note in flight: each note still
    ends as its own outcome says, and no foreign event is bound to a job."""
    account = foreign_events(throwaway_postgres, tmp_path, Size(40, deadline_seconds=30))
    report(account)
    assert account.figures["foreign_received"] >= 10
    assert account.figures["settled_as_cobalt_said"] == 40


def test_replayed_signed_bodies_change_nothing(throwaway_postgres: str, tmp_path: Path) -> None:
    """Every signed body re-sent with a new or no webhook-id while new notes for the same
    appointments are in flight: all repeats, and each new note takes its own outcome."""
    account = replayed_bodies(throwaway_postgres, tmp_path, Size(40, deadline_seconds=30))
    report(account)
    assert account.figures["replayed"] >= 40
    assert account.figures["replays_stored"] == 0


def test_a_dropped_note_outcome_is_found_past_the_first_page_of_cobalts_log(
    throwaway_postgres: str, tmp_path: Path
) -> None:
    """Cobalt's log pages hold 100 events: a lookup must read past the first page."""
    report(busy_day_note(throwaway_postgres, tmp_path, others=110))
