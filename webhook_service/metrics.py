"""What a process counts as it works: Cobalt calls (with their latency), reconcile lookups,
PHI purges. Kept in memory, per process, until `services.metrics` adds it to the totals in
the database (every few seconds, and at shutdown), where `GET /metrics` reads it.

A count is an addition to a sample (a counter's `_total`, or a histogram's `_bucket`,
`_count` and `_sum`) with its labels. Nothing here touches the database: counting costs a
lock and a dict update, so the paths that count gain no write of their own.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from typing import Final

PREFIX: Final = "webhook_service_"


@dataclass(frozen=True)
class Family:
    """One metric as Prometheus sees it: its name (without `_total`), type, help, labels."""

    name: str
    kind: str  # "counter" or "histogram"
    help: str
    labels: tuple[str, ...]


COBALT_CALLS: Final = Family(
    PREFIX + "cobalt_calls",
    "counter",
    "Calls to Cobalt by operation and answer (accepted/ok, rejected, transient, ambiguous, error).",
    ("operation", "answer"),
)
COBALT_DURATION: Final = Family(
    PREFIX + "cobalt_call_duration_seconds",
    "histogram",
    "How long calls to Cobalt took, from sending to the answer (or the failure), by operation.",
    ("operation",),
)
RECONCILE_LOOKUPS: Final = Family(
    PREFIX + "reconcile_lookups",
    "counter",
    "Lookups of a job in Cobalt's webhook-events log (worker and support), by result: "
    "applied (an outcome was found and applied), nothing_applied, failed (Cobalt unreadable).",
    ("result",),
)
PHI_PURGES: Final = Family(
    PREFIX + "phi_purged_jobs",
    "counter",
    "Settled jobs whose PHI was erased at the end of the retention period.",
    (),
)
FAMILIES: Final = (COBALT_CALLS, COBALT_DURATION, RECONCILE_LOOKUPS, PHI_PURGES)

# Cobalt writes wait on a headless browser at the EMR: seconds, sometimes tens of seconds.
DURATION_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, math.inf)

Key = tuple[str, str]  # (sample name, labels as compact sorted JSON)


def label_key(labels: dict[str, str]) -> str:
    """The one spelling of a set of labels, as stored."""
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def bucket_label(upper: float) -> str:
    """A bucket's `le`, spelled as Prometheus spells it (`0.5`, `10.0`, `+Inf`)."""
    return "+Inf" if math.isinf(upper) else repr(float(upper))


class Tally:
    """A process's counts since its last flush; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deltas: dict[Key, float] = {}

    def add(self, sample: str, labels: dict[str, str], value: float = 1.0) -> None:
        key = (sample, label_key(labels))
        with self._lock:
            self._deltas[key] = self._deltas.get(key, 0.0) + value

    def drain(self) -> dict[Key, float]:
        """Everything counted since the last drain; the tally starts again from nothing."""
        with self._lock:
            deltas, self._deltas = self._deltas, {}
        return deltas

    def restore(self, deltas: dict[Key, float]) -> None:
        """Put back counts a flush could not write, to go with the next one."""
        with self._lock:
            for key, value in deltas.items():
                self._deltas[key] = self._deltas.get(key, 0.0) + value

    def pending(self) -> bool:
        with self._lock:
            return bool(self._deltas)


# The process's own tally: every thread of a process counts into it.
TALLY: Final = Tally()


def cobalt_call(operation: str, answer: str, seconds: float, tally: Tally = TALLY) -> None:
    """Count one call to Cobalt and how long it took."""
    tally.add(COBALT_CALLS.name + "_total", {"operation": operation, "answer": answer})
    name, labels = COBALT_DURATION.name, {"operation": operation}
    for upper in DURATION_BUCKETS:
        if seconds <= upper:
            tally.add(name + "_bucket", {**labels, "le": bucket_label(upper)})
    tally.add(name + "_count", labels)
    tally.add(name + "_sum", labels, seconds)


def reconcile_lookup(result: str, tally: Tally = TALLY) -> None:
    """Count one lookup in Cobalt's log: `applied`, `nothing_applied` or `failed`."""
    tally.add(RECONCILE_LOOKUPS.name + "_total", {"result": result})


def phi_purged(jobs: int, tally: Tally = TALLY) -> None:
    """Count jobs whose PHI was just erased."""
    if jobs:
        tally.add(PHI_PURGES.name + "_total", {}, float(jobs))
