"""What the server counts and times, for Prometheus and (optionally) statsd.

One `Events` object receives every event; the rest of the code never talks
to a metrics library. Prometheus metrics live in a registry of their own, so
tests (and two servers in one process) never share counters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from imageserver import __version__

#: Seconds; from a cached hit (well under 1 ms) to a 12-megapixel AVIF (seconds).
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Statsd(Protocol):
    """Where statsd lines go; sending must never block or raise."""

    def send(self, line: str) -> None: ...


@dataclass(frozen=True)
class PoolStats:
    name: str
    size: Callable[[], int]
    busy: Callable[[], int]
    queued: Callable[[], int]


#: A pool's name, threads, busy threads and queued jobs, read at one time.
PoolReading = tuple[str, int, int, int]


class PoolCollector(Collector):
    """Reads the thread pools at scrape time, so nothing is updated per job.

    ``readings`` gives each pool's; a supervisor's sums its workers' (see
    `host_metrics`).
    """

    def __init__(self, readings: Callable[[], Iterable[PoolReading]]) -> None:
        self._readings = readings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        readings = list(self._readings())
        for column, (name, doc) in enumerate(
            (
                ("imageserver_pool_workers", "Threads in the pool."),
                ("imageserver_pool_busy_workers", "Threads running a job."),
                ("imageserver_pool_queued_jobs", "Jobs waiting for a thread."),
            ),
            start=1,
        ):
            family = GaugeMetricFamily(name, doc, labels=["pool"])
            for pool, *values in readings:
                family.add_metric([pool], values[column - 1])
            yield family


def host_metrics(
    registry: CollectorRegistry, pools: Callable[[], Iterable[PoolReading]]
) -> None:
    """What a process reports beyond the values each worker writes to files
    (which `workers.WorkerMetrics` sums): its version and its pools. A single
    process and a supervisor both report them through this."""
    Info("imageserver_build", "Version of the server.", registry=registry).info(
        {"version": __version__}
    )
    registry.register(PoolCollector(pools))


class Events:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        statsd: Statsd | None = None,
        statsd_prefix: str = "image_server.",
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self._statsd = statsd
        self._prefix = statsd_prefix
        r = self.registry
        self._pools: list[PoolStats] = []
        host_metrics(r, self.pool_readings)
        self.requests = Counter(
            "imageserver_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "imageserver_http_request_duration_seconds",
            "Time from a request's arrival to its last byte, by route.",
            ["route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "imageserver_http_requests_in_flight",
            "Requests received and not yet answered.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.variants = Counter(
            "imageserver_variants",
            "Variant requests by format and outcome (generated, cached, failed).",
            ["format", "outcome"],
            registry=r,
        )
        self.originals = Counter(
            "imageserver_originals",
            "Originals by outcome: stored, downloaded (from a source URL), "
            "unavailable (the source failed).",
            ["outcome"],
            registry=r,
        )
        self.source_seconds = Histogram(
            "imageserver_source_fetch_duration_seconds",
            "Time to download a source URL, successful or not.",
            buckets=_BUCKETS,
            registry=r,
        )
        self.source_bytes = Counter(
            "imageserver_source_fetch_bytes",
            "Bytes downloaded from source URLs.",
            registry=r,
        )
        self.processing_seconds = Histogram(
            "imageserver_processing_duration_seconds",
            "Time a processing job takes in its thread (decode, resize, encode).",
            buckets=_BUCKETS,
            registry=r,
        )
        self.storage = Counter(
            "imageserver_storage_operations",
            "Storage calls by backend, operation and outcome (ok, error).",
            ["backend", "operation", "outcome"],
            registry=r,
        )
        self.storage_seconds = Histogram(
            "imageserver_storage_operation_duration_seconds",
            "Storage call latency by backend and operation.",
            ["backend", "operation"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.deletes = Counter(
            "imageserver_deletes",
            "Deletes done, by what went: image (a purge of everything in its "
            "folder), variant or file.",
            ["what"],
            registry=r,
        )
        self.origins = Counter(
            "imageserver_origin_checks",
            "Paths asked of an origin (--origin), by namespace and outcome: "
            "fetched (a new path's bytes stored), changed (a stored path's "
            "new bytes stored), not_modified (the stored bytes stand), "
            "missing (no such object), error (the origin failed; what was "
            "stored is served).",
            ["namespace", "outcome"],
            registry=r,
        )
        self.origin_stale = Counter(
            "imageserver_origin_stale_serves",
            "Requests for a path of an origin answered from what is stored "
            "although it is past --origin_ttl, by namespace and why: "
            "revalidating (the origin is being asked, in the background), "
            "origin_failing (the origin failed lately: stale-if-error).",
            ["namespace", "why"],
            registry=r,
        )
        self.rate_limited = Counter(
            "imageserver_rate_limited",
            "Requests refused (429) by a rate limit, by kind: render (a "
            "namespace's variants not made yet), upload (a namespace's "
            "uploads), write (a write token's writes).",
            ["kind"],
            registry=r,
        )
        self.quota_refused = Counter(
            "imageserver_quota_refused",
            "Writes refused (507) because their namespace stores its "
            "--namespace_quota_bytes.",
            registry=r,
        )
        self.namespace_bytes = Gauge(
            "imageserver_namespace_stored_bytes",
            "Bytes a namespace stores, as last counted plus what was stored "
            "since (with --namespace_quota_bytes; the namespaces written to "
            "lately).",
            ["namespace"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.webhooks = Counter(
            "imageserver_webhook_events",
            "Webhook event deliveries by outcome: delivered, retried, dropped "
            "(the receiver's queue was full), expired (failed for longer than "
            "--webhook_retry_seconds).",
            ["outcome"],
            registry=r,
        )
        self.webhooks_pending = Gauge(
            "imageserver_webhook_events_pending",
            "Webhook events queued or in flight, over all receivers.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.background = Counter(
            "imageserver_background_writes",
            "Writes landing after their response, by queue (behind: variants "
            "served before they were stored; bucket: uploads of the local "
            "cache to the remote store) and outcome (written, retried, "
            "failed, cancelled).",
            ["queue", "outcome"],
            registry=r,
        )
        self.background_pending = Gauge(
            "imageserver_background_writes_pending",
            "Writes on their way, by queue.",
            ["queue"],
            multiprocess_mode="livesum",
            registry=r,
        )
        # process_resident_memory_bytes, process_cpu_seconds_total,
        # process_open_fds, ...: read from /proc at scrape time.
        ProcessCollector(registry=r)

    def watch_pool(self, stats: PoolStats) -> None:
        self._pools.append(stats)

    def pool_readings(self) -> list[PoolReading]:
        return [(p.name, p.size(), p.busy(), p.queued()) for p in self._pools]

    # -- events --------------------------------------------------------------

    def request_started(self) -> None:
        self.in_flight.inc()

    def request_finished(
        self, route: str, method: str, status: int, seconds: float
    ) -> None:
        self.in_flight.dec()
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)
        self._timing(f"{route}.request_latency", seconds)

    def variant(self, fmt: str, outcome: str) -> None:
        """A variant request: ``generated``, ``cached`` or ``failed``."""
        self.variants.labels(fmt, outcome).inc()
        self._count("image_request")
        self._count(f"image_request.{fmt}")
        if outcome == "failed":
            self._count("image_request_fail")

    def original_stored(self) -> None:
        self.originals.labels("stored").inc()

    def source_fetched(self, seconds: float, size: int | None) -> None:
        """A source URL download: ``size`` bytes, or None when it failed."""
        self.source_seconds.observe(seconds)
        if size is None:
            self.originals.labels("unavailable").inc()
            self._count("original_unavailable")
        else:
            self.originals.labels("downloaded").inc()
            self.source_bytes.inc(size)
            self._count("original_downloaded")

    def processed(self, seconds: float) -> None:
        self.processing_seconds.observe(seconds)
        self._timing("processing_time", seconds)

    def storage_call(
        self, backend: str, operation: str, seconds: float, ok: bool
    ) -> None:
        self.storage.labels(backend, operation, "ok" if ok else "error").inc()
        self.storage_seconds.labels(backend, operation).observe(seconds)

    def origin(self, namespace: str, outcome: str) -> None:
        """An origin asked about a path: see `origins`' outcomes."""
        self.origins.labels(namespace, outcome).inc()
        self._count(f"origin_{outcome}")

    def refused_by_rate(self, kind: str) -> None:
        """A request past a rate limit: see `rate_limited`."""
        self.rate_limited.labels(kind).inc()
        self._count(f"rate_limited_{kind}")

    def refused_by_quota(self) -> None:
        """A write past its namespace's quota: see `quota_refused`."""
        self.quota_refused.inc()
        self._count("quota_refused")

    def namespace_stored(self, namespace: str, stored: int | None) -> None:
        """What ``namespace`` stores now; None: no longer followed."""
        if stored is None:
            with contextlib.suppress(KeyError):
                self.namespace_bytes.remove(namespace)
        else:
            self.namespace_bytes.labels(namespace).set(stored)

    def origin_stale_served(self, namespace: str, why: str) -> None:
        """A path past its TTL served as stored: see `origin_stale`."""
        self.origin_stale.labels(namespace, why).inc()
        self._count(f"origin_stale_{why}")

    def deleted(self, what: str) -> None:
        """An ``image`` purged, or one ``variant`` or ``file`` deleted."""
        self.deletes.labels(what).inc()

    def webhook_done(self, outcome: str, pending: int) -> None:
        self.webhooks.labels(outcome).inc()
        self.webhooks_pending.set(pending)

    def webhook_pending(self, pending: int) -> None:
        self.webhooks_pending.set(pending)

    def background_queued(self, queue: str, pending: int) -> None:
        self.background_pending.labels(queue).set(pending)

    def background_done(self, queue: str, outcome: str, pending: int) -> None:
        """A background write ``written``, ``retried``, ``failed`` or ``cancelled``."""
        self.background.labels(queue, outcome).inc()
        self.background_pending.labels(queue).set(pending)

    # -- statsd --------------------------------------------------------------

    def _count(self, name: str) -> None:
        if self._statsd is not None:
            self._statsd.send(f"{self._prefix}{name}:1|c")

    def _timing(self, name: str, seconds: float) -> None:
        if self._statsd is not None:
            self._statsd.send(f"{self._prefix}{name}:{seconds * 1000:.3f}|ms")
