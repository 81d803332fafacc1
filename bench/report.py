"""Turn measurements into ratios (service over its bare baseline, same run, same connection
count), verdicts on issue 7's targets, a Markdown table, results JSON, and summaries of
py-spy profiles.

The contract floors (bench/baselines.py) get two more ratios: the floor over the bare
baseline (how much of the target the contract's own work leaves), and the service over its
floor (how much of the gap is the service's own overhead). The targets are still judged
against the bare baselines, as issue 7 sets them; a floor below a target is named in that
target's note, so a structural miss reads as one. Support's targets are latencies, not ratios:
its floor's p95 at the judged connection count is set beside the service's, and named in the
target's note the same way.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.preflight import table_lines

# scenario -> (baseline target, minimum ratio of requests/s)
RATIO_TARGETS: dict[str, tuple[str, float]] = {
    # issue 7: any job of the whole table (most not in a process's poll cache)
    "poll_200": ("pk_read", 0.8),
    # issue 20: once every change wakes every web process, "nothing changed" and a settled
    # job's answer come from memory (http/poll_cache.py)
    "poll_304": ("pk_read", 1.5),
    "poll_200_repeat": ("pk_read", 1.0),
    "webhook": ("verify_write", 0.8),
    "submit": ("verify_write", 0.8),
}
# scenario -> the contract floor that mirrors it (same wrk script, data and connections)
FLOORS: dict[str, str] = {
    "poll_200": "poll_floor",
    "poll_304": "poll_floor",
    "webhook": "webhook_floor",
    "submit": "submit_floor",
    "support_filters": "support_floor",
    "support_mrn": "support_floor",
}
BASELINE_OF_BASELINES = "constant"
SUPPORT_FILTER = "support_filter"  # one support filter alone (label: the filter)
WEBHOOK_P99_MS = 100.0
WEBHOOK_P99_CONNECTIONS = 32
SUPPORT_SCENARIOS = ("support_filters", "support_mrn")
SUPPORT_P95_MS = 50.0  # first page of a support search, at 1M jobs
# Support staff are a handful of people: the latency target is read at the bench's lowest
# connection count (8); at 32 and 128 connections latency is queueing (Little's law) and is
# reported, not judged.
SUPPORT_P95_CONNECTIONS = 8
GROWTH_MIN = 0.9
RSS_MAX_MB = 120.0
WORKER_FAST_MIN = 200.0  # jobs/s with Cobalt answering at once
WORKER_SLOW_MIN = 50.0  # jobs/s with each Cobalt call taking 200 ms


@dataclass(frozen=True)
class Verdict:
    name: str
    target: str
    value: str
    passed: bool
    note: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "target": self.target,
            "value": self.value,
            "pass": self.passed,
            "note": self.note,
        }


def _by_key(runs: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Runs by (target, scenario, connections); a bare baseline's scenario is its own name."""
    return {
        (r["target"], r["scenario"], r["connections"]): r
        for r in runs
        if r["scenario"] != SUPPORT_FILTER
    }


def add_ratios(runs: list[dict[str, Any]]) -> None:
    """Give each run `baseline` and `ratio` (its requests/s over the baseline's).

    A contract floor's baseline is its scenario's bare baseline; a service run that has a
    floor also gets `floor` and `floor_ratio` (its requests/s over the floor's).
    """
    by_key = _by_key(runs)
    floors = set(FLOORS.values())
    for run in runs:
        if run["target"] == "service":
            baseline = RATIO_TARGETS.get(run["scenario"], (BASELINE_OF_BASELINES, 0.0))[0]
        elif run["target"] == BASELINE_OF_BASELINES:
            continue
        elif run["target"] in floors and run["scenario"] in RATIO_TARGETS:
            baseline = RATIO_TARGETS[run["scenario"]][0]
        else:
            baseline = BASELINE_OF_BASELINES
        other = by_key.get((baseline, baseline, run["connections"]))
        if other and other["rps"]:
            run["baseline"] = baseline
            run["ratio"] = round(run["rps"] / other["rps"], 3)
        floor = by_key.get((FLOORS.get(run["scenario"], ""), run["scenario"], run["connections"]))
        if run["target"] == "service" and floor and floor["rps"]:
            run["floor"] = floor["target"]
            run["floor_ratio"] = round(run["rps"] / floor["rps"], 3)


