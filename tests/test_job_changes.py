"""The record of job changes: every writer of a job's status, attention, retried_as, outcome or
purge leaves exactly the expected change rows, each rendering the job as a poll then did."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.conftest import FakeClock, event
from tests.test_chart_outcome import FOUND, with_attention
from tests.test_lifecycle_http import ENCOUNTER, NOTE, accept_encounter, accept_note, submit
from tests.test_reconcile import events_log, logged
from tests.test_support import reject_notes
from webhook_service.db import transaction
from webhook_service.models import Job, JobChange
from webhook_service.services import purge_expired_phi
from webhook_service.services.changes import Change, job_changes
from webhook_service.services.job_views import CHANGE_COLUMNS, RESOURCE_COLUMNS

MIGRATION = Path(__file__).parent.parent / "migrations" / "versions" / "0017_job_changes.py"

# A change as a front end tells it apart: (status, attention code, retried?, purged?).
Seen = tuple[str, str | None, bool, bool]
P: Seen = ("processing", None, False, False)


def seen(change: Change) -> Seen:
    view = change.view()
    return (
        view.status,
        view.attention.code if view.attention else None,
        view.retried_as is not None,
        view.purged_at is not None,
    )


def without_progress(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if k not in {"submission", "cobalt", "updated_at"}}


def created(ctx: dict[str, Any]) -> tuple[str, list[Seen]]:
    return submit(ctx["client"], "/v1/notes", NOTE)["id"], [P]


def sent_to_cobalt(ctx: dict[str, Any]) -> tuple[str, list[Seen]]:
    """The submission's progress is in the resource, but is no change."""
    accept_note(ctx["cobalt"])
    job = submit(ctx["client"], "/v1/notes", NOTE)
    ctx["worker"].run_once()
    return job["id"], [P]


def rejected_by_cobalt(ctx: dict[str, Any]) -> tuple[str, list[Seen]]:
    reject_notes(ctx["cobalt"])
    job = submit(ctx["client"], "/v1/notes", NOTE)
    ctx["worker"].run_once()
    return job["id"], [P, ("failed", None, False, False)]


def webhook_fast_path(ctx: dict[str, Any]) -> tuple[str, list[Seen]]:
    accept_note(ctx["cobalt"])
    job = submit(ctx["client"], "/v1/notes", NOTE)
    ctx["worker"].run_once()
    assert ctx["post_webhook"](event("note.created", appointment_id="728948")).status_code == 200
    return job["id"], [P, ("completed", None, False, False)]


def parked_then_applied(ctx: dict[str, Any]) -> tuple[str, list[Seen]]:
    """The ORM path: a webhook parked before the submit's reply, applied with it."""
    accept_encounter(ctx["cobalt"])
    job = submit(ctx["client"], "/v1/telephone-encounters", ENCOUNTER)
    payload = event("telephone_encounter.created", job_id="4242", telephone_encounter_id="te_77")
    assert ctx["post_webhook"](payload).status_code == 200
    ctx["worker"].run_once()
    return job["id"], [P, ("completed", None, False, False)]


def reconciled(ctx: dict[str, Any]) -> tuple[str, list[Seen]]:
    accept_encounter(ctx["cobalt"])
    job = submit(ctx["client"], "/v1/telephone-encounters", ENCOUNTER)
    ctx["worker"].run_once()
    events_log(
        ctx["cobalt"],
        logged("telephone_encounter.created", "4242", telephone_encounter_id="te_77"),
    )
    ctx["clock"].advance(minutes=3)
    ctx["worker"].run_once()
    return job["id"], [P, ("completed", None, False, False)]


def past_deadline(ctx: dict[str, Any]) -> tuple[str, list[Seen]]:
    job_id = with_attention(ctx["client"], ctx["worker"], ctx["cobalt"], ctx["clock"])
    return job_id, [P, ("processing", "no_outcome", False, False)]


def chart_outcome(ctx: dict[str, Any]) -> tuple[str, list[Seen]]:
    job_id = with_attention(ctx["client"], ctx["worker"], ctx["cobalt"], ctx["clock"])
    recorded = ctx["support"].post(f"/v1/jobs/{job_id}/chart-outcome", json=FOUND)
    assert recorded.status_code == 200, recorded.json
    attention = ("processing", "no_outcome", False, False)
    return job_id, [P, attention, ("completed", None, False, False)]


