"""The gateway scenario: 502/504 answers from a gateway, before and after Cobalt queued."""

from __future__ import annotations

from pathlib import Path

from reliability.account import Account
from reliability.drive import Log, _all_sent, _stderr, plan_jobs, set_faults, wait_for
from reliability.runner import Size, run


def gateway_errors(database_url: str, tmp_dir: Path, size: Size, log: Log = _stderr) -> Account:
    """A gateway in front of Cobalt answers 502 (first half) or 504 (second half) with an HTML
    page: to 10% of submissions before Cobalt queued them (nothing created), to 10% after
    (created, and their webhooks sent as usual). Neither may be resent: the service cannot
    tell them apart. Each becomes `unknown`; a note queued at Cobalt settles from its webhook
    or a lookup by appointment, an encounter queued there has no id the service knows; the
    rest reach the deadline still `processing`, with attention, never `failed`."""
    env = {"JOB_DEADLINE_SECONDS": str(size.deadline_seconds)}
    planned = plan_jobs(size.jobs)
    half = len(planned) // 2
    with run(database_url, tmp_dir, env, 0.3, log) as r:
        system = r.system
        faults = {"gateway_error_rate": 0.1, "gateway_error_after_queue_rate": 0.1}
        set_faults(system, **faults, gateway_status=502, seed=size.seed)
        log(f"gateway: {half} jobs behind 502s")
        r.submit(planned[:half])
        wait_for("the first half sent", lambda: _all_sent(system), 60)
        set_faults(system, **faults, gateway_status=504)
        log(f"gateway: {len(planned) - half} jobs behind 504s")
        r.submit(planned[half:])
        r.settle(size.deadline_seconds + 30)
        account = r.account(
            f"gateway: {size.jobs} jobs, 20% answered 502/504 by a gateway (half after queuing)"
        )
        sandbox_log = [line.get("message") for line in system.processes["sandbox"].log_lines()]
        gateway = sum(1 for e in sandbox_log if isinstance(e, str) and "gateway" in e)
        account.add("submissions answered by the gateway", gateway, "gateway_answers")
        return account
