"""GET /metrics: what Prometheus scrapes, read from the database by whichever web process
answers, with counts a worker process flushed there; the worker's heartbeat on the metrics
and on the console's dashboard."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import requests
import responses
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.event import listen as event_listen
from sqlalchemy.event import remove as event_remove

from tests import test_end_to_end as e2e
from tests.conftest import COBALT, FakeClock, event, new_token
from tests.processes import RunningSystem, running_system, throwaway_postgres_database
from tests.processes import _create_client as create_client
from tests.test_console import anonymous
from tests.test_lifecycle_http import ENCOUNTER, NOTE, accept_note, submit
from webhook_service import metrics
from webhook_service.db import make_engine, make_session_factory, transaction
from webhook_service.models import WorkerHeartbeat
from webhook_service.services.metrics import WORKER_SILENT_AFTER, Flusher, Heartbeat, beat

P = "webhook_service_"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(autouse=True)
def fresh_tally() -> Iterator[None]:
    """This process's counts start from nothing (other tests in it called Cobalt too)."""
    metrics.TALLY.drain()
    yield
    metrics.TALLY.drain()


@pytest.fixture
def scraper(app, sessions):
    """Prometheus, with a token of the `metrics` role."""
    return app.test_client(token=new_token(sessions, "prometheus", "metrics"))


def scrape(scraper) -> Samples:
    """Scrape and parse with Prometheus's own parser: every sample by name and labels."""
    response = scraper.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        assert family.name.startswith(P)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((P + name, frozenset(labels.items())))


def cobalt_calls(cobalt: responses.RequestsMock) -> Counter[str]:
    """The calls the stubbed Cobalt received, by operation (the path's last part)."""
    return Counter(
        call.request.url.split("?")[0].rsplit("/", 1)[-1].replace("-", "_") for call in cobalt.calls
    )


def test_scrape_shows_jobs_deliveries_and_the_cobalt_calls_a_worker_flushed(
    client, scraper, worker, cobalt, post_webhook, sessions, clock: FakeClock
):
    accept_note(cobalt, job_id="cj_done")
    cobalt.add(
        responses.POST,
        f"{COBALT}/telephone-encounters",
        status=400,
        json={"success": False, "message": "Provider not found"},
    )
    done = submit(client, "/v1/notes", NOTE)
    clock.advance(seconds=1)
    submit(client, "/v1/notes", {**NOTE, "appointment_id": "other-appointment"})
    clock.advance(seconds=1)
    submit(client, "/v1/telephone-encounters", ENCOUNTER)
    clock.advance(seconds=1)
    waiting = submit(client, "/v1/notes", {**NOTE, "note": "Addendum"})  # behind `done`
    while worker.run_once():
        pass
    post_webhook(event("note.created", job_id="cj_done", appointment_id="728948"))
    post_webhook(event("note.created", appointment_id="NO-SUCH-NOTE"))  # parked: the inbox
    assert client.get(f"/v1/jobs/{done['id']}").json["status"] == "completed"
    assert client.get(f"/v1/jobs/{waiting['id']}").json["status"] == "processing"

    # Counted in the worker's memory, not yet in the database: the scrape does not see it.
    before = scrape(scraper)
    assert value(before, "cobalt_calls_total", operation="notes", answer="accepted") is None
    # The worker process flushes; a web process (this app) reads.
    Flusher(sessions, clock, heartbeat=Heartbeat.for_this_process(clock())).flush()
    clock.advance(minutes=5)
    samples = scrape(scraper)

    assert value(samples, "jobs_processing", submission_state="accepted") == 1
    assert value(samples, "jobs_processing", submission_state="waiting") == 1
    assert value(samples, "jobs_waiting_to_send") == 1
    assert value(samples, "oldest_processing_job_age_seconds") == 5 * 60 + 2  # the second note
    assert value(samples, "jobs_finished_last_hour", status="completed") == 1
    assert value(samples, "jobs_finished_last_hour", status="failed") == 1
    assert value(samples, "jobs_finished_last_hour", status="partial") == 0
    assert value(samples, "webhook_deliveries_last_hour", state="applied") == 1
    assert value(samples, "webhook_deliveries_last_hour", state="parked") == 1
    assert value(samples, "webhook_deliveries_in_inbox", state="parked") == 1
    assert value(samples, "webhook_deliveries_in_inbox", state="failed") == 0

    calls = cobalt_calls(cobalt)
    assert calls["notes"] == 2
    assert calls["telephone_encounters"] == 1
    shown = {
        (dict(labels)["operation"], dict(labels)["answer"]): count
        for (name, labels), count in samples.items()
        if name == P + "cobalt_calls_total"
    }
    # The worker also fetches the clinic's reference lists (pre-flight); not stubbed here,
    # each fetch fails before reaching anyone and counts as `transient`.
    lists = {(op, "transient"): calls[op] for op in ("providers", "locations", "pharmacies")}
    assert shown == {
        ("notes", "accepted"): 2,
        ("telephone_encounters", "rejected"): 1,
        ("settings", "ok"): calls["settings"],
        **{key: made for key, made in lists.items() if made},
    }
    for operation, made in calls.items():
        histogram = P + "cobalt_call_duration_seconds"
        assert value(samples, "cobalt_call_duration_seconds_count", operation=operation) == made
        assert (
            samples[
                (histogram + "_bucket", frozenset({"operation": operation, "le": "+Inf"}.items()))
            ]
            == made
        )
        assert value(samples, "cobalt_call_duration_seconds_sum", operation=operation) >= 0
    assert value(samples, "workers_live") == 0  # flushed five minutes ago


