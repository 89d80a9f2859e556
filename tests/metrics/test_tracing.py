"""Tracing against a real OTLP/HTTP receiver: real twistd processes export
their spans to a receiver this test runs, which decodes the protobufs with
the OpenTelemetry proto package; the span trees of an upload, a cold variant
and a cached hit are checked, on two workers, with the trace sent on to a
source and a webhook."""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from imageserver.metrics import tracing
from imageserver.runtime.pools import ThreadPoolService
from imageserver.storage.s3 import S3Storage, make_client
from tests import CHECKOUT_DIR, s3server
from tests.lifecycle.test_webhooks import SECRET
from tests.s3server import free_port
from tests.support import encode, quadrants, serve, synchronous
from tests.test_twistd import TwistdCase


@dataclass
class Span:
    trace: str
    id: str
    parent: str
    name: str
    attributes: dict[str, Any]
    process: dict[str, Any]
    children: list[Span] = field(default_factory=list)

    def shape(self) -> tuple[Any, ...]:
        """The names of the tree under this span, children in name order."""
        return (self.name, tuple(sorted(c.shape() for c in self.children)))


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver(Resource):
    """An OTLP/HTTP traces endpoint: keeps every span it is sent."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[Span] = []
        self.content_types: set[str] = set()

    def render_POST(self, request: Any) -> bytes:
        self.content_types.add(request.getHeader("content-type"))
        exported = ExportTraceServiceRequest.FromString(request.content.read())
        for resource_spans in exported.resource_spans:
            process = {
                a.key: _value(a.value) for a in resource_spans.resource.attributes
            }
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    self.spans.append(
                        Span(
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            s.name,
                            {a.key: _value(a.value) for a in s.attributes},
                            process,
                        )
                    )
        request.setHeader("content-type", "application/x-protobuf")
        return b""

    def trees(self, trace: str) -> list[Span]:
        """The spans of ``trace`` as trees: the roots (spans whose parent was
        not exported here)."""
        spans = [s for s in self.spans if s.trace == trace]
        by_id = {s.id: s for s in spans}
        for s in spans:
            s.children = []
        roots = []
        for s in spans:
            if s.parent in by_id:
                by_id[s.parent].children.append(s)
            else:
                roots.append(s)
        return roots


class Recorder(Resource):
    """A source and a webhook receiver that note the traceparent they get."""

    isLeaf = True

    def __init__(self, photo: bytes) -> None:
        super().__init__()
        self.photo = photo
        self.traceparents: dict[bytes, list[str | None]] = defaultdict(list)
        self.tracestates: list[str] = []

    def note(self, request: Any) -> None:
        self.traceparents[request.path].append(request.getHeader("traceparent"))
        self.tracestates += request.requestHeaders.getRawHeaders("tracestate", [])

    def render_GET(self, request: Any) -> bytes:
        self.note(request)
        request.setHeader("content-type", "image/jpeg")
        return self.photo

    def render_POST(self, request: Any) -> bytes:
        self.note(request)
        return b"ok"


def traceparent() -> tuple[str, str, str]:
    trace, parent = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace}-{parent}-01", trace, parent


class TracingTests(TwistdCase):
    timeout = 90

    async def spans_of(self, receiver: Receiver, trace: str, names: set[str]) -> Span:
        """The one root of ``trace`` once spans named ``names`` all arrived."""
        for _ in range(400):
            if names <= {s.name for s in receiver.spans if s.trace == trace}:
                break
            await deferLater(reactor, 0.025)
        (root,) = receiver.trees(trace)
        return root

    async def test_span_trees_of_an_upload_a_cold_variant_and_a_cached_hit(
        self,
    ) -> None:
        receiver = Receiver()
        endpoint = f"{serve(self, receiver)}/v1/traces"
        photo = encode(quadrants((640, 480)))
        recorder = Recorder(photo)
        base = serve(self, recorder)
        await self.start_server(
            "--otlp_endpoint", endpoint, "--allow_private_sources",
            "--webhook", f"{base}/hook", "--webhook_secret", SECRET.decode(),
            workers=("--workers", "2"),
            env={"OTEL_BSP_SCHEDULE_DELAY": "50"},
        )  # fmt: skip
        await self.ready()

        # An upload by source URL, with the caller's trace (and a vendor's
        # tracestate, which is the caller's: not sent on).
        header, trace, parent = traceparent()
        response, body = await self.call(
            "POST",
            f"/p?outputs=w100.jpg&source={base}/photo.jpg",
            headers={"traceparent": [header], "tracestate": ["v=" + "x" * 4000]},
        )
        self.assertEqual(response.code, 200, body)
        digest = json.loads(body)["hash"]
        self.assertEqual(digest, hashlib.md5(photo).hexdigest())
        root = await self.spans_of(receiver, trace, {"POST upload", "encode"})
        self.assertEqual((root.parent, root.name), (parent, "POST upload"))
        self.assertEqual(root.attributes["http.response.status_code"], 200)
        self.assertEqual(root.attributes["http.route"], "upload")
        names = [c.name for c in root.children]
        self.assertIn("fetch", names)
        (process,) = [c for c in root.children if c.name == "process"]
        self.assertEqual(
            process.shape(),
            ("process", (("decode", ()), ("encode", ()), ("resize", ()))),
        )
        (resize,) = [c for c in process.children if c.name == "resize"]
        self.assertEqual(resize.attributes["imageserver.variant"], "w100.jpg")
        puts = {
            c.attributes["imageserver.key"].rpartition("/")[2]
            for c in root.children
            if c.name == "storage put"
        }
        self.assertLessEqual({"original", "w100.jpg", "info.json"}, puts)
        # The source was asked with a span of this trace as the parent.
        (sent,) = recorder.traceparents[b"/photo.jpg"]
        self.assertEqual(sent.split("-")[1], trace)
        fetch = next(c for c in root.children if c.name == "fetch")
        self.assertEqual(sent.split("-")[2], fetch.id)

        # The webhook's event carries the upload's trace too.
        for _ in range(200):
            if recorder.traceparents[b"/hook"]:
                break
            await deferLater(reactor, 0.025)
        (hooked,) = recorder.traceparents[b"/hook"]
        self.assertEqual(hooked.split("-")[1], trace)
        self.assertEqual(recorder.tracestates, [])

        folder = f"/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"
        # A cold variant.
        header, trace, parent = traceparent()
        response, _ = await self.call(
            "GET", f"{folder}/w50.jpg", headers={"traceparent": [header]}
        )
        self.assertEqual(response.code, 200)
        root = await self.spans_of(receiver, trace, {"GET variant", "encode"})
        self.assertEqual((root.parent, root.name), (parent, "GET variant"))
        names = sorted(c.name for c in root.children)
        self.assertIn("process", names)
        self.assertIn("storage put", names)
        (process,) = [c for c in root.children if c.name == "process"]
        self.assertEqual(
            process.shape(),
            ("process", (("decode", ()), ("encode", ()), ("resize", ()))),
        )

        # A cached hit: looked up, served, nothing made.
        header, trace, parent = traceparent()
        response, _ = await self.call(
            "GET", f"{folder}/w50.jpg", headers={"traceparent": [header]}
        )
        self.assertEqual(response.code, 200)
        root = await self.spans_of(receiver, trace, {"GET variant"})
        self.assertEqual(root.parent, parent)
        self.assertEqual({c.name for c in root.children}, {"storage get"})

        # Each worker exports its own spans, of the requests it served.
        traces = []
        for _ in range(16):
            header, trace, _ = traceparent()
            traces.append(trace)
            response, _ = await self.call(
                "GET", f"{folder}/info.json", headers={"traceparent": [header]}
            )
            self.assertEqual(response.code, 200)
        workers = set()
        for trace in traces:
            root = await self.spans_of(receiver, trace, {"GET info_json"})
            workers.add(root.process["imageserver.worker"])
        self.assertEqual(workers, {1, 2})
        self.assertEqual(receiver.content_types, {"application/x-protobuf"})

    async def test_spans_of_the_last_requests_are_sent_at_stop_and_sampled(
        self,
    ) -> None:
        """A stop flushes what the batch holds; with --otlp_sample_ratio 0 a
        request is traced only when its caller's traceparent samples it."""
        receiver = Receiver()
        process = await self.start_server(
            "--otlp_endpoint", f"{serve(self, receiver)}/v1/traces",
            "--otlp_sample_ratio", "0",
            env={"OTEL_BSP_SCHEDULE_DELAY": "600000"},
        )  # fmt: skip
        response, _ = await self.call("GET", "/status_check")
        self.assertEqual(response.code, 200)
        header, trace, parent = traceparent()
        unsampled = header[:-2] + "00"
        for sent in (header, unsampled):
            response, _ = await self.call(
                "GET", "/status_check", headers={"traceparent": [sent]}
            )
            self.assertEqual(response.code, 200)
        self.assertEqual(receiver.spans, [])
        process.transport.signalProcess("TERM")  # type: ignore[union-attr]
        self.assertEqual(await process.ended, 0)
        (root,) = receiver.trees(trace)  # the sampled one alone
        self.assertEqual((root.name, root.parent), ("GET status_check", parent))
        self.assertEqual([s.trace for s in receiver.spans], [trace])

    async def test_a_receiver_that_never_answers_delays_a_stop_by_the_bound(
        self,
    ) -> None:
        """Each export and the flush at stop give up after 5 seconds: a
        collector that takes connections and never answers holds a stop
        that long, not the exporter's retries' (20 s and more)."""
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        self.addCleanup(silent.close)
        process = await self.start_server(
            "--otlp_endpoint", f"http://127.0.0.1:{silent.getsockname()[1]}/v1/traces",
            env={"OTEL_BSP_SCHEDULE_DELAY": "600000"},
        )  # fmt: skip
        response, _ = await self.call("GET", "/status_check")
        self.assertEqual(response.code, 200)
        started = time.monotonic()
        process.transport.signalProcess("TERM")  # type: ignore[union-attr]
        self.assertEqual(await process.ended, 0)
        self.assertLess(time.monotonic() - started, 12)

    async def test_a_receiver_that_is_down_costs_no_request(self) -> None:
        await self.start_server(
            "--otlp_endpoint", f"http://127.0.0.1:{free_port()}/v1/traces",
            env={"OTEL_BSP_SCHEDULE_DELAY": "10"},
        )  # fmt: skip
        response, body = await self.call(
            "POST", "/p?outputs=w20.jpg", data=encode(quadrants((64, 48)))
        )
        self.assertEqual(response.code, 200, body)
        for _ in range(20):
            response, _ = await self.call("GET", "/status_check")
            self.assertEqual(response.code, 200)