def retried_by_support(ctx: dict[str, Any]) -> tuple[str, list[Seen]]:
    failed_job, expected = rejected_by_cobalt(ctx)
    response = ctx["support"].post(f"/v1/jobs/{failed_job}/retry", json={"reason": "fixed"})
    assert response.status_code == 202, response.json
    ctx["also"] = (response.json["id"], [P])
    return failed_job, [*expected, ("failed", None, True, False)]


def purged(ctx: dict[str, Any]) -> tuple[str, list[Seen]]:
    job_id, _ = webhook_fast_path(ctx)
    ctx["clock"].advance(days=31)
    with transaction(ctx["sessions"]) as session:
        assert purge_expired_phi(session, now=ctx["clock"](), retention=timedelta(days=30)) == 1
    # The changes before it are older than their own retention (4 days): dropped.
    return job_id, [("completed", None, False, True)]


WRITERS: dict[str, Callable[[dict[str, Any]], tuple[str, list[Seen]]]] = {
    "submission": created,
    "submission result (accepted)": sent_to_cobalt,
    "submission result (rejected)": rejected_by_cobalt,
    "webhook fast path": webhook_fast_path,
    "parked sweep (ORM path)": parked_then_applied,
    "reconcile": reconciled,
    "deadline": past_deadline,
    "support chart outcome": chart_outcome,
    "support retry": retried_by_support,
    "retention purge": purged,
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_writer_records_exactly_its_changes_in_the_polls_shape(
    writer, client, support, worker, cobalt, clock: FakeClock, post_webhook, sessions
):
    ctx: dict[str, Any] = {
        "client": client,
        "support": support,
        "worker": worker,
        "cobalt": cobalt,
        "clock": clock,
        "post_webhook": post_webhook,
        "sessions": sessions,
    }
    job_id, expected = WRITERS[writer](ctx)
    for one_id, one_expected in [(job_id, expected), *([ctx["also"]] if "also" in ctx else [])]:
        with sessions() as session:
            changes = job_changes(session.connection(), uuid.UUID(one_id))
        assert [seen(c) for c in changes] == one_expected
        assert [c.seq for c in changes] == sorted({c.seq for c in changes})
        # The newest change is the job as a poll renders it now: same ETag, same body but
        # for the submission's progress since (which is no change).
        polled = support.get(f"/v1/jobs/{one_id}")
        assert without_progress(changes[-1].view().model_dump(mode="json")) == without_progress(
            polled.json
        )
        assert f'W/"{changes[-1].etag}"' == polled.headers["ETag"]


def test_a_purge_takes_the_phi_out_of_the_jobs_earlier_changes_too(
    client, worker, cobalt, clock: FakeClock, post_webhook, sessions
):
    accept_encounter(cobalt)
    job = submit(client, "/v1/telephone-encounters", ENCOUNTER)
    worker.run_once()
    meds = ["Metformin 500 mg"]
    payload = event("telephone_encounter.failed", job_id="4242", available_medications=meds)
    post_webhook(payload)
    with sessions() as session:
        [_, failed] = job_changes(session.connection(), uuid.UUID(job["id"]))
    assert failed.view().outcome["available_medications"] == meds
    clock.advance(days=2)
    with transaction(sessions) as session:
        purge_expired_phi(session, now=clock(), retention=timedelta(days=1))
    with sessions() as session:
        changes = job_changes(session.connection(), uuid.UUID(job["id"]))
        outcomes = [c.view().outcome for c in changes]
    assert len(outcomes) == 3
    assert "Metformin" not in repr(outcomes)
    assert outcomes[-1] == {"event": "telephone_encounter.failed"}


def test_changes_older_than_their_retention_are_dropped_with_the_purge(
    client, clock: FakeClock, sessions
):
    old = submit(client, "/v1/notes", NOTE)["id"]
    clock.advance(days=5)
    new = submit(client, "/v1/notes", NOTE)["id"]
    with transaction(sessions) as session:
        purge_expired_phi(session, now=clock(), retention=timedelta(days=30))
    with sessions() as session:
        kept = session.scalars(select(JobChange.job_id)).all()
    assert [str(j) for j in kept] == [new]
    assert old != new


def test_the_triggers_copy_every_column_of_the_resource_and_watch_the_etags_columns():
    """Migration 0017 spells the lists out (a migration must); they match the code's."""
    source = MIGRATION.read_text()
    snapshot = re.search(r"SNAPSHOT = \{(.*?)\}", source, re.S)
    watched = re.search(r"CHANGE_COLUMNS = \((.*?)\)", source, re.S)
    assert snapshot is not None
    assert watched is not None
    copied = set(re.findall(r'"(\w+)": "\w+"', snapshot.group(1)))
    resource = {column.name for column in RESOURCE_COLUMNS}
    assert resource | {"outcome_enc", "error_message_enc"} == copied
    assert re.findall(r'"(\w+)"', watched.group(1)) == [c.name for c in CHANGE_COLUMNS]


def test_a_key_rotation_reencrypts_the_changes_so_streams_render_them_after_the_old_key_goes(
    client, worker, cobalt, post_webhook, sessions
):
    from cryptography.fernet import Fernet

    from tests.conftest import PHI_KEY, PHI_SEARCH_KEY
    from webhook_service import phi
    from webhook_service.services import reencrypt_phi

    accept_encounter(cobalt)
    job = submit(client, "/v1/telephone-encounters", ENCOUNTER)
    worker.run_once()
    meds = ["Metformin 500 mg"]
    post_webhook(event("telephone_encounter.failed", job_id="4242", available_medications=meds))
    new_key = Fernet.generate_key().decode()
    try:
        phi.configure(phi.PhiKeys((new_key, PHI_KEY), PHI_SEARCH_KEY))
        with transaction(sessions) as session:
            reencrypt_phi(session)
        phi.configure(phi.PhiKeys((new_key,), PHI_SEARCH_KEY))  # the old key dropped
        with sessions() as session:
            changes = job_changes(session.connection(), uuid.UUID(job["id"]))
            outcome = changes[-1].view().outcome
    finally:
        phi.configure(phi.PhiKeys((PHI_KEY,), PHI_SEARCH_KEY))
    assert outcome is not None
    assert outcome["available_medications"] == meds


def test_a_reader_of_a_clients_changes_gets_them_in_order_and_never_passes_an_open_one(
    client, sessions, engine, is_postgres, clock
):
    """`client_changes` (what `/v1/stream` and the callbacks' fan-out resume from): each change
    once, in order; on PostgreSQL a change of a transaction still open is not passed, nor any
    after it, so resuming after the last one read misses nothing."""
    from webhook_service.services.changes import Position, client_changes, start_position

    with engine.connect() as connection:
        start = start_position(connection)
    first = submit(client, "/v1/notes", NOTE)["id"]
    second = submit(client, "/v1/notes", {**NOTE, "appointment_id": "2"})["id"]
    with sessions() as session:
        client_id = session.scalars(select(Job.client_id).where(Job.id == uuid.UUID(first))).one()

    def read(after: Position) -> list[Change]:
        with engine.connect() as connection:
            return client_changes(connection, client_id, after)

    got = read(start)
    assert [str(c.job_id) for c in got] == [first, second]
    position = Position(got[-1].txid, got[-1].seq)
    assert read(position) == []
    if not is_postgres:
        return
    # A transaction that wrote first, still open, changes a job after another commits.
    with engine.connect() as slow:
        slow_tx = slow.begin()
        slow.execute(
            update(Job)
            .where(Job.id == uuid.UUID(first))
            .values(attention_code="no_outcome", attention_since=clock())
        )
        with transaction(sessions) as session:
            session.execute(update(Job).where(Job.id == uuid.UUID(second)).values(status="failed"))
        assert read(position) == [], "the later commit waits for the open transaction"
        slow_tx.commit()
    after = read(position)
    assert [(str(c.job_id), c.view().status) for c in after] == [
        (first, "processing"),
        (second, "failed"),
    ]
