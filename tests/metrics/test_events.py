"""Metrics and statsd events from real requests, read back as scrapers see them."""

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.static import Data

from imageserver.metrics.events import Events, PoolStats
from imageserver.metrics.statsd import StatsdClient
from tests.support import AppHarness, encode, quadrants, sample

PHOTO = encode(quadrants((400, 300)))


class ImageEventsTests(SynchronousTestCase):
    def setUp(self) -> None:
        sources = Resource()
        sources.putChild(b"photo.jpg", Data(PHOTO, "image/jpeg"))
        self.app = AppHarness(self, sources=sources)
        self.events = self.app.events

    def variants(self, fmt: str, outcome: str) -> float:
        return sample(
            self.events, "imageserver_variants_total", format=fmt, outcome=outcome
        )

    def test_variant_generated_then_cached(self) -> None:
        folder = self.app.upload(PHOTO)
        self.app.request("GET", f"{folder}/w100.webp")
        self.assertEqual(self.variants("webp", "generated"), 1)
        self.assertEqual(self.variants("webp", "cached"), 0)
        self.app.request("GET", f"{folder}/w100.webp")
        self.app.request("GET", f"{folder}/w100.webp")
        self.assertEqual(self.variants("webp", "generated"), 1)
        self.assertEqual(self.variants("webp", "cached"), 2)

    def test_failed_variant(self) -> None:
        folder = self.app.upload(PHOTO)
        with open(f"{self.app.root}{folder}/original", "wb") as f:
            f.write(b"damaged")
        self.app.request("GET", f"{folder}/w100.jpg")
        self.assertEqual(self.variants("jpg", "failed"), 1)

    def test_refused_variant_names_are_failed_variant_requests(self) -> None:
        folder = self.app.upload(PHOTO)
        for name, status in (("w0.jpg", 400), ("w5000.jpg", 400), ("w20.bmp", 404),
                             ("w20.tiff", 404)):  # fmt: skip
            self.assertEqual(self.app.request("GET", f"{folder}/{name}")[0].code,
                             status)  # fmt: skip
        self.assertEqual(self.variants("jpg", "failed"), 2)
        # Unknown extensions share one label: clients cannot add label values.
        self.assertEqual(self.variants("other", "failed"), 2)

    def test_process_metrics(self) -> None:
        for name in ("process_resident_memory_bytes", "process_open_fds",
                     "process_cpu_seconds_total"):  # fmt: skip
            self.assertGreater(sample(self.events, name), 0, name)

    def test_originals_stored_downloaded_unavailable(self) -> None:
        self.app.upload(PHOTO)
        self.app.json("POST", "/q?source=http://source/photo.jpg")
        self.app.json("POST", "/q?source=http://source/missing.jpg")
        count = {
            outcome: sample(self.events, "imageserver_originals_total", outcome=outcome)
            for outcome in ("stored", "downloaded", "unavailable")
        }
        self.assertEqual(count, {"stored": 2, "downloaded": 1, "unavailable": 1})
        self.assertEqual(
            sample(self.events, "imageserver_source_fetch_bytes_total"), len(PHOTO)
        )
        self.assertEqual(
            sample(self.events, "imageserver_source_fetch_duration_seconds_count"), 2
        )

    def test_processing_is_timed_once_per_decode(self) -> None:
        self.app.upload(PHOTO, query="?outputs=x10.jpg,x20.jpg,x30.png")
        self.assertEqual(
            sample(self.events, "imageserver_processing_duration_seconds_count"), 1
        )

    def test_storage_calls_are_counted(self) -> None:
        folder = self.app.upload(PHOTO)
        before = sample(self.events, "imageserver_storage_operations_total",
                        backend="local", operation="get", outcome="ok")  # fmt: skip
        self.app.request("GET", f"{folder}/info.json")
        after = sample(self.events, "imageserver_storage_operations_total",
                       backend="local", operation="get", outcome="ok")  # fmt: skip
        self.assertEqual(after - before, 1)
        self.assertGreater(
            sample(self.events, "imageserver_storage_operation_duration_seconds_count",
                   backend="local", operation="put"), 0
        )  # fmt: skip


class PoolMetricsTests(SynchronousTestCase):
    def test_pools_are_read_at_scrape_time(self) -> None:
        events = Events()
        load = {"busy": 1, "queued": 5}
        events.watch_pool(
            PoolStats("imageserver-processing", lambda: 2, lambda: load["busy"],
                      lambda: load["queued"])
        )  # fmt: skip
        labels = {"pool": "imageserver-processing"}
        self.assertEqual(sample(events, "imageserver_pool_queued_jobs", **labels), 5)
        load["queued"] = 0
        self.assertEqual(sample(events, "imageserver_pool_queued_jobs", **labels), 0)
        self.assertEqual(sample(events, "imageserver_pool_busy_workers", **labels), 1)
        self.assertEqual(sample(events, "imageserver_pool_workers", **labels), 2)


class Listener(DatagramProtocol):
    """A statsd daemon: collects every datagram it receives."""

    def __init__(self, expected: int) -> None:
        self.lines: list[str] = []
        self.expected = expected
        self.done: Deferred[list[str]] = Deferred()

    def datagramReceived(self, datagram: bytes, addr: object) -> None:
        self.lines.append(datagram.decode())
        if len(self.lines) == self.expected:
            self.done.callback(self.lines)


class StatsdTests(TestCase):
    """Over a real UDP socket on loopback."""

    async def client_for(self, listener: Listener) -> StatsdClient:
        self.port = reactor.listenUDP(0, listener, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        client = StatsdClient(reactor, "127.0.0.1", self.port.getHost().port)
        client.startService()
        self.addCleanup(client.stopService)
        await client.opened
        return client

    async def test_seed_event_names_and_types(self) -> None:
        listener = Listener(expected=5)
        events = Events(statsd=await self.client_for(listener))
        events.variant("webp", "generated")
        events.variant("gif", "failed")
        self.assertEqual(
            await listener.done,
            [
                "image_server.image_request:1|c",
                "image_server.image_request.webp:1|c",
                "image_server.image_request:1|c",
                "image_server.image_request.gif:1|c",
                "image_server.image_request_fail:1|c",
            ],
        )

    async def test_timers_and_originals(self) -> None:
        listener = Listener(expected=4)
        events = Events(statsd=await self.client_for(listener), statsd_prefix="img.")
        events.source_fetched(0.25, 1000)
        events.source_fetched(0.5, None)
        events.processed(0.0125)
        events.request_started()
        events.request_finished("variant", "GET", 200, 0.002)
        self.assertEqual(
            await listener.done,
            [
                "img.original_downloaded:1|c",
                "img.original_unavailable:1|c",
                "img.processing_time:12.500|ms",
                "img.variant.request_latency:2.000|ms",
            ],
        )

    async def test_no_daemon_never_fails_a_caller(self) -> None:
        client = await self.client_for(Listener(expected=1))
        await self.port.stopListening()  # the daemon goes away
        events = Events(statsd=client)
        for _ in range(50):
            events.variant("jpg", "cached")  # raises nothing
        self.assertEqual(
            sample(
                events, "imageserver_variants_total", format="jpg", outcome="cached"
            ),
            50,
        )

    async def test_host_names_are_resolved(self) -> None:
        listener = Listener(expected=1)
        port = reactor.listenUDP(0, listener, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = StatsdClient(reactor, "localhost", port.getHost().port)
        client.startService()
        self.addCleanup(client.stopService)
        await client.opened
        client.send("x:1|c")
        self.assertEqual(await listener.done, ["x:1|c"])
