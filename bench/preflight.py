"""What the pre-flight check costs a telephone encounter's submission (issue 21).

The same run measures the encounter submission on the same settings and data with
PREFLIGHT_CHECKS on (every id a hit in the clinic's copy, as nearly always: answered from the
process's memory of the ids, re-read every 30 s) and off, in the order on, off, off, on, and
keeps each one's better run (a shared machine's load moves within a run). The cost is the ratio of
the two at each connection count; both also carry their ratio to the bare baseline.
"""

from __future__ import annotations

from typing import Any

CHECKED = "encounter_checked"
UNCHECKED = "encounter_unchecked"
# The lists' sizes in the bench clinic: a large practice's providers, a few locations, and a
# region's pharmacies (the check reads one row per list, whatever the size).
LIST_SIZES = {"providers": 300, "locations": 20, "pharmacies": 2000}


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per connection count: checked and unchecked req/s, p50, app CPU per request, ratio."""
    by: dict[tuple[str, int], dict[str, Any]] = {}
    for run in runs:  # each measured twice (on, off, off, on): the better run of each
        key = (run["scenario"], run["connections"])
        if run["target"] == "service" and (key not in by or run["rps"] > by[key]["rps"]):
            by[key] = run
    rows = []
    for (scenario, conns), checked in sorted(by.items(), key=lambda kv: kv[0][1]):
        unchecked = by.get((UNCHECKED, conns))
        if scenario != CHECKED or unchecked is None or not unchecked["rps"]:
            continue
        rows.append(
            {
                "connections": conns,
                "checked_rps": checked["rps"],
                "unchecked_rps": unchecked["rps"],
                "ratio": round(checked["rps"] / unchecked["rps"], 3),
                "checked_p50_ms": checked["p50_ms"],
                "unchecked_p50_ms": unchecked["p50_ms"],
                "checked_app_cpu_ms": checked["cpu_ms_per_request"]["app"],
                "unchecked_app_cpu_ms": unchecked["cpu_ms_per_request"]["app"],
                "checked_db_cpu_ms": checked["cpu_ms_per_request"].get("db"),
                "unchecked_db_cpu_ms": unchecked["cpu_ms_per_request"].get("db"),
            }
        )
    return rows


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "| pre-flight | conns | req/s checked | req/s unchecked | ratio | p50 ms checked / "
        "unchecked | app CPU ms/req checked / unchecked |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| encounter | {row['connections']} | {row['checked_rps']:.0f} "
            f"| {row['unchecked_rps']:.0f} | {row['ratio']:.2f} "
            f"| {row['checked_p50_ms']:.1f} / {row['unchecked_p50_ms']:.1f} "
            f"| {row['checked_app_cpu_ms']:.2f} / {row['unchecked_app_cpu_ms']:.2f} |"
        )
    return lines


# --- In process: `python -m bench.preflight` -------------------------------------------------
# The same comparison without HTTP or gunicorn (the service's own work only), in many short
# rounds, each app first every other round, so drift hits both alike; then the check's query
# alone beside a `SELECT 1` round trip. Steadier than wrk on a shared machine; the wrk figures
# above are the ones the bench reports.

ENCOUNTER = {
    "patient_mrn": "BENCH-1",
    "provider_id": "PRV-1001",
    "location_id": "LOC-3001",
    "assigned_to_id": "STF-2001",
    "pharmacy_ehr_id": "PHR-4001",
    "reason": "Refill request",
}


def _round(app: Any, count: int) -> float:
    import time

    client = app.test_client()
    headers = {"Authorization": f"Bearer {app.config['TEST_TOKEN']}"}
    started = time.perf_counter()
    for _ in range(count):
        answer = client.post("/v1/telephone-encounters", json=ENCOUNTER, headers=headers)
        assert answer.status_code == 202, answer.get_data(as_text=True)
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    import argparse
    import os
    import statistics
    import time

    import psycopg
    from sqlalchemy import text

    from bench.db import seed_reference_lists
    from tests.conftest import make_settings, new_token
    from tests.processes import throwaway_postgres_database
    from webhook_service.db import make_engine, make_session_factory, transaction
    from webhook_service.http import create_app
    from webhook_service.migrations import upgrade
    from webhook_service.schemas import TelephoneEncounterRequest
    from webhook_service.services import default_clinic
    from webhook_service.services.reference import find_misses

    parser = argparse.ArgumentParser()
    default = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--server-url", default=default)
    # Many short rounds: on a shared machine the load moves within seconds.
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--per-round", type=int, default=25)
    args = parser.parse_args()
    with throwaway_postgres_database(args.server_url, prefix="preflight") as url:
        upgrade(url)
        sessions = make_session_factory(make_engine(url))
        apps = {}
        for name, checks in ((CHECKED, True), (UNCHECKED, False)):
            settings = make_settings(url, LOG_LEVEL="WARNING", PREFLIGHT_CHECKS=checks)
            settings = settings.model_copy(
                update={"rate_limit_submissions_per_minute": 0, "backlog_max_jobs": 0}
            )
            app = create_app(settings)
            app.config["TEST_TOKEN"] = new_token(sessions, f"bench-{name}", "frontend")
            apps[name] = app
        with transaction(sessions) as session:
            clinic_id = default_clinic(session, settings, _now()).id
        libpq = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(libpq, autocommit=True) as conn:
            seed_reference_lists(conn, clinic_id, LIST_SIZES)
        for app in apps.values():
            _round(app, 50)  # warm: pool, caches, the default clinic
        timings: dict[str, list[float]] = {name: [] for name in apps}
        for number in range(args.rounds):
            # Each goes first every other round: whichever runs first in a round was slower
            # (an A/A run of two unchecked apps differed by 15 % in a fixed order).
            order = list(apps.items()) if number % 2 == 0 else list(reversed(apps.items()))
            for name, app in order:
                timings[name].append(_round(app, args.per_round))
        off = statistics.median(timings[UNCHECKED])
        on = statistics.median(timings[CHECKED])
        print(f"encounter submission, check off: {off:7.0f} µs (median of {args.rounds} rounds)")
        print(
            f"                      check on:  {on:7.0f} µs (+{on - off:.0f} µs, {on / off:.3f} x)"
        )
        engine = apps[CHECKED].extensions["webhook_service"]["engine"]
        request = TelephoneEncounterRequest.model_validate(ENCOUNTER)
        with engine.connect() as connection:
            alone, trip = [], []
            for _ in range(2000):
                started = time.perf_counter()
                assert find_misses(connection, clinic_id, request) == []
                alone.append((time.perf_counter() - started) * 1e6)
                started = time.perf_counter()
                connection.execute(text("SELECT 1"))
                trip.append((time.perf_counter() - started) * 1e6)
        print(
            f"the check's query alone: {statistics.median(alone):5.0f} µs "
            f"(a SELECT 1 round trip: {statistics.median(trip):.0f} µs)"
        )


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


if __name__ == "__main__":
    main()
