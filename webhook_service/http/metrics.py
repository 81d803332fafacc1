"""`GET /metrics`: the service's metrics in Prometheus's text format, for a `metrics` (or
`support`) bearer token.

Any web process answers for the whole service: the gauges are read from the database at
scrape time and the counters are the totals every process flushed there
(`services.metrics`). A support request that called Cobalt flushes this process's counts
before it answers; the hot paths (submissions, polls, webhooks) count nothing and write
nothing for the metrics.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from flask import Blueprint, Response, request
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from webhook_service import metrics
from webhook_service.http.auth import require
from webhook_service.http.context import read_connection, sessions, utcnow
from webhook_service.services import metrics as shared
from webhook_service.services.metrics import Snapshot

bp = Blueprint("metrics", __name__)

# The blueprints whose requests may call Cobalt (a staff-requested reconcile): their counts
# are flushed when they answer. No other request counts anything.
FLUSHED_AFTER: tuple[str, ...] = ("support", "console")
P = metrics.PREFIX


@bp.get("/metrics")
@require("metrics", "support")
def scrape() -> Response:
    with read_connection() as connection:
        snap = shared.snapshot(connection, utcnow())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected(snap))
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = Response(encode(registry), content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.after_app_request
def flush_counts(response: Response) -> Response:
    """A support request that called Cobalt leaves counts behind: write them now."""
    if request.blueprint in FLUSHED_AFTER and metrics.TALLY.pending():
        shared.Flusher(sessions(), utcnow).flush_quietly()
    return response


class _Collected(Collector):
    """One scrape's snapshot as Prometheus metric families."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        snap = self.snap
        yield _gauge(
            "jobs_processing",
            "Open jobs (status processing), by submission state.",
            "submission_state",
            snap.processing,
        )
        yield GaugeMetricFamily(
            P + "oldest_processing_job_age_seconds",
            "Age of the oldest open job (0 when none is open).",
            value=snap.oldest_processing_seconds,
        )
        yield GaugeMetricFamily(
            P + "jobs_waiting_to_send",
            "Jobs waiting to be sent to Cobalt (pending, waiting their turn, retrying).",
            value=snap.waiting_to_send,
        )
        yield _gauge(
            "jobs_needing_attention",
            "Open jobs a person must look at (support's inbox), by attention code.",
            "code",
            snap.attention,
        )
        yield _gauge(
            "jobs_finished_last_hour",
            "Jobs that settled in the last hour, by status.",
            "status",
            snap.finished_recently,
        )
        yield _gauge(
            "webhook_deliveries_last_hour",
            "Webhook deliveries received in the last hour, by the state they are in now.",
            "state",
            snap.deliveries_recently,
        )
        yield _gauge(
            "webhook_deliveries_in_inbox",
            "Webhook deliveries that need a person (support's inbox), by state.",
            "state",
            snap.inbox,
        )
        worker = snap.worker
        if worker.seconds_since is not None:
            yield GaugeMetricFamily(
                P + "worker_heartbeat_age_seconds",
                "Seconds since the newest heartbeat of any worker process (absent: none ever).",
                value=worker.seconds_since,
            )
        yield GaugeMetricFamily(
            P + "workers_live",
            "Worker processes seen within the last "
            f"{int(worker.silent_after.total_seconds())} seconds.",
            value=worker.live,
        )
        yield from _counted(snap.counters)


def _gauge(name: str, help_text: str, label: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(P + name, help_text, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _counted(totals: dict[metrics.Key, float]) -> Iterator[Metric]:
    """The flushed totals, family by family, with the labels each declares."""
    by_sample: dict[str, list[tuple[dict[str, str], float]]] = {}
    for (sample, spelled), value in totals.items():
        by_sample.setdefault(sample, []).append((json.loads(spelled), value))
    for family in metrics.FAMILIES:
        if family.kind == "counter":
            counter = CounterMetricFamily(family.name, family.help, labels=list(family.labels))
            samples = by_sample.get(family.name + "_total", [])
            if not family.labels and not samples:
                samples = [({}, 0.0)]
            for found, value in sorted(samples, key=lambda s: sorted(s[0].items())):
                counter.add_metric([found.get(name, "") for name in family.labels], value)
            yield counter
        else:
            yield _histogram(family, by_sample)


def _histogram(
    family: metrics.Family, by_sample: dict[str, list[tuple[dict[str, str], float]]]
) -> HistogramMetricFamily:
    histogram = HistogramMetricFamily(family.name, family.help, labels=list(family.labels))
    series: dict[tuple[str, ...], dict[str, float]] = {}
    for suffix in ("_bucket", "_count", "_sum"):
        for labels, value in by_sample.get(family.name + suffix, []):
            key = tuple(labels.get(label, "") for label in family.labels)
            part = labels.get("le", "") if suffix == "_bucket" else suffix
            series.setdefault(key, {})[part] = value
    for key, values in sorted(series.items()):
        buckets = [
            (metrics.bucket_label(upper), values.get(metrics.bucket_label(upper), 0.0))
            for upper in metrics.DURATION_BUCKETS
        ]
        histogram.add_metric(list(key), buckets, sum_value=values.get("_sum", 0.0))
    return histogram
