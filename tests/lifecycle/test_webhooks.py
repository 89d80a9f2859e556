"""Webhooks delivered to a real HTTP receiver on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from imageserver.lifecycle.webhooks import SIGNATURE_HEADER, Webhooks
from imageserver.metrics.events import Events
from tests.support import AppHarness, encode, quadrants, sample

SECRET = b"webhook secret"
PHOTO = encode(quadrants((120, 90)))


class Receiver(Resource):
    """Records each event; answers ``status`` (or never, with ``hang``)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []
        self.status = 200
        self.hang = False
        self.hanging: list[Any] = []
        self.arrived: list[Deferred[None]] = []

    def render_POST(self, request: Any) -> bytes | int:
        body = request.content.read()
        given = request.getHeader(SIGNATURE_HEADER)
        expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        if self.hang:
            self.hanging.append(request)
            return NOT_DONE_YET
        request.setResponseCode(self.status)
        if self.status == 200:
            event = json.loads(body)
            event["signed"] = hmac.compare_digest(given or "", expected)
            event["header_type"] = request.getHeader("X-Imageserver-Event")
            self.events.append(event)
            waiting, self.arrived = self.arrived, []
            for d in waiting:
                d.callback(None)
        return b"ok"


class Endless:
    """A pull producer of body bytes for as long as the client reads them.

    It writes only when the connection asks for more, so bytes pile up in
    the client alone; it gives up after ``SAFETY`` bytes, so that a client
    that reads everything is caught without taking the machine down.
    """

    SAFETY = 64 * 2**20

    def __init__(self, request: Any) -> None:
        self.request = request
        self.sent = 0
        self.stopped = False

    def resumeProducing(self) -> None:
        if self.stopped:
            return
        if self.sent >= self.SAFETY:
            self.stopProducing()
            self.request.unregisterProducer()
            self.request.finish()
            return
        self.request.write(b"x" * 2**16)
        self.sent += 2**16

    def stopProducing(self) -> None:
        self.stopped = True


class Streaming(Receiver):
    """Takes each event and answers with a body that does not end."""

    def __init__(self) -> None:
        super().__init__()
        self.producers: list[Endless] = []

    def render_POST(self, request: Any) -> bytes | int:
        request.content.read()
        producer = Endless(request)
        self.producers.append(producer)
        request.registerProducer(producer, False)
        return NOT_DONE_YET


class Redirecting(Receiver):
    """Answers every event with a 303 to ``target`` (200 once it is None)."""

    def __init__(self, target: bytes) -> None:
        super().__init__()
        self.target: bytes | None = target
        self.posts = 0

    def render_POST(self, request: Any) -> bytes | int:
        self.posts += 1
        if self.target is None:
            return b"ok"
        request.setResponseCode(303)
        request.setHeader(b"Location", self.target)
        return b"see other"


