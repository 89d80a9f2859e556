"""Every outbound HTTP client (source fetches, webhooks) holds an answer's
head to `outbound.MAX_HEAD_BYTES`, over real loopback sockets."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from imageserver.errors import ImageServerError
from imageserver.lifecycle.webhooks import Webhooks
from imageserver.metrics.events import Events
from imageserver.sources.addresses import SourcePolicy
from imageserver.sources.fetcher import SourceFetcher, source_agent
from imageserver.sources.outbound import MAX_HEAD_BYTES
from tests.support import AppHarness, encode, quadrants, sample

#: A server gives up after this much, so a client that reads on is caught
#: without taking the machine down.
SAFETY = 64 * 2**20
#: What the kernel's socket buffers on loopback may take in besides.
BUFFERED = 8 * 2**20


class Heads(Protocol):
    """Answers each request with ``head`` then ``more`` for as long as the
    client reads (a pull producer: bytes pile up in the client alone), and
    ``body`` after ``more`` once ``rounds`` are sent."""

    head = b""
    more = b""
    rounds = SAFETY
    body = b""

    def connectionMade(self) -> None:
        self.sent = 0
        self.written = 0
        self.factory.connections.append(self)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" not in data or self.sent:
            return  # the request's body, or a second packet of it
        self.transport.write(self.head)  # type: ignore[union-attr]
        self.sent = len(self.head)
        self.transport.registerProducer(self, False)  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        transport: Any = self.transport
        if self.written >= self.rounds or self.sent >= SAFETY:
            transport.unregisterProducer()
            transport.write(self.body)
            return
        transport.write(self.more)
        self.sent += len(self.more)
        self.written += 1

    def stopProducing(self) -> None:
        self.written = self.rounds


def _answer(head: bytes, more: bytes, rounds: int = SAFETY) -> type[Heads]:
    return type(
        "Answer",
        (Heads,),
        {"head": head, "more": more, "rounds": rounds,
         "body": b"Content-Length: 2\r\n\r\nok"},
    )  # fmt: skip


PAD = b"X-Pad: " + b"a" * 1000 + b"\r\n"
HOSTILE = {
    "endless headers": _answer(b"HTTP/1.1 200 OK\r\n", PAD),
    "endless 1xx answers": _answer(
        b"", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    ),
    "endless status line": _answer(b"HTTP/1.1 200 ", b"a" * 4096),
}
BENIGN = {
    # 60 KiB of headers, then the end of the head and a body.
    "a long head": _answer(b"HTTP/1.1 200 OK\r\n", PAD, 60),
    "hints first": _answer(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n", PAD, 1
    ),
}


class HeadBoundTests(TestCase):
    timeout = 60

    def serve(self, protocol: type[Heads]) -> tuple[str, list[Heads]]:
        factory = Factory.forProtocol(protocol)
        factory.connections = []  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/a", factory.connections  # type: ignore[attr-defined]

    async def fetch(self, url: str) -> str:
        """A source fetch as the server makes it: what it got, or its error."""
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        agent = source_agent(reactor, pool, SourcePolicy(allow_private=True), 3)
        try:
            return (await SourceFetcher(agent, reactor, 20, 100).fetch(url)).decode()
        except ImageServerError as e:
            return f"{type(e).__name__}: {e}"

    async def deliver(self, url: str) -> str:
        """One webhook event: delivered, or retried."""
        events = Events()
        hooks = Webhooks(reactor, [url], b"secret", max_queued=10, retry_seconds=60,
                         shutdown_timeout=1, events=events,
                         retry=lambda attempt: 30)  # fmt: skip
        hooks.startService()
        self.addCleanup(hooks.stopService)
        AppHarness(self, lifecycle=hooks).upload(encode(quadrants((20, 10))))
        for _ in range(1500):
            for outcome in ("delivered", "retried"):
                name = "imageserver_webhook_events_total"
                if sample(events, name, outcome=outcome):
                    return outcome
            await deferLater(reactor, 0.02)
        self.fail("the event was neither delivered nor retried")

    async def test_a_head_without_end_is_dropped(self) -> None:
        """Before: each client read on until its deadline (10 s for a webhook,
        --http_timeout for a source): 80 MB a webhook retry, RSS 47 -> 157 MB."""
        for name, answer in HOSTILE.items():
            for client in (self.fetch, self.deliver):
                url, connections = self.serve(answer)
                with capturedLogs() as logged:
                    outcome = await client(url)
                self.assertIn(outcome.split(":")[0], ("SourceUnavailable", "retried"),
                              (name, client.__name__, outcome))  # fmt: skip
                sent = sum(c.sent for c in connections)
                self.assertLess(
                    sent, MAX_HEAD_BYTES + BUFFERED, (name, client.__name__)
                )
                if name != "endless status line":  # Twisted stops a 16 KiB line
                    self.assertTrue(
                        any("answered with a head over" in e.get("log_format", "")
                            for e in logged), (name, client.__name__))  # fmt: skip

    async def test_heads_within_the_bound_are_read(self) -> None:
        for name, answer in BENIGN.items():
            url, _ = self.serve(answer)
            self.assertEqual(await self.fetch(url), "ok", name)
            url, _ = self.serve(answer)
            self.assertEqual(await self.deliver(url), "delivered", name)
