"""The reliability run: the real system under injected faults, and an exact account of it.

Every scenario starts the real processes on loopback (`tests/processes.py`: the Cobalt
sandbox, gunicorn exactly as the Procfile says, the worker) on a throwaway PostgreSQL
database, submits a mix of notes and telephone encounters whose outcomes the sandbox's
pretend EMR decides (`webhook_service.sandbox.data`), injects one kind of fault, waits until
every job has settled (or a bounded wait ran out), and then accounts for every job from
both sides: what the service says (the API, its tables) and what Cobalt saw (the sandbox's
submissions, event log and delivery attempts). A job is judged by these rules:

- Cobalt accepted it at most once (no duplicate note in a chart), and
- it settled to the outcome Cobalt produced for it, with that submission's Cobalt job id, or
- Cobalt certainly never had it and the service says so (`failed` as `cobalt_unavailable`, or
  `appointment_busy` for a note still waiting behind an earlier one), or
- its fate cannot be known from anything the service holds, and it says exactly that: still
  `processing` with `attention: no_outcome` past its deadline, for a person to check the
  chart. Each such job is explained: an encounter whose reply never came (Cobalt's log then
  holds no key the service knows: "Known limits" in reliability/README.md), or a submission
  whose answer never came (a gateway error, a worker killed between claiming and sending)
  that Cobalt turned out not to have,
- and no outcome was applied to it twice; nothing is left `processing` without attention
  ("lost").

The scenarios (`tests/test_faults.py` runs each at CI size; this script at full size):

- chaos: duplicated, dropped, reordered webhooks, 5xx and hanging submissions, all at once
- worker-kill: `kill -9` of the worker while submissions are in flight, restarted each time
- postgres-restart: the database stopped and started while webhooks arrive
- web-kill: gunicorn's worker processes SIGKILLed during a burst of webhooks
- same-appointment, busy-day: notes reconciled by appointment, past the first page of the log
- replay: every signed body sent again while new notes for the same appointments are in flight
- gateway: 502/504 answers from a gateway, before and after Cobalt queued the job
- foreign-events: `appointment.failed` events sharing the appointment of a note in flight
- connection-cap: a 20-connection database full while Cobalt's webhooks arrive

Run: `python -m reliability.run` (from the repository root; `--help` for sizes). It needs a
PostgreSQL server (`TEST_DATABASE_URL`, default the local one) and the PostgreSQL server
binaries for the restart scenario's own throwaway cluster. Exit status 1 if anything was
lost, duplicated, wrong or applied twice.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from reliability.account import Account
from reliability.drive import PATTERN_FULL
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

# --- The full run -----------------------------------------------------------------------------


SCENARIOS = [
    "chaos",
    "worker-kill",
    "postgres-restart",
    "web-kill",
    "connection-cap",
    "same-appointment",
    "busy-day",
    "replay",
    "gateway",
    "foreign-events",
    "callbacks",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="chaos scenario size")
    parser.add_argument("--other-jobs", type=int, default=200, help="size of the other scenarios")
    parser.add_argument(
        "--server",
        default=os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres"),
        help="PostgreSQL server URL (a throwaway database is created and dropped on it)",
    )
    parser.add_argument(
        "--only",
        choices=SCENARIOS,
        action="append",
        help="run only these scenarios (repeatable)",
    )
    args = parser.parse_args(argv)
    only = set(args.only or SCENARIOS)
    big = Size(args.jobs, deadline_seconds=120, expected_seconds=8)
    other = Size(args.other_jobs, deadline_seconds=90)
    accounts: list[Account] = []
    with tempfile.TemporaryDirectory(prefix="webhook-service-reliability-") as tmp:
        root = Path(tmp)

        def scenario(name: str, run: Callable[[str, Path], Account]) -> None:
            if name not in only:
                return
            tmp_dir = root / name
            tmp_dir.mkdir()
            started = time.monotonic()
            try:
                if name in ("postgres-restart", "connection-cap"):
                    account = run("", tmp_dir)
                else:
                    with throwaway_postgres_database(args.server) as database_url:
                        account = run(database_url, tmp_dir)
            except Exception as exc:  # a scenario that could not finish is a failed one
                account = Account(f"{name}: did not finish")
                account.violations.append(f"{type(exc).__name__}: {exc}")
            account.name = name
            account.add("scenario wall time", f"{time.monotonic() - started:.0f} s")
            print(account.table(), flush=True)
            print(flush=True)
            accounts.append(account)

        scenario("chaos", lambda url, d: chaos(url, d, big, variants=PATTERN_FULL))
        scenario("worker-kill", lambda url, d: worker_kills(url, d, other, kills=8))
        scenario("postgres-restart", lambda _, d: postgres_restart(d, other))
        scenario("web-kill", lambda url, d: web_kills(url, d, other))
        scenario("connection-cap", lambda _, d: connection_cap(args.server, d, other))
        scenario("same-appointment", lambda url, d: same_appointment_notes(url, d, notes=3))
        scenario("busy-day", lambda url, d: busy_day_note(url, d))
        scenario("replay", lambda url, d: replayed_bodies(url, d, other))
        scenario("gateway", lambda url, d: gateway_errors(url, d, other))
        scenario("foreign-events", lambda url, d: foreign_events(url, d, other))
        from reliability.callbacks import callbacks  # its own module; it imports this one

        scenario("callbacks", lambda url, d: callbacks(url, d, other))
    print(summary(accounts))
    return 1 if any(a.violations for a in accounts) else 0


def summary(accounts: list[Account]) -> str:
    """One line per scenario: the figures that must be 0, and the allowed exceptions."""
    columns = [
        ("jobs", "jobs"),
        ("lost", "lost"),
        ("dup.sub", "duplicated_submissions"),
        ("twice", "applied_twice"),
        ("wrong", "wrong"),
        ("reconciled", "reconciled"),
        ("attention", "attention"),
    ]
    header = f"{'scenario':<18}" + "".join(f" {label:>10}" for label, _ in columns) + "  result"
    lines = ["== summary ==", header]
    for account in accounts:
        name = account.name or account.title.split(":")[0]
        cells = "".join(f" {account.figures.get(key, 0):>10}" for _, key in columns)
        lines.append(f"{name:<18}{cells}  {'FAIL' if account.violations else 'ok'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
