import socket

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.pages import errorPage
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.static import Data

from imageserver.errors import (
    ContentTooLarge,
    InvalidRequest,
    NotFound,
    SourceTimeout,
    SourceUnavailable,
)
from imageserver.sources import SourceFetcher


class Hanging(Resource):
    """Answers with headers and part of a body, then nothing more."""

    isLeaf = True

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        request.setHeader(b"Content-Length", b"100")
        request.write(b"partial")
        return NOT_DONE_YET


class Chunked(Resource):
    """A body with no Content-Length, so only counting can stop it."""

    isLeaf = True

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        for _ in range(11):
            request.write(b"x" * 100)
        request.finish()
        return NOT_DONE_YET


def source_site() -> Resource:
    root = Resource()
    root.putChild(b"photo.jpg", Data(b"image bytes", "image/jpeg"))
    root.putChild(b"big.jpg", Data(b"x" * 2000, "image/jpeg"))
    root.putChild(b"chunked", Chunked())
    root.putChild(b"gone", errorPage(410, "Gone", ""))
    root.putChild(b"broken", errorPage(500, "Broken", ""))
    root.putChild(b"hanging", Hanging())
    return root


class SourceFetcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.agent = RequestTraversalAgent(source_site())
        self.fetcher = SourceFetcher(
            HTTPClient(self.agent), self.clock, timeout=5, max_bytes=1000
        )

    def fetch(self, url: str) -> Deferred[bytes]:
        d = Deferred.fromCoroutine(self.fetcher.fetch(url))
        self.agent.flush()
        return d

    def test_downloads_the_body(self) -> None:
        self.assertEqual(
            self.successResultOf(self.fetch("http://source/photo.jpg")), b"image bytes"
        )

    def test_missing_is_not_found(self) -> None:
        for path in ("missing", "gone"):
            failure = self.failureResultOf(
                self.fetch(f"http://source/{path}"), NotFound
            )
            self.assertIn("source answered 4", str(failure.value))

    def test_server_error_is_unavailable(self) -> None:
        failure = self.failureResultOf(
            self.fetch("http://source/broken"), SourceUnavailable
        )
        self.assertEqual(str(failure.value), "source answered 500")

    def test_declared_length_over_limit(self) -> None:
        self.failureResultOf(self.fetch("http://source/big.jpg"), ContentTooLarge)

    def test_streamed_body_over_limit_is_cut_off(self) -> None:
        self.failureResultOf(self.fetch("http://source/chunked"), ContentTooLarge)

    def test_slow_body_times_out(self) -> None:
        d = self.fetch("http://source/hanging")
        self.assertNoResult(d)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        failure = self.failureResultOf(d, SourceTimeout)
        self.assertEqual(str(failure.value), "source did not answer within 5 seconds")

    def test_only_http_urls(self) -> None:
        for url in (
            "ftp://source/x",
            "file:///etc/passwd",
            "/photo.jpg",
            "http://",
            "gopher://x",
            "javascript:alert(1)",
        ):
            self.failureResultOf(self.fetch(url), InvalidRequest)


class RealConnectionTests(TestCase):
    """Failures only a real socket produces."""

    async def test_refused_connection_is_unavailable(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again before the fetch
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        fetcher = SourceFetcher(
            HTTPClient(Agent(reactor, pool=pool)), reactor, timeout=5, max_bytes=100
        )
        with self.assertRaises(SourceUnavailable) as caught:
            await fetcher.fetch(f"http://127.0.0.1:{port}/photo.jpg")
        self.assertEqual(str(caught.exception), "source could not be downloaded")
