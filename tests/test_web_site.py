"""The bounded Site over a real loopback socket (the in-memory client skips it)."""

import json
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from imageserver.web.app import route_name
from imageserver.web.site import BoundedSite
from tests.support import AppHarness, encode, quadrants, sample

LIMIT = 20_000


@implementer(IBodyProducer)
class Unsized:
    """A body sent chunked, with no Content-Length."""

    length = UNKNOWN_LENGTH

    def __init__(self, data: bytes) -> None:
        self.data = data

    def startProducing(self, consumer: Any) -> Deferred[None]:
        for i in range(0, len(self.data), 4096):
            consumer.write(self.data[i : i + 4096])
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class BoundedSiteTests(TestCase):
    def setUp(self) -> None:
        app = AppHarness(self)
        self.events = app.events
        site = BoundedSite(
            app.resource, max_body_bytes=LIMIT, events=app.events, route_of=route_name
        )
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.client = HTTPClient(Agent(reactor, pool=pool))
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/p"

    async def post(self, body: Any) -> tuple[int, Any]:
        response = await self.client.post(self.url, data=body)
        return response.code, json.loads(await response.content())

    async def test_body_under_the_limit_is_accepted(self) -> None:
        photo = encode(quadrants((64, 64)))
        self.assertLess(len(photo), LIMIT)
        code, info = await self.post(photo)
        self.assertEqual((code, info["width"]), (200, 64))

    async def test_declared_length_over_the_limit_is_413(self) -> None:
        code, error = await self.post(b"x" * (LIMIT + 1))
        self.assertEqual(code, 413)
        self.assertEqual(
            error, {"error": f"the body is larger than the limit of {LIMIT} bytes"}
        )

    async def test_chunked_body_over_the_limit_is_413(self) -> None:
        code, _ = await self.post(Unsized(b"x" * (LIMIT * 3)))
        self.assertEqual(code, 413)

    async def test_every_request_is_counted_timed_and_logged(self) -> None:
        with capturedLogs() as events:
            code, _ = await self.post(encode(quadrants((32, 32))))
            response = await self.client.get(self.url + "/nothing/here")
            await response.content()
        self.assertEqual(code, 200)
        count = sample(self.events, "imageserver_http_requests_total",
                       route="upload", method="POST", status="200")  # fmt: skip
        self.assertEqual(count, 1)
        self.assertEqual(
            sample(self.events, "imageserver_http_requests_total",
                   route="other", method="GET", status="404"), 1
        )  # fmt: skip
        self.assertEqual(
            sample(self.events, "imageserver_http_request_duration_seconds_count",
                   route="upload"), 1
        )  # fmt: skip
        self.assertEqual(sample(self.events, "imageserver_http_requests_in_flight"), 0)
        access = [e for e in events if e.get("log_namespace") == "imageserver.access"]
        self.assertEqual([(e["method"], e["route"], e["status"]) for e in access],
                         [("POST", "upload", 200), ("GET", "other", 404)])  # fmt: skip
        self.assertEqual(access[0]["uri"], "/p")
        self.assertGreater(access[0]["bytes"], 0)

    async def test_bodies_are_never_parsed_as_forms(self) -> None:
        for content_type, body in (
            (b"application/x-www-form-urlencoded", b"outputs=w0.jpg"),
            (b"multipart/form-data", b"\x00not a form"),
        ):
            response = await self.client.post(
                self.url, data=body, headers={b"Content-Type": [content_type]}
            )
            error = json.loads(await response.content())
            self.assertEqual(response.code, 415, content_type)
            self.assertIn("not an image", error["error"])

    async def test_errors_never_show_tracebacks(self) -> None:
        response = await self.client.get(self.url.replace("/p", "/p/..%2f..%2fetc"))
        body = await response.content()
        self.assertEqual(response.code, 404)
        self.assertNotIn(b"Traceback", body)