class Recorder(Resource):
    """Where a redirect points: records every request of any method."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[bytes, Any]] = []

    def render(self, request: Any) -> bytes:
        self.requests.append((request.method, request.getHeader(SIGNATURE_HEADER)))
        return b"ok"


def rss() -> int:
    """This process's resident set size in bytes, now."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class WebhookTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.receiver = Receiver()
        self.port = reactor.listenTCP(0, Site(self.receiver), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/hook"

    def listen(self, resource: Resource) -> str:
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/hook"

    def hooks(self, **kwargs: Any) -> Webhooks:
        self.events = Events()
        settings: dict[str, Any] = {
            "max_queued": 100,
            "retry_seconds": 60,
            "shutdown_timeout": 5,
            "events": self.events,
            "retry": lambda attempt: 0.05,
        }
        settings.update(kwargs)
        urls = settings.pop("urls", [self.url])
        hooks = Webhooks(reactor, urls, SECRET, **settings)
        hooks.startService()
        self.addCleanup(hooks.stopService)
        return hooks

    async def until(self, done: Any, seconds: float = 10) -> None:
        for _ in range(int(seconds / 0.02)):
            if done():
                return
            await deferLater(reactor, 0.02)
        self.fail("not in time")

    def count(self, outcome: str) -> float:
        return sample(self.events, "imageserver_webhook_events_total", outcome=outcome)

    async def test_every_change_is_told_signed(self) -> None:
        hooks = self.hooks()
        app = AppHarness(self, lifecycle=hooks)
        folder = app.upload(PHOTO, query="?outputs=x20.jpg")
        app.request("GET", f"{folder}/w30.png")
        app.request("DELETE", f"{folder}/w30.png")
        app.request("DELETE", folder)
        await self.until(lambda: len(self.receiver.events) == 4)
        events = sorted(self.receiver.events, key=lambda e: e["time"])
        key = folder.lstrip("/")
        digest = hashlib.md5(PHOTO).hexdigest()
        self.assertEqual(
            [(e["type"], e["header_type"], e["signed"]) for e in events],
            [(t, t, True) for t in ("stored", "generated", "deleted", "purged")],
        )
        self.assertEqual(
            sorted(events[0]["keys"]),
            [f"{key}/info.json", f"{key}/original", f"{key}/x20.jpg"],
        )
        self.assertEqual(events[1]["keys"], [f"{key}/w30.png"])
        self.assertEqual(events[2]["keys"], [f"{key}/w30.png"])
        self.assertEqual(
            sorted(events[3]["keys"]),
            [f"{key}/info.json", f"{key}/original", f"{key}/x20.jpg"],
        )
        for event in events:
            self.assertEqual((event["namespace"], event["hash"]), ("p", digest))
        self.assertEqual(len({e["id"] for e in events}), 4)
        # Counted once the answer is back, a moment after the receiver has it.
        await self.until(lambda: self.count("delivered") == 4)

    async def test_a_receiver_that_comes_back_gets_what_it_missed(self) -> None:
        hooks = self.hooks()
        self.receiver.status = 503
        app = AppHarness(self, lifecycle=hooks)
        for size in (40, 50, 60):
            app.upload(encode(quadrants((size, 30))))
        await self.until(lambda: self.count("retried") >= 3)
        self.assertEqual(self.receiver.events, [])
        self.assertEqual(hooks.pending, 3)
        self.receiver.status = 200
        await self.until(lambda: self.count("delivered") == 3)
        self.assertEqual(len(self.receiver.events), 3)
        self.assertEqual(sample(self.events, "imageserver_webhook_events_pending"), 0)

    async def test_a_receiver_down_for_too_long_loses_events_counted(self) -> None:
        hooks = self.hooks(retry_seconds=0.2)
        await self.port.stopListening()  # nobody listens: connection refused
        AppHarness(self, lifecycle=hooks).upload(PHOTO)
        await self.until(lambda: self.count("expired") == 1)
        self.assertEqual(hooks.pending, 0)

    async def test_a_full_queue_drops_new_events_and_counts_them(self) -> None:
        hooks = self.hooks(max_queued=2)
        self.receiver.status = 503
        app = AppHarness(self, lifecycle=hooks)
        for size in (40, 50, 60, 70):
            app.upload(encode(quadrants((size, 30))))
        self.assertGreaterEqual(self.count("dropped"), 1)
        self.assertLessEqual(hooks.pending, 3)

    async def test_a_hanging_receiver_never_holds_a_request(self) -> None:
        hooks = self.hooks()
        self.receiver.hang = True
        app = AppHarness(self, lifecycle=hooks)
        # Answered at once, in memory, while the event waits on the socket.
        app.upload(PHOTO)
        self.assertEqual(hooks.pending, 1)
        await self.until(lambda: self.receiver.hanging)
        self.receiver.hang = False
        for request in self.receiver.hanging:
            request.setResponseCode(503)
            request.finish()
        await self.until(lambda: self.count("delivered") == 1)

    async def test_an_endless_answer_is_not_read_on(self) -> None:
        """A receiver answering 200 with a body without end: a few KiB are
        read, the connection is dropped, memory stays flat."""
        receiver = Streaming()
        url = self.listen(receiver)
        hooks = self.hooks(urls=[url])
        app = AppHarness(self, lifecycle=hooks)
        before = peak = rss()
        for size in range(40, 48):  # as many as are sent at once
            app.upload(encode(quadrants((size, 30))))
        while self.count("delivered") + self.count("retried") < 8:
            peak = max(peak, rss())
            await deferLater(reactor, 0.01)
        await self.until(lambda: all(p.stopped for p in receiver.producers))
        sent = sum(p.sent for p in receiver.producers)
        self.assertEqual(self.count("delivered"), 8)
        self.assertLess(sent, 8 * 8 * 2**20, f"bytes the receiver sent: {sent}")
        self.assertLess(peak - before, 64 * 2**20, f"RSS growth: {peak - before}")

    async def test_a_redirect_is_not_followed_nor_delivered(self) -> None:
        elsewhere = Recorder()
        target = self.listen(elsewhere).encode()
        receiver = Redirecting(target)
        hooks = self.hooks(urls=[self.listen(receiver)])
        AppHarness(self, lifecycle=hooks).upload(PHOTO)
        await self.until(lambda: self.count("retried") >= 2)
        self.assertEqual(self.count("delivered"), 0)
        self.assertEqual(elsewhere.requests, [])
        self.assertEqual(hooks.pending, 1)
        self.assertGreaterEqual(receiver.posts, 2)
        receiver.target = None  # it takes events again: the one retried arrives
        await self.until(lambda: self.count("delivered") == 1)
        self.assertEqual(elsewhere.requests, [])
