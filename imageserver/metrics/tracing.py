"""Tracing: OpenTelemetry spans for a request and its stages, when asked.

Off (no ``--otlp_endpoint``, the default), each function here checks one
module global and returns: OpenTelemetry is not even imported, so the
cached path costs what it cost before (benchmarks/delivery.py measures it).
On, `Tracing` installs a tracer for this process (each worker has its
own), spans follow the work through `contextvars` (a request's coroutines
copy the context they start in; `in_thread` carries it into a pool's
thread), and a batch processor exports them with OTLP over HTTP from a
thread of its own. Span names and attributes: docs/operations.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

log = Logger()

T = TypeVar("T")
Attributes = Mapping[str, str | int | float | bool]

#: The W3C Trace Context header read from requests and sent on calls out.
#: ``tracestate`` is neither: it is a caller's vendors' opaque data (up to
#: kilobytes), which sources, origins and webhooks should not be handed.
TRACE_HEADERS = ("traceparent",)

_tracer: Any = None  # an opentelemetry Tracer while a Tracing service runs
_propagator: Any = None
_current_span: Any = None  # opentelemetry's get_current_span, while on
_NOTHING: contextlib.nullcontext[None] = contextlib.nullcontext()
#: Where an OTLP/HTTP collector takes traces.
TRACES_PATH = "/v1/traces"
#: How long an export may take, and a stop waits for the last spans.
FLUSH_SECONDS = 5.0


def enabled() -> bool:
    return _tracer is not None


def span(
    name: str, attributes: Attributes | None = None
) -> contextlib.AbstractContextManager[Any]:
    """A span named ``name``, current while the ``with`` block runs, a
    child of the current one; nothing when tracing is off or outside any
    request's trace (background work, such as the purge log's polls, would
    otherwise start a trace of its own every few seconds)."""
    if _tracer is None:
        return _NOTHING
    if not _current_span().get_span_context().is_valid:
        return _NOTHING
    return _tracer.start_as_current_span(name, attributes=attributes)


def in_thread(f: Callable[..., T]) -> Callable[..., T]:
    """``f``, to run in another thread in a copy of the caller's context (so
    its spans are children of the caller's); ``f`` itself when off."""
    if _tracer is None:
        return f
    return partial(contextvars.copy_context().run, f)


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's ``traceparent`` to the headers of a call out;
    nothing when off or outside any span."""
    if _propagator is not None:
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        headers.update((k, v) for k, v in carrier.items() if k in TRACE_HEADERS)


def start_request(
    method: str, headers: Callable[[str], Sequence[str] | None]
) -> Any:  # an opentelemetry Span, or None
    """The span of a request that has just arrived (a server span, child of
    the caller's ``traceparent`` when it sent one, and only one: W3C Trace
    Context makes several invalid), not yet current: see `run_in`.
    ``headers`` gives a header's values. None when off."""
    if _tracer is None:
        return None
    from opentelemetry.trace import SpanKind

    carrier = {}
    for name in TRACE_HEADERS:
        values = headers(name) or []
        if len(values) == 1:
            carrier[name] = values[0]
    parent = _propagator.extract(carrier) if carrier else None
    return _tracer.start_span(method, context=parent, kind=SpanKind.SERVER)


def run_in(request_span: Any, f: Callable[[], T]) -> T:
    """``f()`` in a copy of the context where ``request_span`` is current: the
    coroutines it starts copy that context, and their spans are its children."""
    from opentelemetry import context, trace

    def current() -> T:
        context.attach(trace.set_span_in_context(request_span))
        return f()

    return contextvars.copy_context().run(current)


def end_request(
    request_span: Any, method: str, route: str, status: int, path: str
) -> None:
    """Name the request's span by its route (known once routed) and end it."""
    from opentelemetry.trace import Status, StatusCode

    request_span.update_name(f"{method} {route}")
    request_span.set_attributes(
        {
            "http.request.method": method,
            "http.route": route,
            "url.path": path,
            "http.response.status_code": status,
        }
    )
    if status >= 500:
        request_span.set_status(Status(StatusCode.ERROR))
    request_span.end()