def test_totals_add_up_across_processes_and_flushes(app, scraper, sessions, clock):
    """Two processes flush their own counts: the scrape shows the sum, and a second flush
    adds to it (a counter never goes back)."""
    one, two = metrics.Tally(), metrics.Tally()
    metrics.reconcile_lookup("applied", tally=one)
    metrics.reconcile_lookup("applied", tally=two)
    metrics.reconcile_lookup("failed", tally=two)
    metrics.phi_purged(3, tally=one)
    Flusher(sessions, clock, tally=one).flush()
    Flusher(sessions, clock, tally=two).flush()
    samples = scrape(scraper)
    assert value(samples, "reconcile_lookups_total", result="applied") == 2
    assert value(samples, "reconcile_lookups_total", result="failed") == 1
    assert value(samples, "phi_purged_jobs_total") == 3
    metrics.phi_purged(2, tally=one)
    Flusher(sessions, clock, tally=one).flush()
    assert value(scrape(scraper), "phi_purged_jobs_total") == 5


def test_a_flush_that_fails_keeps_its_counts_for_the_next(tmp_path, sessions, clock, scraper):
    tally = metrics.Tally()
    metrics.reconcile_lookup("applied", tally=tally)
    unmigrated = make_engine(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    try:
        with pytest.raises(Exception, match="metric_counters"):
            Flusher(make_session_factory(unmigrated), clock, tally=tally).flush()
    finally:
        unmigrated.dispose()
    assert tally.pending()
    Flusher(sessions, clock, tally=tally).flush()
    assert value(scrape(scraper), "reconcile_lookups_total", result="applied") == 1


def test_a_staff_reconcile_is_counted_by_the_web_process_that_made_it(
    client, support, scraper, worker, cobalt
):
    accept_note(cobalt, job_id="cj_1")
    job = submit(client, "/v1/notes", NOTE)
    worker.run_once()
    metrics.TALLY.drain()  # the worker's counts: not this test's subject
    cobalt.add(responses.GET, f"{COBALT}/webhook-events", json={"webhook_events": []})
    reconciled = support.post(f"/v1/jobs/{job['id']}/reconcile", json={"reason": "asked"})
    assert reconciled.status_code == 200, reconciled.json
    cobalt.replace(responses.GET, f"{COBALT}/webhook-events", status=503, body="down")
    failed = support.post(f"/v1/jobs/{job['id']}/reconcile", json={"reason": "again"})
    assert failed.status_code == 502, failed.json

    assert not metrics.TALLY.pending(), "the support requests flushed what they counted"
    samples = scrape(scraper)
    assert value(samples, "reconcile_lookups_total", result="nothing_applied") == 1
    assert value(samples, "reconcile_lookups_total", result="failed") == 1
    assert value(samples, "cobalt_calls_total", operation="webhook_events", answer="ok") == 1
    assert value(samples, "cobalt_calls_total", operation="webhook_events", answer="transient") == 1


def test_purges_are_counted_once_committed(
    client, scraper, worker, cobalt, post_webhook, sessions, clock
):
    accept_note(cobalt, job_id="cj_1")
    submit(client, "/v1/notes", NOTE)
    worker.run_once()
    post_webhook(event("note.created", job_id="cj_1", appointment_id="728948"))
    clock.advance(days=31)
    worker.housekeeping()
    Flusher(sessions, clock).flush()
    assert value(scrape(scraper), "phi_purged_jobs_total") == 1


def worker_line(page: str) -> str:
    found = re.search(r'id="worker-status"[^>]*>(.*?)</p>', page, re.S)
    assert found, "no worker status on the dashboard"
    return " ".join(re.sub(r"<[^>]+>", "", found.group(1)).split())


def test_a_stopped_worker_shows_on_the_metrics_and_the_dashboard(
    app, scraper, sessions, clock: FakeClock
):
    staff = anonymous(app)
    assert staff.sign_in(new_token(sessions, "support-1", "support")).status_code == 303
    assert "No worker has ever been seen" in worker_line(staff.get("/console/").text)
    assert value(scrape(scraper), "worker_heartbeat_age_seconds") is None
    assert value(scrape(scraper), "workers_live") == 0

    flusher = Flusher(sessions, clock, heartbeat=Heartbeat.for_this_process(clock()))
    flusher.flush()
    clock.advance(seconds=7)
    samples = scrape(scraper)
    assert value(samples, "worker_heartbeat_age_seconds") == 7
    assert value(samples, "workers_live") == 1
    line = worker_line(staff.get("/console/").text)
    assert line == "Worker last seen 7 s ago (1 process running)."

    # The worker stops: no more heartbeats, and the age grows past the threshold.
    clock.advance(seconds=WORKER_SILENT_AFTER.total_seconds())
    samples = scrape(scraper)
    assert value(samples, "worker_heartbeat_age_seconds") == 67
    assert value(samples, "workers_live") == 0
    page = staff.get("/console/").text
    assert 'role="alert"' in page
    assert worker_line(page).startswith("The worker was last seen 67 s ago")

    # It starts again: seen at once.
    Flusher(sessions, clock, heartbeat=Heartbeat.for_this_process(clock())).flush()
    assert value(scrape(scraper), "workers_live") == 1
    assert "1 process running" in worker_line(staff.get("/console/").text)


def test_heartbeats_of_processes_long_gone_are_pruned(sessions, clock: FakeClock):
    gone = Heartbeat.for_this_process(clock())
    with transaction(sessions) as session:
        beat(session.connection(), gone, clock())
    clock.advance(days=2)
    alive = Heartbeat.for_this_process(clock())
    with transaction(sessions) as session:
        beat(session.connection(), alive, clock())
    with sessions() as session:
        assert list(session.scalars(select(WorkerHeartbeat.id))) == [alive.id]


@pytest.mark.parametrize(
    ("role", "status"),
    [(None, 401), ("wrong", 401), ("frontend", 403), ("metrics", 200), ("support", 200)],
)
def test_only_the_metrics_and_support_roles_may_scrape(app, sessions, role, status):
    if role is None:
        bearer = ""  # no Authorization header
    elif role == "wrong":
        bearer = "wst_not-a-token"
    else:
        bearer = new_token(sessions, f"a-{role}", role)
    response = app.test_client(token=bearer).get("/metrics")
    assert response.status_code == status
    if status != 200:
        assert response.content_type == "application/problem+json"
        assert response.json["status"] == status


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/notes", NOTE),
        ("POST", "/v1/telephone-encounters", ENCOUNTER),
        ("GET", "/v1/jobs", None),
        ("GET", "/v1/jobs/{job}", None),
        ("POST", "/v1/jobs/search", {"appointment_id": "728948"}),
        ("GET", "/v1/inbox", None),
    ],
)
def test_a_metrics_token_reads_nothing_else(client, scraper, method, path, body):
    job = submit(client, "/v1/notes", NOTE)
    response = scraper.open(path.format(job=job["id"]), method=method, json=body)
    assert response.status_code == 403
    assert response.content_type == "application/problem+json"


