"""Property: streams cut at random points and resumed with Last-Event-ID miss no change and
reorder none, per job (server-sent events, README "Push")."""

from __future__ import annotations

import json
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from tests.test_lifecycle_http import NOTE, submit
from tests.test_push import read_events
from webhook_service.db import transaction
from webhook_service.models import Job
from webhook_service.services.changes import job_changes

# A job's life as its writers change it, one UPDATE each: past its deadline (attention),
# settled (failed), retried by support, purged. A job takes some of them, in this order
# (a job's states never recur: attention is cleared only by settling).
LIFE = ("attention", "settle", "retried", "purged")
STEPS = st.lists(st.booleans(), min_size=len(LIFE), max_size=len(LIFE)).map(
    lambda taken: [step for step, take in zip(LIFE, taken, strict=True) if take]
)


def apply(sessions: Any, clock: Any, job_id: str, step: str) -> None:
    values: dict[str, Any] = {
        "attention": {"attention_code": "no_outcome", "attention_since": clock()},
        "settle": {"status": "failed", "finished_at": clock(), "attention_code": None},
        "retried": {"retried_as": uuid.UUID(job_id)},
        "purged": {"purged_at": clock()},
    }[step]
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(**values))


def recorded(sessions: Any, job_id: str) -> list[int]:
    with sessions() as session:
        return [c.seq for c in job_changes(session.connection(), uuid.UUID(job_id))]


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    jobs=st.integers(min_value=1, max_value=3),
    steps=st.lists(STEPS, min_size=3, max_size=3),
    order=st.randoms(use_true_random=False),
    cuts=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=30),
)
def test_a_client_stream_cut_anywhere_and_resumed_misses_and_reorders_nothing(
    client, sessions, clock, jobs, steps, order, cuts
):
    stream = client.get("/v1/stream", buffered=False)
    ids = [
        submit(client, "/v1/notes", {**NOTE, "appointment_id": str(n)})["id"] for n in range(jobs)
    ]
    # Every job's steps, interleaved in a random order (each job's own in its order).
    queues = [
        [(job_id, step) for step in job_steps]
        for job_id, job_steps in zip(ids, steps, strict=False)
    ]
    while any(queues):
        queue = order.choice([q for q in queues if q])
        apply(sessions, clock, *queue.pop(0))
    expected = {job_id: recorded(sessions, job_id) for job_id in ids}
    total = sum(len(seqs) for seqs in expected.values())

    seen: dict[str, list[int]] = {job_id: [] for job_id in ids}
    received = 0
    last_id = None
    cut_sizes = iter(cuts)
    while received < total:
        take = min(next(cut_sizes, total), total - received)
        for one in read_events(stream, take):
            job = json.loads(one["data"])
            seen[job["id"]].append(int(one["id"]))
            last_id = one["id"]
            received += 1
        stream.close()  # cut, losing whatever was read past the last event handled
        headers = {"Last-Event-ID": last_id} if last_id else {}
        stream = client.get("/v1/stream", headers=headers, buffered=False)
    stream.close()
    assert seen == expected


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=STEPS, cuts=st.lists(st.integers(min_value=1, max_value=3), max_size=10))
def test_a_job_stream_cut_anywhere_and_resumed_misses_and_reorders_nothing(
    client, sessions, clock, steps, cuts
):
    job_id = submit(client, "/v1/notes", NOTE)["id"]
    stream = client.get(f"/v1/jobs/{job_id}/stream", buffered=False)
    [first] = read_events(stream, 1)
    stream.close()
    for step in steps:
        apply(sessions, clock, job_id, step)
        if step == "settle":
            break
    with sessions() as session:
        changes = job_changes(session.connection(), uuid.UUID(job_id))
    # What the first event showed, then every change after it, up to the terminal one.
    expected = [c.etag for c in changes[1:]]
    got: list[str] = []
    last_id = first["id"]
    cut_sizes = iter(cuts)
    while len(got) < len(expected):
        stream = client.get(
            f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": last_id}, buffered=False
        )
        take = min(next(cut_sizes, len(expected)), len(expected) - len(got))
        for one in read_events(stream, take):
            got.append(one["id"])
            last_id = one["id"]
        stream.close()
    assert got == expected