def _shown(endpoint: str) -> str:
    """``endpoint`` for the log: without a password it may hold."""
    parts = urlsplit(endpoint)
    if parts.password is None:
        return endpoint
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


@contextlib.contextmanager
def _installed(tracer: Any, propagator: Any) -> Iterator[None]:
    global _tracer, _propagator, _current_span
    from opentelemetry import trace

    _tracer, _propagator = tracer, propagator
    _current_span = trace.get_current_span  # looked up once, not per span
    try:
        yield
    finally:
        _tracer = _propagator = None


class Tracing(Service):
    """Exports this process's spans to ``endpoint`` (an OTLP/HTTP traces URL)
    while it runs; at stop, what is left is flushed within ``flush_seconds``
    (each export gives up after that long too): a collector that never
    answers delays a stop by that much, no more.

    The exporter's own environment variables (``OTEL_EXPORTER_OTLP_HEADERS``,
    ``OTEL_BSP_SCHEDULE_DELAY``...) apply; a receiver that is down loses
    spans (logged by the exporter), never requests. ``exporter`` replaces
    the OTLP one (tests keep the spans in memory).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        service_name: str,
        sample_ratio: float,
        version: str,
        worker: int | None,
        flush_seconds: float = FLUSH_SECONDS,
        exporter: Any = None,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._endpoint = endpoint
        self._service_name = service_name
        self._sample_ratio = sample_ratio
        self._version = version
        self._worker = worker
        self._flush_seconds = flush_seconds
        self._exporter = exporter
        self._provider: Any = None
        self._installed: contextlib.ExitStack | None = None

    def startService(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )

        super().startService()
        if self._exporter is None:
            log.info("exporting traces to {endpoint}", endpoint=_shown(self._endpoint))
            if urlsplit(self._endpoint).path != TRACES_PATH:
                log.warn(
                    "--otlp_endpoint {endpoint} does not end in {path}: spans "
                    "are posted to that URL as given (a collector takes them "
                    "at {path})",
                    endpoint=_shown(self._endpoint),
                    path=TRACES_PATH,
                )
        attributes: dict[str, str | int] = {
            "service.name": self._service_name,
            "service.version": self._version,
            "process.pid": os.getpid(),
        }
        if self._worker is not None:
            attributes["imageserver.worker"] = self._worker
        self._provider = TracerProvider(
            resource=Resource.create(attributes),
            sampler=ParentBased(TraceIdRatioBased(self._sample_ratio)),
            shutdown_on_exit=False,  # stopService flushes, within its bound
        )
        self._provider.add_span_processor(
            BatchSpanProcessor(
                self._exporter
                or OTLPSpanExporter(
                    endpoint=self._endpoint, timeout=self._flush_seconds
                )
            )
        )
        self._installed = contextlib.ExitStack()
        self._installed.enter_context(
            _installed(
                self._provider.get_tracer("imageserver", self._version),
                TraceContextTextMapPropagator(),
            )
        )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._installed is None:
            return None
        self._installed.close()
        self._installed = None
        provider, self._provider = self._provider, None
        millis = int(self._flush_seconds * 1000)
        done: Deferred[None] = Deferred()

        def finished() -> None:
            if not done.called:
                done.callback(None)

        def flush() -> None:  # blocks on the network: not on the reactor
            try:
                provider.force_flush(millis)
                provider.shutdown()
            except Exception:
                log.failure("flushing the spans failed")
            finally:
                self._reactor.callFromThread(finished)

        # A thread of its own, not the reactor's pool (whose stop would wait
        # for it): past the bound the stop goes on and the thread is left.
        threading.Thread(target=flush, name="span flush", daemon=True).start()
        timer = self._reactor.callLater(self._flush_seconds, finished)
        done.addBoth(lambda result: timer.cancel() if timer.active() else None)
        return done
