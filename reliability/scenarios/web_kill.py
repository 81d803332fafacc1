"""The web-kill scenario: gunicorn's worker processes SIGKILLed during a burst of webhooks."""

from __future__ import annotations

import os
import time
from contextlib import suppress
from pathlib import Path

from reliability.account import Account
from reliability.drive import Log, _ready, _stderr, plan_jobs, sandbox_deliveries, wait_for
from reliability.runner import Size, run
from tests.processes import child_pids


def web_kills(
    database_url: str, tmp_dir: Path, size: Size, kill_seconds: float = 4.0, log: Log = _stderr
) -> Account:
    """SIGKILL gunicorn's worker processes again and again during a burst of webhooks.

    A delivery whose request dies after its transaction committed is stored but never
    answered: Cobalt retries it once (a repeat, refused) or the service reconciles it.
    """
    env = {"JOB_DEADLINE_SECONDS": str(size.deadline_seconds)}
    planned = plan_jobs(size.jobs)
    with run(database_url, tmp_dir, env, 1.5, log) as r:
        system = r.system
        log(f"web-kill: submitting {len(planned)} jobs")
        r.submit(planned)
        wait_for("the first webhooks", lambda: len(sandbox_deliveries(system)) >= 1, 30)
        master = system.processes["web"].popen.pid
        killed = 0
        stop_at = time.monotonic() + kill_seconds
        while time.monotonic() < stop_at:
            for pid in child_pids(master)[:1]:
                with suppress(ProcessLookupError):
                    os.kill(pid, 9)
                    killed += 1
            time.sleep(0.25)
        log(f"web-kill: {killed} gunicorn workers killed")
        wait_for("gunicorn to serve again", lambda: _ready(system), 30)
        r.settle(size.deadline_seconds + 30)
        account = r.account(
            f"web-kill: {size.jobs} jobs, {killed} gunicorn workers SIGKILLed mid-burst"
        )
        account.add("gunicorn workers killed", killed, "kills")
        return account
