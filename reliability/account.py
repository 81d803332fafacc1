"""The account of a run: every job judged from both sides, the service's and Cobalt's."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from reliability.drive import (
    EVENT_STATUS,
    TERMINAL,
    Planned,
    loopback,
    query,
    read_jobs,
    sandbox_deliveries,
    sandbox_events,
    sandbox_submissions,
)
from tests.processes import RunningSystem

# --- The account ------------------------------------------------------------------------------


@dataclass
class Account:
    """What a scenario did and how every job ended, and the rules it broke (if any)."""

    title: str
    name: str = ""  # the scenario's short name, for the summary
    rows: list[tuple[str, Any]] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def add(self, label: str, value: Any, key: str | None = None) -> None:
        self.rows.append((label, value))
        if key is not None:
            self.figures[key] = int(value)

    def table(self) -> str:
        width = max((len(label) for label, _ in self.rows), default=10)
        lines = [f"== {self.title} ==", *(f"  {k:<{width}}  {v}" for k, v in self.rows)]
        if self.violations:
            lines.append(f"  VIOLATIONS ({len(self.violations)}):")
            lines.extend(f"    - {v}" for v in self.violations[:40])
            if len(self.violations) > 40:
                lines.append(f"    … and {len(self.violations) - 40} more")
        else:
            lines.append("  no violations: nothing lost, nothing submitted or applied twice")
        return "\n".join(lines)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"


def account_for(
    title: str,
    system: RunningSystem,
    planned: list[Planned],
    job_ids: dict[str, str],
    *,
    elapsed: float,
    submit_retries: int,
) -> Account:
    """Reconcile the service's view of every job with Cobalt's (the sandbox's)."""
    account = Account(title)
    # Let the sandbox finish what it scheduled (outcomes, retries) before reading its side.
    with loopback() as http:
        http.post(f"{system.sandbox_url}/_sandbox/drain", params={"timeout": 15}, timeout=20)
    jobs = read_jobs(system, list(job_ids.values()))
    submissions = sandbox_submissions(system)
    events = sandbox_events(system)
    attempts = sandbox_deliveries(system)
    sandbox_log = [line.get("message") for line in system.processes["sandbox"].log_lines()]
    stored = query(
        system.database_url,
        "SELECT dedup_key, webhook_id, attempt, signature_match, state, event_id"
        " FROM webhook_deliveries",
    )
    timeline = query(
        system.database_url,
        "SELECT job_id::text, type, count(*) FROM job_events GROUP BY job_id, type",
    )
    per_job_events: dict[str, Counter[str]] = {}
    for job_id, type_, count in timeline:
        per_job_events.setdefault(job_id, Counter())[type_] = int(count)

    # Cobalt's side: which submission carries which marker, and its event.
    by_marker: dict[str, list[dict[str, Any]]] = {}
    markers = {p.marker for p in planned}
    for submission in submissions:
        text = str(submission["body"])
        marker = next((m for m in _markers_in(text) if m in markers), None)
        by_marker.setdefault(marker or "(none)", []).append(submission)
    events_by_job = {}
    for event in events:
        if event.get("job_id") is not None and event["event_type"] in EVENT_STATUS:
            events_by_job.setdefault(str(event["job_id"]), event)

    kinds = Counter(p.kind for p in planned)
    expected = Counter(p.status for p in planned)
    account.add("jobs submitted", len(planned), "jobs")
    account.add(
        "  notes / telephone encounters", f"{kinds['note']} / {kinds['telephone_encounter']}"
    )
    account.add("  Cobalt's data says", _counts(expected))
    account.add("  submit calls answered 5xx or cut (retried)", submit_retries, "submit_retries")
    faults = Counter(
        e.removeprefix("sandbox_fault_")
        for e in sandbox_log
        if isinstance(e, str) and e.startswith("sandbox_fault_")
    )
    account.add("faults injected by the sandbox", _counts(faults))
    for name in ("duplicate", "drop", "reorder", "submit_error", "submit_hang"):
        account.figures[f"fault_{name}"] = faults.get(name, 0)
    account.add("Cobalt: accepted submissions", len(submissions), "cobalt_submissions")

    verdicts = Counter[str]()
    twice = 0
    applied_twice = 0
    for plan in planned:
        job_id = job_ids[plan.marker]
        job = jobs.get(job_id, {"status": "missing"})
        seen = by_marker.get(plan.marker, [])
        if len(seen) > 1:
            twice += 1
            account.violations.append(
                f"{plan.variant} {job_id}: Cobalt accepted it {len(seen)} times"
            )
        applied = per_job_events.get(job_id, Counter())["webhook_applied"]
        if applied > 1:
            applied_twice += 1
            account.violations.append(
                f"{plan.variant} {job_id}: outcome applied {applied} times"
                + _story(system.database_url, job_id)
            )
        verdict, problem = _judge(plan, job, seen[0] if seen else None, events_by_job)
        verdicts[verdict] += 1
        if problem:
            story = _story(system.database_url, job_id) if len(account.violations) < 10 else ""
            account.violations.append(f"{plan.variant} {job_id}: {problem}{story}")
    stray = by_marker.get("(none)", [])
    if stray:
        account.violations.append(f"{len(stray)} submission(s) at Cobalt match no job")

    account.add(
        "Cobalt: jobs accepted exactly once",
        sum(len(by_marker.get(p.marker, [])) == 1 for p in planned),
        "accepted_once",
    )
    account.add("Cobalt: jobs accepted twice or more (must be 0)", twice, "duplicated")
    account.add("Cobalt: outcome events produced", len(events), "events")

    # Webhook deliveries: what the sandbox attempted, what the service stored.
    status_of = Counter(_attempt_result(a) for a in attempts)
    account.add("webhook attempts by the sandbox", f"{len(attempts)} ({_counts(status_of)})")
    account.figures["attempts"] = len(attempts)
    acked = {a["webhook_id"] for a in attempts if _ok(a)}
    sent = {a["webhook_id"] for a in attempts}
    first_try = {a["webhook_id"]: a for a in attempts if a["attempt"] == 1 and not a["duplicate"]}
    by_webhook_id = {row[1]: row for row in stored if row[3] != "reconcile"}
    reconciled = [row for row in stored if row[3] == "reconcile"]
    never = len({e["event_id"] for e in events}) - len({a["event_id"] for a in attempts})
    account.add("  events never sent (dropped)", never, "never_sent")
    account.add("  events sent, never answered 2xx", len(sent - acked), "never_acked")
    account.add("deliveries stored (one row per webhook-id)", len(by_webhook_id), "stored")
    account.add(
        "  repeats answered 200, nothing changed", sum(1 for a in attempts if _ok(a)) - len(acked)
    )
    # Stored by the first attempt although that attempt got no 2xx: the request died (or
    # Cobalt stopped waiting) after the transaction committed and before the answer went out.
    unanswered = Counter(
        _attempt_result(first_try[wid])
        for wid, row in by_webhook_id.items()
        if wid in first_try and not _ok(first_try[wid]) and row[2] == 1
    )
    account.add("  stored, but attempt 1 saw no 2xx", _counts(unanswered))
    account.figures["stored_unanswered"] = sum(unanswered.values())
    account.figures["stored_then_cut"] = unanswered.get("connection_error", 0)
    # Deliveries are stored once per signed event id: a webhook acknowledged as a repeat of
    # an event a reconcile lookup stored first has no row of its own, and is not missing.
    stored_events = {row[5] for row in stored if row[5] is not None}
    missing = sorted(
        {
            a["webhook_id"]
            for a in attempts
            if a["webhook_id"] in acked
            and a["webhook_id"] not in by_webhook_id
            and a.get("event_id") not in stored_events
        }
    )
    if missing:
        account.violations.append(f"{len(missing)} webhook(s) answered 2xx but not stored")
    unknown = sorted(set(by_webhook_id) - sent)
    if unknown:
        account.violations.append(f"{len(unknown)} stored webhook-id(s) the sandbox never sent")
    account.add(
        "outcomes found by reconciliation (applied)",
        sum(1 for r in reconciled if r[4] == "applied"),
        "reconciled",
    )
    account.add(
        "delivery states (webhooks + reconciled)", _counts(Counter(str(r[4]) for r in stored))
    )
    steps = Counter[str]()
    for counter in per_job_events.values():
        steps.update(counter)
    account.add(
        "timeline: submit retried / unknown / claim expired",
        f"{steps['submission_retrying']} / {steps['submission_unknown']} / "
        f"{steps['claim_expired']}",
    )
    account.add(
        "timeline: reconcile lookups / deadline passed",
        f"{steps['reconcile_lookup']} / {steps['deadline_passed']}",
    )

    finals = Counter(str(job.get("status")) for job in jobs.values())
    account.add("final states", _counts(finals))
    account.add("  settled as Cobalt said", verdicts[SETTLED], "settled_as_cobalt_said")
    account.add("  never reached Cobalt, failed", verdicts[NEVER_REACHED])
    attention = {v: n for v, n in verdicts.items() if v.startswith(ATTENTION)}
    account.add("  still processing, with attention", sum(attention.values()), "attention")
    for verdict, count in sorted(attention.items()):
        account.add(f"    {verdict.removeprefix(ATTENTION)}", count)
    lost = verdicts["LOST"]
    account.add("lost (processing, no attention; must be 0)", lost, "lost")
    account.add("duplicated submissions (must be 0)", twice, "duplicated_submissions")
    account.add("outcomes applied twice (must be 0)", applied_twice, "applied_twice")
    account.add("wrong outcome (must be 0)", verdicts["WRONG"], "wrong")
    account.figures["unmatchable"] = verdicts[ATTENTION + REPLY_LOST]
    web_5xx = Counter(str(line.get("status")) for line in system.server_errors())
    account.add("web answers 5xx", _counts(web_5xx))
    account.figures["web_500"] = web_5xx.get("500", 0)
    if web_5xx.get("500"):
        account.violations.append(f"the web process answered 500 {web_5xx['500']} time(s)")
    account.add("wall time (submit → all settled)", f"{elapsed:.1f} s")
    return account


def _story(database_url: str, job_id: str) -> str:
    """The job's timeline (types and ids only), to explain a violation."""
    rows = query(
        database_url,
        "SELECT type, detail FROM job_events WHERE job_id = %s ORDER BY at, id",
        job_id,
    )
    steps = []
    for type_, detail in rows:
        keep = {
            k: v
            for k, v in (detail or {}).items()
            if k in ("attempt", "status_code", "found", "event_type", "cobalt_job_id", "status")
            and v is not None
        }
        steps.append(type_ + (str(keep).replace("'", "") if keep else ""))
    return "\n        timeline: " + " → ".join(steps)


def _markers_in(text: str) -> Iterator[str]:
    start = text.find("rel-")
    while start != -1:
        yield text[start : start + len("rel-") + 6 + 1 + 5]
        start = text.find("rel-", start + 1)


def _ok(attempt: dict[str, Any]) -> bool:
    code = attempt.get("status_code")
    return isinstance(code, int) and 200 <= code < 300


def _attempt_result(attempt: dict[str, Any]) -> str:
    code = attempt.get("status_code")
    if code is None:
        return str(attempt.get("error") or "no answer")
    return f"{code // 100}xx"


SETTLED = "settled as Cobalt said"
NEVER_REACHED = "never reached Cobalt: failed cobalt_unavailable or appointment_busy"
ATTENTION = "attention, "
REPLY_LOST = "reply lost: an encounter Cobalt took, matchable by no key the service holds"
NOT_AT_COBALT = "sent, answer unknown (gateway error, worker killed): Cobalt never had it"


def _judge(
    plan: Planned,
    job: dict[str, Any],
    submission: dict[str, Any] | None,
    events_by_job: dict[str, dict[str, Any]],
) -> tuple[str, str | None]:
    """A verdict for one job, and the rule it broke (None when it broke none).

    A job still `processing` with `attention` is not lost: it says "unknown, check the
    chart", which is true only where nothing the service holds can tell. Each such verdict
    names why; any other reason is a violation (its outcome was there to be found).
    """
    status = job.get("status")
    error = (job.get("error") or {}).get("code")
    cobalt = job.get("cobalt") or {}
    state = (job.get("submission") or {}).get("state")
    attention = (job.get("attention") or {}).get("code")
    if status == "processing" and attention == "no_outcome":
        if submission is None and state == "unknown":
            return ATTENTION + NOT_AT_COBALT, None
        if (
            submission is not None
            and plan.kind == "telephone_encounter"
            and cobalt.get("job_id") is None
            and state in ("unknown", "sending")
        ):
            return ATTENTION + REPLY_LOST, None
        return "WRONG", (
            f"needs attention (submission {state!r}) although "
            + ("Cobalt never had it" if submission is None else "its outcome was in Cobalt's log")
        )
    if status not in TERMINAL:
        return "LOST", f"ended {status!r} (submission {state!r}, attention {attention!r})"
    if submission is None:
        if status == "failed" and error in ("cobalt_unavailable", "appointment_busy"):
            return NEVER_REACHED, None
        return "WRONG", f"Cobalt never had it, yet it ended {status}/{error}"
    event = events_by_job.get(str(submission["job_id"]))
    if event is None:
        return "WRONG", f"Cobalt produced no outcome for its submission; it ended {status}"
    if event["event_type"] != plan.event:
        return "WRONG", f"the sandbox said {event['event_type']}, its data says {plan.event}"
    if (
        status == plan.status
        and (job.get("outcome") or {}).get("event") == event["event_type"]
        and cobalt.get("job_id") == str(submission["job_id"])
        and error == plan.error_code
    ):
        return SETTLED, None
    return "WRONG", (
        f"ended {status}/{error} with Cobalt job {cobalt.get('job_id')!r}; Cobalt said "
        f"{event['event_type']} for job {submission['job_id']!r}"
    )