class InProcessTests(TestCase):
    """The context follows the work into pool threads and onto S3 calls."""

    def setUp(self) -> None:
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        self.exported = InMemorySpanExporter()
        service = tracing.Tracing(
            "", service_name="t", sample_ratio=1.0, version="0", worker=None,
            exporter=self.exported,
        )  # fmt: skip
        service.startService()
        self.addCleanup(service.stopService)
        self.stop = service.stopService

    def root(self, name: str) -> Any:
        """A span with no parent, as a request's is (`tracing.span` makes
        only children)."""
        return tracing._tracer.start_as_current_span(name)

    async def spans(self) -> dict[str, Any]:
        await self.stop()
        return {s.name: s for s in self.exported.get_finished_spans()}

    async def test_a_pool_thread_works_in_the_span_of_its_caller(self) -> None:
        pool = ThreadPoolService(reactor, 2, "t")
        pool.startService()
        self.addCleanup(pool.stopService)

        def work() -> str:
            with tracing.span("inner"):
                return threading.current_thread().name

        with self.root("outer"):
            thread = await pool.run(work)
        self.assertNotEqual(thread, threading.current_thread().name)
        spans = await self.spans()
        self.assertEqual(spans["inner"].parent.span_id, spans["outer"].context.span_id)

    async def test_calls_to_s3_carry_the_traceparent(self) -> None:
        from tests.storage.test_s3 import settings_of

        server = s3server.shared()
        settings = settings_of(server.url, server.new_bucket())
        client = make_client(settings)
        sent: list[str | None] = []
        client.meta.events.register(
            "before-send.s3", lambda request, **_: sent.append(
                request.headers.get("traceparent"))
        )  # fmt: skip
        storage = S3Storage(settings, lambda: client, synchronous)
        with self.root("outer"):
            await storage.put("p/a/b", b"x", "text/plain")
            await storage.get("p/a/b")
        await storage.get("p/a/b")  # outside any span: nothing sent
        spans = await self.spans()
        context = spans["outer"].context
        flags = f"{context.trace_flags:02x}"
        expected = f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags}"
        self.assertEqual(sent, [expected, expected, None])

    async def test_the_endpoint_is_logged_and_a_path_not_for_traces_warned(
        self,
    ) -> None:
        await self.stop()
        for endpoint, warned in (("http://127.0.0.1:9/v1/traces", False),
                                 ("http://127.0.0.1:9/", True),
                                 ("http://127.0.0.1:9/v1/traces/", True)):  # fmt: skip
            service = tracing.Tracing(
                endpoint, service_name="t", sample_ratio=1.0, version="0",
                worker=None, flush_seconds=0.5,
            )  # fmt: skip
            with capturedLogs() as logged:
                service.startService()
            await service.stopService()
            texts = [formatEvent(e) for e in logged]
            self.assertIn(f"exporting traces to {endpoint}", texts)
            self.assertEqual(any("does not end in /v1/traces" in t for t in texts),
                             warned)  # fmt: skip
        # A collector's credentials in the URL are not logged.
        service = tracing.Tracing(
            "http://user:secret@127.0.0.1:9/v1/traces", service_name="t",
            sample_ratio=1.0, version="0", worker=None, flush_seconds=0.5,
        )  # fmt: skip
        with capturedLogs() as logged:
            service.startService()
        await service.stopService()
        texts = [formatEvent(e) for e in logged]
        shown = "exporting traces to http://user:***@127.0.0.1:9/v1/traces"
        self.assertIn(shown, texts)
        self.assertNotIn("secret", " ".join(texts))

    async def test_outside_a_request_nothing_is_traced(self) -> None:
        """Background work (the purge log's polls, quota counts) would start
        a trace every few seconds: only requests start traces."""
        with tracing.span("background"), tracing.span("inner"):
            headers: dict[str, str] = {}
            tracing.inject(headers)
        self.assertEqual(headers, {})
        self.assertEqual(await self.spans(), {})

    def test_several_traceparents_are_none(self) -> None:
        """W3C Trace Context: more than one traceparent makes it invalid; a
        new trace starts rather than the last header winning."""
        headers = {"traceparent": [traceparent()[0], traceparent()[0]]}
        request = tracing.start_request("GET", headers.get)
        request.end()
        self.assertIsNone(request.parent)
        one = {"traceparent": [headers["traceparent"][0]]}
        request = tracing.start_request("GET", one.get)
        request.end()
        self.assertEqual(
            f"{request.parent.trace_id:032x}", one["traceparent"][0].split("-")[1]
        )

    def test_only_traceparent_is_sent_on(self) -> None:
        header, trace, _ = traceparent()
        carrier = {"traceparent": [header], "tracestate": ["v=" + "x" * 4000]}
        request = tracing.start_request("GET", carrier.get)
        sent: dict[str, str] = {}
        tracing.run_in(request, lambda: tracing.inject(sent))
        request.end()
        self.assertEqual(list(sent), ["traceparent"])
        self.assertEqual(sent["traceparent"].split("-")[1], trace)

    async def test_off_it_does_nothing(self) -> None:
        await self.stop()
        self.assertFalse(tracing.enabled())
        self.assertIs(tracing.span("x"), tracing.span("y"))

        def f() -> None:
            pass

        self.assertIs(tracing.in_thread(f), f)
        headers: dict[str, str] = {}
        tracing.inject(headers)
        self.assertEqual(headers, {})
        self.assertIsNone(tracing.start_request("GET", lambda name: "00-" * 3))


