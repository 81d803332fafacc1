"""Migration 0011: deliveries stored before it are found by their event id afterwards."""

from __future__ import annotations

from sqlalchemy import text

from tests.test_migrations import empty_database  # noqa: F401  (the fixture, both databases)
from webhook_service.db import make_engine
from webhook_service.migrations import upgrade
from webhook_service.services.deliveries import dedup_key

ROWS = [
    # (dedup key as stored before 0011, event id)
    ("webhook-id:msg_1", "evt_a"),  # evt_a arrived twice under two headers, and was
    ("webhook-id:msg_2", "evt_a"),  # re-found by a lookup: the earliest row takes the key
    ("reconcile:evt_a", "evt_a"),
    ("reconcile:evt_b", "evt_b"),  # found by a lookup only
    ("event-id:evt_c", "evt_c"),  # already keyed on its event id: it keeps the key
    ("webhook-id:msg_3", "evt_c"),
    ("webhook-id:msg_4", None),  # a body without an id: nothing to key on but the header
]


def test_stored_deliveries_are_rekeyed_on_their_event_id_once_per_event(empty_database):  # noqa: F811
    upgrade(empty_database, "0010")
    engine = make_engine(empty_database)
    try:
        with engine.begin() as conn:
            for key, event_id in ROWS:
                conn.execute(
                    text(
                        "INSERT INTO webhook_deliveries (dedup_key, event_id, headers,"
                        " signature_match, received_at, state) VALUES (:key, :event_id, '{}',"
                        " 'raw:secret[0]', '2026-11-23 12:00:00', 'applied')"
                    ),
                    {"key": key, "event_id": event_id},
                )
        upgrade(empty_database)
        with engine.connect() as conn:
            keys = conn.execute(text("SELECT dedup_key FROM webhook_deliveries ORDER BY id"))
            after = [row[0] for row in keys]
    finally:
        engine.dispose()
    assert after == [
        "event-id:evt_a",
        "webhook-id:msg_2",
        "reconcile:evt_a",
        "event-id:evt_b",
        "event-id:evt_c",
        "webhook-id:msg_3",
        "webhook-id:msg_4",
    ]
    # The key a delivery of each event now gets is the one stored: a repeat.
    assert {dedup_key(e, "msg_new", b"{}") for e in ("evt_a", "evt_b", "evt_c")} <= set(after)
