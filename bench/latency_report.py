"""The push-latency bench's results (bench/latency.py): percentiles, issue 20's targets, the
table it prints and the JSON it writes (`bench/results/latency.json`)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "results" / "latency.json"


def summary(values: list[float]) -> dict[str, Any]:
    """n, p50, p95, p99, min and max of latencies in ms (inclusive quantiles)."""
    if len(values) < 2:
        only = round(values[0], 2) if values else None
        return {"n": len(values), **dict.fromkeys(("p50", "p95", "p99", "min", "max"), only)}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "n": len(values),
        "p50": round(cuts[49], 2),
        "p95": round(cuts[94], 2),
        "p99": round(cuts[98], 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


# --- results ----------------------------------------------------------------------------------


# (name, part of the results, figure, limit): issue 20's targets.
TARGETS = (
    ("long poll: webhook 200 to answer, p99 < 100 ms", "long_poll", "p99", 100.0),
    ("stream: webhook 200 to event, p99 < 100 ms", "stream", "p99", 100.0),
    ("callback: webhook 200 to first attempt, p99 < 1 s", "callbacks", "p99", 1000.0),
)


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for name, part, figure, limit in TARGETS:
        value = results[part]["push_ms"][figure]
        ok = value is not None and value < limit and not results[part]["errors"]
        found.append({"target": name, "value": value, "pass": ok})
    for way in ("long_poll", "stream"):
        most = results["requests_per_job"][way]["max"]
        found.append(
            {"target": f"requests per job, {way}: at most 2", "value": most, "pass": most == 2}
        )
    return found


def format_table(results: dict[str, Any]) -> str:
    loads = results["loadavg_1m"]
    lines = [
        "push latency (issue 20), ms; load average (1 min) "
        + ", ".join(f"{k} {v}" for k, v in loads.items()),
        f"{'':<44} {'n':>5} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}",
    ]
    rows = [
        ("NOTIFY, commit to receipt (bare baseline)", results["notify"]),
        ("long poll: webhook 200 -> waiter's 200", results["long_poll"]["push_ms"]),
        ("stream: webhook 200 -> settled event", results["stream"]["push_ms"]),
        ("callback: webhook 200 -> first attempt", results["callbacks"]["push_ms"]),
        ("webhook itself (sent -> 200), long poll", results["long_poll"]["webhook_ms"]),
        ("webhook itself, at 50/s (callbacks)", results["callbacks"]["webhook_ms"]),
    ]
    calls = results["callbacks"]
    rows += [(f"  callback: {part}", row) for part, row in calls["breakdown_ms"].items()]
    for label, row in rows:
        cells = " ".join(f"{_ms(row.get(k)):>8}" for k in ("p50", "p95", "p99", "max"))
        lines.append(f"{label:<44} {row['n']:>5} {cells}")
    lines.append(
        f"callbacks: {calls['arrived']} of {calls['settled']} arrived; webhooks sent at "
        f"{calls['achieved_rate']}/s, callbacks arrived at {calls['delivered_per_s']}/s "
        "over their span; "
        f"p50 by tenth of the drive {calls['p50_by_tenth_ms']} ms; CPU (cores) {calls['cpu_share']}"
    )
    lines.append(
        "errors: "
        + ", ".join(
            f"{p} {results[p]['errors'] or 0}" for p in ("long_poll", "stream", "callbacks")
        )
    )
    ways = results["requests_per_job"]
    lines.append(
        "requests per job, submit to outcome: "
        + "; ".join(
            f"{w} {v['counts']} (seen {v['seen_ms']} ms after the webhook)" for w, v in ways.items()
        )
    )
    lines.append("RSS per web process, MB: " + str(results["rss_mb"]))
    for verdict in results["targets"]:
        mark = "PASS" if verdict["pass"] else "MISS"
        lines.append(f"  {mark}  {verdict['target']}: {verdict['value']}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def write(results: dict[str, Any], path: Path = OUTPUT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
