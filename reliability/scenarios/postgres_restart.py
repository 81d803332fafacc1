"""The postgres-restart scenario: the database stopped and started while webhooks arrive."""

from __future__ import annotations

import time
from pathlib import Path

from reliability.account import Account, _ok
from reliability.drive import Log, _all_sent, _stderr, plan_jobs, sandbox_deliveries, wait_for
from reliability.runner import Size, run
from tests.processes import throwaway_postgres_cluster, throwaway_postgres_database


def postgres_restart(
    tmp_dir: Path, size: Size, down_seconds: float = 4.0, log: Log = _stderr
) -> Account:
    """Stop PostgreSQL while Cobalt's webhooks arrive, start it again a few seconds later.

    Runs on a throwaway cluster of its own, so a shared server is never touched.
    """
    env = {"JOB_DEADLINE_SECONDS": str(size.deadline_seconds), "CLAIM_TTL_SECONDS": "5"}
    planned = plan_jobs(size.jobs)
    with (
        throwaway_postgres_cluster() as cluster,
        throwaway_postgres_database(cluster.server_url) as database_url,
        run(database_url, tmp_dir, env, 2.5, log) as r,
    ):
        log(f"postgres-restart: submitting {len(planned)} jobs")
        r.submit(planned)
        # Cobalt has every job before the outage (but notes waiting for an earlier note of their
        # appointment): this scenario is about the webhooks.
        wait_for("the worker to send every job it may send now", lambda: _all_sent(r.system), 60)
        # Outcomes come 2.5 s after each acceptance: the burst falls into the outage.
        cluster.stop("fast")
        stopped = time.monotonic()
        log("postgres-restart: database stopped")
        time.sleep(down_seconds)
        cluster.start()
        log(f"postgres-restart: database back after {time.monotonic() - stopped:.1f} s")
        r.settle(size.deadline_seconds + 30)
        account = r.account(
            f"postgres-restart: {size.jobs} jobs, database down {down_seconds:.0f} s mid-burst"
        )
        refused = sum(1 for a in sandbox_deliveries(r.system) if not _ok(a))
        account.add("webhook attempts refused during the outage", refused, "refused")
        return account