def contract_floor(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per scenario with a floor and per connection count: floor/baseline, service/floor.

    Informational: floor/baseline below the target means no implementation of this contract
    on this stack reaches it; service/floor is what is left to win in the service itself.
    """
    by_key = _by_key(results["runs"])
    rows = []
    for scenario, (baseline, minimum) in RATIO_TARGETS.items():
        floor = FLOORS.get(scenario)
        if floor is None:
            continue
        for conns in sorted({key[2] for key in by_key if key[:2] == (floor, scenario)}):
            floor_run = by_key[floor, scenario, conns]
            base = by_key.get((baseline, baseline, conns))
            service = by_key.get(("service", scenario, conns))
            if base is None or not base["rps"] or not floor_run["rps"]:
                continue
            row: dict[str, Any] = {
                "scenario": scenario,
                "connections": conns,
                "baseline": baseline,
                "floor": floor,
                "target": minimum,
                "baseline_rps": base["rps"],
                "floor_rps": floor_run["rps"],
                "floor_over_baseline": round(floor_run["rps"] / base["rps"], 3),
                # gunicorn's CPU per request: steadier than req/s on a shared machine.
                "baseline_cpu_ms": _app_cpu_ms(base),
                "floor_cpu_ms": _app_cpu_ms(floor_run),
            }
            if service is not None:
                row["service_cpu_ms"] = _app_cpu_ms(service)
                row["service_rps"] = service["rps"]
                row["service_over_floor"] = round(service["rps"] / floor_run["rps"], 3)
                row["service_over_baseline"] = round(service["rps"] / base["rps"], 3)
            rows.append(row)
    return rows


def support_floor(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Support's scenarios at the judged connection count: the floor's p95 beside the service's.

    A floor whose p95 misses the latency target says no implementation of the contract
    reaches it on this machine; the CPU per request says how much of a page is the contract's.
    """
    by_key = _by_key(results["runs"])
    rows = []
    for scenario in SUPPORT_SCENARIOS:
        floor = by_key.get((FLOORS[scenario], scenario, SUPPORT_P95_CONNECTIONS))
        if floor is None:
            continue
        row: dict[str, Any] = {
            "scenario": scenario,
            "connections": SUPPORT_P95_CONNECTIONS,
            "floor": floor["target"],
            "target_p95_ms": SUPPORT_P95_MS,
            **_latency("floor", floor),
        }
        service = by_key.get(("service", scenario, SUPPORT_P95_CONNECTIONS))
        if service is not None:
            row.update(_latency("service", service))
        rows.append(row)
    return rows


def _latency(name: str, run: dict[str, Any]) -> dict[str, Any]:
    cpu = run.get("cpu_ms_per_request", {})
    return {
        f"{name}_rps": run["rps"],
        f"{name}_p95_ms": run.get("p95_ms", run["p99_ms"]),
        f"{name}_cpu_ms": _app_cpu_ms(run),
        f"{name}_db_cpu_ms": None if cpu.get("db") is None else float(cpu["db"]),
    }


def _app_cpu_ms(run: dict[str, Any]) -> float | None:
    value = run.get("cpu_ms_per_request", {}).get("app")
    return None if value is None else float(value)


def _floor_note(runs: list[dict[str, Any]], scenario: str, minimum: float) -> str:
    """The floor's worst ratio to the bare baseline, and whether the target is reachable."""
    mine = [
        r
        for r in runs
        if r["target"] == FLOORS.get(scenario) and r["scenario"] == scenario and "ratio" in r
    ]
    if not mine:
        return ""
    worst = min(mine, key=lambda r: r["ratio"])
    figure = f"contract floor {worst['ratio']:.2f} x {worst['baseline']}"
    if worst["ratio"] < minimum:
        return f"{figure} at {worst['connections']}: target out of reach for this contract"
    return f"{figure} at worst: within reach"


def _support_floor_note(results: dict[str, Any], scenario: str) -> str:
    """The support floor's p95 at the judged connection count, and whether it meets the target."""
    row = next((r for r in results.get("support_floor", []) if r["scenario"] == scenario), None)
    if row is None:
        return ""
    figure = (
        f"contract floor p95 {row['floor_p95_ms']:.1f} ms at {row['connections']} connections, "
        f"{row['floor_rps']:.0f} req/s"
    )
    if row["floor_p95_ms"] >= SUPPORT_P95_MS:
        return f"{figure}: target out of reach even for the floor"
    return f"{figure}: within reach (the floor meets it)"


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    """Each issue-7 target, with the measured value and whether it passed."""
    runs = [r for r in results["runs"] if r["target"] == "service"]
    found: list[Verdict] = []
    for scenario, (baseline, minimum) in RATIO_TARGETS.items():
        mine = [r for r in runs if r["scenario"] == scenario and "ratio" in r]
        if not mine:
            continue
        worst = min(r["ratio"] for r in mine)
        ratios = ", ".join(f"{r['ratio']:.2f}@{r['connections']}" for r in mine)
        notes = []
        if scenario == "poll_200":
            notes.append("with bearer auth" if results["meta"].get("auth") else "without auth")
        notes.append(_floor_note(results["runs"], scenario, minimum))
        found.append(
            Verdict(
                f"{scenario} vs {baseline}",
                f">= {minimum} x baseline req/s at every connection count",
                ratios,
                worst >= minimum,
                "; ".join(note for note in notes if note),
            )
        )
    webhook32 = [
        r
        for r in runs
        if r["scenario"] == "webhook" and r["connections"] == WEBHOOK_P99_CONNECTIONS
    ]
    for run in webhook32:
        found.append(
            Verdict(
                "webhook p99",
                f"< {WEBHOOK_P99_MS:.0f} ms at {WEBHOOK_P99_CONNECTIONS} connections",
                f"{run['p99_ms']:.1f} ms",
                run["p99_ms"] < WEBHOOK_P99_MS,
            )
        )
    for run in runs:
        if run["scenario"] in SUPPORT_SCENARIOS and run["connections"] == SUPPORT_P95_CONNECTIONS:
            p95 = run.get("p95_ms", run["p99_ms"])
            found.append(
                Verdict(
                    f"{run['scenario']} p95",
                    f"< {SUPPORT_P95_MS:.0f} ms at {SUPPORT_P95_CONNECTIONS} connections "
                    f"({results['meta']['jobs']:,} jobs)",
                    f"{p95:.1f} ms ({run['rps']:.0f} req/s)",
                    p95 < SUPPORT_P95_MS,
                    _support_floor_note(results, run["scenario"]),
                )
            )
    growth = results.get("growth")
    if growth and growth.get("ratio") is not None:
        found.append(
            Verdict(
                "growth",
                f">= {GROWTH_MIN} (poll 200 req/s at {growth['large_jobs']:,} vs "
                f"{growth['small_jobs']:,} jobs)",
                f"{growth['ratio']:.2f}",
                growth["ratio"] >= GROWTH_MIN,
            )
        )
    rss = _peak_rss(results)
    if rss:
        worst_name, worst_mb = max(rss.items(), key=lambda item: item[1])
        found.append(
            Verdict(
                "memory",
                f"< {RSS_MAX_MB:.0f} MB RSS per web/worker process",
                f"{worst_mb:.0f} MB ({worst_name})",
                worst_mb < RSS_MAX_MB,
            )
        )
    # The target is the service's; the bare baselines and floors have no admission control
    # (no request slots), so past a connection count they time out, which is reported apart.
    errors = sum(r["errors"] for r in results["runs"] if r["target"] == "service")
    others = sum(r["errors"] for r in results["runs"] if r["target"] != "service")
    found.append(
        Verdict(
            "errors",
            "0 from the service (non-2xx/304, socket errors, timeouts)",
            str(errors),
            errors == 0,
            f"baselines and floors: {others}" if others else "",
        )
    )
    configured: dict[float, list[dict[str, Any]]] = {}
    for case in results.get("worker", []):
        if not case.get("what_if"):
            configured.setdefault(case["cobalt_delay_ms"], []).append(case)
    for delay, cases in configured.items():
        # Judged on the better configuration: the default (one process), or one per core.
        minimum = WORKER_FAST_MIN if delay == 0 else WORKER_SLOW_MIN
        value = ", ".join(
            f"{case['jobs_per_s']:.1f}/s ({_processes(case)}, concurrency {case['concurrency']})"
            for case in cases
        )
        found.append(
            Verdict(
                f"worker, Cobalt {delay:.0f} ms",
                f">= {minimum:.0f} submissions/s",
                value,
                max(case["jobs_per_s"] for case in cases) >= minimum,
            )
        )
    return found


def _processes(case: dict[str, Any]) -> str:
    count = case.get("processes", 1)
    return "1 process" if count == 1 else f"{count} processes, one per core"


def _peak_rss(results: dict[str, Any]) -> dict[str, float]:
    """Peak RSS (MB) of the service's own processes: web master, web workers, worker."""
    peaks: dict[str, float] = {}
    web = results.get("memory", {}).get("service")
    if web:
        peaks["web master"] = web["master_peak_mb"]
        peaks["web worker"] = web["worker_peak_mb"]
    for case in results.get("worker", []):
        if not case.get("what_if"):
            peaks[f"worker ({case['cobalt_delay_ms']:.0f} ms)"] = case["rss_peak_mb"]
    return peaks


def format_table(results: dict[str, Any]) -> str:
    """The results as Markdown tables (printed, and pasted into bench/README.md)."""
    lines = [
        "| target | scenario | conns | req/s | p50 ms | p95 ms | p99 ms | errors | ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in results["runs"]:
        if run["scenario"] == SUPPORT_FILTER:
            continue  # in their own table below
        ratio = f"{run['ratio']:.2f} x {run['baseline']}" if "ratio" in run else ""
        errors = str(run["errors"])
        if run.get("unexpected_status") and run["unexpected_status"] != run["errors"]:
            errors += f" ({run['unexpected_status']} unexpected)"
        lines.append(
            f"| {run['target']} | {run['scenario']} | {run['connections']} | {run['rps']:.0f} "
            f"| {run['p50_ms']:.1f} | {run.get('p95_ms', float('nan')):.1f} "
            f"| {run['p99_ms']:.1f} | {errors} | {ratio} |"
        )
    lines += _floor_lines(results.get("contract_floor", []))
    lines += _support_floor_lines(results.get("support_floor", []))
    lines += _support_filter_lines(results["runs"])
    lines += table_lines(results.get("preflight", []))
    growth = results.get("growth")
    if growth:
        lines += [
            "",
            "| growth | jobs in the table | req/s (poll 200 of the newest 10,000 jobs, 32 conns) |",
            "|---|---:|---:|",
            f"| small | {growth['small_jobs']:,} | {growth['small_rps']:.0f} |",
            f"| large | {growth['large_jobs']:,} | {growth['large_rps']:.0f} |",
            f"| ratio | | {growth['ratio']:.2f} |",
        ]
    memory = results.get("memory", {})
    if memory:
        lines += [
            "",
            "| gunicorn app | master peak MB | worker peak MB | worker pids seen |",
            "|---|---:|---:|---:|",
        ]
        for name, peaks in memory.items():
            lines.append(
                f"| {name} | {peaks['master_peak_mb']:.0f} | {peaks['worker_peak_mb']:.0f} "
                f"| {peaks['workers_seen']} |"
            )
    worker = results.get("worker", [])
    if worker:
        lines += [
            "",
            "| worker | Cobalt delay | concurrency | processes | jobs/s left pending "
            "| RSS peak MB (per process) |",
            "|---|---:|---|---:|---:|---:|",
        ]
        for case in worker:
            label = "what-if" if case.get("what_if") else "as configured"
            lines.append(
                f"| {label} | {case['cobalt_delay_ms']:.0f} ms | {case['concurrency']} "
                f"| {case.get('processes', 1)} | {case['jobs_per_s']:.1f} "
                f"| {case['rss_peak_mb']:.0f} |"
            )
    found = results.get("targets", [])
    if found:
        lines += ["", "| target | wanted | measured | verdict |", "|---|---|---|---|"]
        for item in found:
            verdict = "pass" if item["pass"] else "**MISS**"
            note = f" ({item['note']})" if item["note"] else ""
            lines.append(
                f"| {item['name']}{note} | {item['target']} | {item['value']} | {verdict} |"
            )
    return "\n".join(lines)


def _floor_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The contract-floor table: how far the contract itself lets each scenario go."""
    if not rows:
        return []
    lines = [
        "",
        "| contract floor | conns | baseline req/s | floor req/s | service req/s "
        "| floor / baseline | service / floor | service / baseline (target) "
        "| app CPU ms/req: baseline / floor / service |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cpu = " / ".join(
            "" if row.get(key) is None else f"{row[key]:.2f}"
            for key in ("baseline_cpu_ms", "floor_cpu_ms", "service_cpu_ms")
        )
        service = f"{row['service_rps']:.0f}" if "service_rps" in row else ""
        over_floor = f"{row['service_over_floor']:.2f}" if "service_over_floor" in row else ""
        over_base = (
            f"{row['service_over_baseline']:.2f} (>= {row['target']})"
            if "service_over_baseline" in row
            else f"(>= {row['target']})"
        )
        lines.append(
            f"| {row['scenario']} vs {row['floor']} | {row['connections']} "
            f"| {row['baseline']} {row['baseline_rps']:.0f} | {row['floor_rps']:.0f} "
            f"| {service} | {row['floor_over_baseline']:.2f} | {over_floor} | {over_base} "
            f"| {cpu} |"
        )
    return lines


def _support_floor_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Support's latency targets against the floor: can any implementation meet them here?"""
    if not rows:
        return []
    lines = [
        "",
        "| support floor | conns | p95 target ms | p95 ms: floor / service "
        "| req/s: floor / service | app CPU ms/req: floor / service "
        "| PostgreSQL CPU ms/req: floor / service |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = [
            " / ".join(
                "" if row.get(f"{who}_{key}") is None else f"{row[f'{who}_{key}']:{spec}}"
                for who in ("floor", "service")
            )
            for key, spec in (
                ("p95_ms", ".1f"),
                ("rps", ".0f"),
                ("cpu_ms", ".2f"),
                ("db_cpu_ms", ".2f"),
            )
        ]
        lines.append(
            f"| {row['scenario']} vs {row['floor']} | {row['connections']} "
            f"| {row['target_p95_ms']:.0f} | {' | '.join(cells)} |"
        )
    return lines


def _support_filter_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Each support filter alone at 1 connection: which filter makes the mix's p95."""
    mine = [r for r in runs if r["scenario"] == SUPPORT_FILTER]
    if not mine:
        return []
    lines = [
        "",
        "| support filter (alone, 1 conn) | req/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for run in mine:
        lines.append(
            f"| {run.get('label', '')} | {run['rps']:.0f} | {run['p50_ms']:.1f} "
            f"| {run['p95_ms']:.1f} | {run['p99_ms']:.1f} | {run['errors']} |"
        )
    return lines


def write_results(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Summarize py-spy's raw (collapsed) stacks: self time by package, top inclusive frames."""
    self_by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if " (" in f and f.endswith(")")]
        if not frames:
            continue
        total += count
        self_by_package[_package(frames[-1])] += count
        for frame in set(frames):
            inclusive[_short(frame)] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "self_by_package": [
            (name, round(100 * n / total, 1)) for name, n in self_by_package.most_common(12)
        ],
        "top_inclusive": [
            (name, round(100 * n / total, 1)) for name, n in inclusive.most_common(top)
        ],
    }


def _package(frame: str) -> str:
    """The top-level package of a frame ("psycopg", "sqlalchemy", "threading", …).

    py-spy prints paths relative to their sys.path entry, so the first component is the
    package (or the stdlib module).
    """
    location = frame[frame.rfind(" (") + 2 : -1]
    path = location.rpartition(":")[0] or location
    for marker in ("site-packages/", "/main/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    if path.startswith(".") and "/" in path:
        path = path.split("/", 1)[1]
    return path.split("/", 1)[0].removesuffix(".py") or "?"


def _short(frame: str) -> str:
    name, _, location = frame.partition(" (")
    path, _, line = location[:-1].rpartition(":")
    if not line.isdigit():
        path = location[:-1]
    for marker in ("site-packages/", "/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"