class OffTests(SynchronousTestCase):
    def test_a_server_without_an_endpoint_never_imports_opentelemetry(self) -> None:
        script = (
            "import sys\n"
            "from imageserver.config import Config\n"
            "from imageserver.service import make_service\n"
            "make_service(Config(local_base_path=sys.argv[1]))\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, self.mktemp()],
            capture_output=True, text=True, check=True, cwd=CHECKOUT_DIR,
        )  # fmt: skip
        self.assertEqual(out.stdout.strip(), "[]")

    def test_an_endpoint_without_opentelemetry_installed_is_a_usage_error(
        self,
    ) -> None:
        """As on a server installed without the extra: the parent package is
        missing (find_spec raises for its modules rather than saying no)."""
        script = (
            "import sys\n"
            "sys.modules['opentelemetry'] = None\n"
            "from twisted.python import usage\n"
            "from imageserver.options import ServerOptions\n"
            "try:\n"
            "    ServerOptions().parseOptions(['--otlp_endpoint', sys.argv[1]])\n"
            "except usage.UsageError as e:\n"
            "    print(e)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, "http://127.0.0.1:4318/v1/traces"],
            capture_output=True, text=True, check=True, cwd=CHECKOUT_DIR,
        )  # fmt: skip
        self.assertEqual(
            out.stdout.strip(),
            "--otlp_endpoint needs OpenTelemetry: from the project's checkout, "
            "pip install '.[tracing]'",
        )
