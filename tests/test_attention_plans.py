"""Query plans (PostgreSQL) of what the deadline rule added: jobs with `attention` are found
through the partial index ix_jobs_attention, and the deadline sweep and the worker's lookups
read `jobs` through indexes, never a sequential scan (the seeded table of test_query_plans)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.test_query_plans import (  # noqa: F401  (module fixtures: the seeded database)
    Captured,
    app,
    engine,
    indexes_used,
    planned_url,
    seeded,
    seq_scans_of_jobs,
)
from webhook_service import services
from webhook_service.db import make_session_factory

pytestmark = pytest.mark.postgres_only


@pytest.mark.parametrize("path", ["/v1/jobs?attention=true", "/v1/inbox"])
def test_jobs_with_attention_are_read_from_their_partial_index(app, engine, seeded, path):  # noqa: F811
    staff = app.test_client(token=seeded["support"])
    with Captured(engine) as captured:
        response = staff.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)
    plans = captured.plans()
    assert seq_scans_of_jobs(plans) == []
    assert "ix_jobs_attention" in indexes_used(plans)


def test_the_deadline_sweep_and_the_lookups_read_jobs_through_indexes(engine, seeded):  # noqa: F811
    expected = {"note": timedelta(minutes=3), "telephone_encounter": timedelta(minutes=2)}
    with Captured(engine) as captured, make_session_factory(engine)() as session:
        try:
            # A `now` before every seeded job: the statements as sent, with nothing to write
            # (the writes are by primary key; their EXPLAIN is not what this is about).
            now = datetime(2000, 1, 1, tzinfo=UTC)
            services.due_lookups(session, now=now, expected=expected)
            services.mark_past_deadline(session, now=now, deadline=timedelta(minutes=30))
        finally:
            session.rollback()
    plans = captured.plans()
    assert seq_scans_of_jobs(plans) == []
    assert "ix_jobs_attention" in indexes_used(plans)