def test_a_metrics_token_cannot_sign_in_to_the_console(app, sessions):
    console = anonymous(app)
    response = console.sign_in(new_token(sessions, "prometheus", "metrics"))
    assert response.status_code != 303


# --- End to end: gunicorn's processes read what the worker process flushed -----------------


@pytest.fixture(params=["sqlite", "postgresql"])
def system_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'webhook_service.sqlite3'}"
        return
    server = request.getfixturevalue("postgres_server_url")
    with throwaway_postgres_database(server, "metrics") as url:
        yield url


def scrape_over_http(system: RunningSystem, token: str) -> Samples:
    response = requests.get(
        f"{system.web_url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


@pytest.mark.e2e
def test_the_web_processes_show_what_the_worker_process_counted(
    system_database: str, tmp_path: Path
) -> None:
    wanted = {"note-completed", "note-failed", "encounter-completed"}
    cases = [case for case in e2e.all_outcomes() if case.name in wanted]
    with running_system(system_database, tmp_path) as system:
        token = create_client(system.environ, tmp_path, "prometheus", "metrics")
        with system.api() as api:
            submitted = {case.name: e2e.submit(api, system, case) for case in cases}
            jobs = e2e.poll_until_settled(api, system, submitted)
        notes = sum(1 for case in cases if case.path == "/v1/notes")
        encounters = len(cases) - notes

        # The worker flushes every few seconds: wait for its counts to reach the database.
        deadline = time.monotonic() + e2e.DEADLINE_SECONDS
        while True:
            samples = scrape_over_http(system, token)
            sent = (
                value(samples, "cobalt_calls_total", operation="notes", answer="accepted"),
                value(
                    samples,
                    "cobalt_calls_total",
                    operation="telephone_encounters",
                    answer="accepted",
                ),
            )
            if sent == (notes, encounters) or time.monotonic() > deadline:
                break
            time.sleep(e2e.POLL_SECONDS)
        assert sent == (notes, encounters), system.tails()
        assert value(samples, "cobalt_call_duration_seconds_count", operation="notes") == notes
        finished = Counter(job["status"] for job in jobs.values())
        for status in ("completed", "failed", "partial"):
            assert value(samples, "jobs_finished_last_hour", status=status) == finished[status]
        assert value(samples, "webhook_deliveries_last_hour", state="applied") == len(cases)
        assert value(samples, "jobs_waiting_to_send") == 0
        assert value(samples, "workers_live") == 1
        assert value(samples, "worker_heartbeat_age_seconds") is not None
        assert system.server_errors() == []


def test_the_command_offers_every_role() -> None:
    """`clients create --role` spells the roles for a fast `--help`: the same ones."""
    from webhook_service.cli.main import clients_create
    from webhook_service.services.clients import ROLES

    role = next(param for param in clients_create.params if param.name == "role")
    assert isinstance(role.type, click.Choice)
    assert tuple(role.type.choices) == ROLES


def test_submissions_polls_and_webhooks_write_nothing_for_the_metrics(
    app, engine, client, worker, cobalt, post_webhook, sessions, clock
):
    """The hot paths gain no write: only the worker's flush (and a scrape's reads) touch the
    metrics' tables."""
    engines = [app.extensions["webhook_service"]["engine"], engine]  # the web's, the worker's
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        statements.append(statement)

    accept_note(cobalt, job_id="cj_hot")
    for each in engines:
        event_listen(each, "before_cursor_execute", record)
    try:
        job = submit(client, "/v1/notes", NOTE)
        worker.run_once()
        client.get(f"/v1/jobs/{job['id']}")
        post_webhook(event("note.created", job_id="cj_hot", appointment_id="728948"))
        client.get(f"/v1/jobs/{job['id']}")
    finally:
        for each in engines:
            event_remove(each, "before_cursor_execute", record)
    assert statements
    assert [s for s in statements if "metric_counters" in s or "worker_heartbeats" in s] == []
    assert metrics.TALLY.pending(), "the worker's Cobalt call waits in memory for the flush"


def test_openmetrics_when_the_scraper_asks_for_it(scraper, sessions, clock):
    metrics.cobalt_call("notes", "accepted", 0.3)
    Flusher(sessions, clock).flush()
    response = scraper.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.status_code == 200
    assert response.content_type.startswith("application/openmetrics-text")
    families = {
        family.name: family for family in openmetrics_families(response.get_data(as_text=True))
    }
    calls = families[P + "cobalt_calls"]
    assert calls.type == "counter"
    assert [(s.labels, s.value) for s in calls.samples if s.name.endswith("_total")] == [
        ({"operation": "notes", "answer": "accepted"}, 1.0)
    ]
    duration = families[P + "cobalt_call_duration_seconds"]
    buckets = {s.labels["le"]: s.value for s in duration.samples if s.name.endswith("_bucket")}
    assert (buckets["0.25"], buckets["0.5"], buckets["+Inf"]) == (0, 1, 1)
