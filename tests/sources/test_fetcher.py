import json
import socket
from ipaddress import ip_address
from typing import Any
from urllib.parse import quote

from treq.testing import RequestTraversalAgent
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, LoopingCall
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.pages import errorPage
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.static import Data

from imageserver.errors import (
    ContentTooLarge,
    Forbidden,
    InvalidRequest,
    NotFound,
    SourceTimeout,
    SourceUnavailable,
)
from imageserver.sources.addresses import SourcePolicy
from imageserver.sources.fetcher import GuardedEndpoints, SourceFetcher, source_agent
from tests.test_twistd import TwistdCase

HINT = (
    "; such sources are fetched only when the server runs with "
    "--allow_private_sources or --allow_networks"
)


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
        self.fetcher = SourceFetcher(self.agent, self.clock, timeout=5, max_bytes=1000)

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
        self.assertEqual(
            str(failure.value),
            "source host source did not send the whole image within 5 seconds",
        )

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


def unconnectable(case: Any, host: str = "127.0.0.1") -> socket.socket:
    """A listening socket whose one-place queue is full: the kernel drops
    further connection attempts, so connecting to it never completes."""
    full = socket.socket()
    case.addCleanup(full.close)
    full.bind((host, 0))
    full.listen(0)
    filler = socket.create_connection(full.getsockname())
    case.addCleanup(filler.close)
    return full


class Silent(Protocol):
    """Accepts the connection, reads the request, never answers."""


class Trickling(Protocol):
    """Answers headers at once, then a byte of body every 50 ms, for ever."""

    def connectionMade(self) -> None:
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"
        )
        self.call = LoopingCall(self.transport.write, b"x")  # type: ignore[union-attr]
        self.call.start(0.05)

    def connectionLost(self, reason: object = None) -> None:
        self.call.stop()


class RealConnectionTests(TestCase):
    """Failures only a real socket produces, through the guarded agent the
    server uses and a plain one (each says what happened, to which host)."""

    def fetchers(self, timeout: float = 5) -> dict[str, SourceFetcher]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        guarded = source_agent(reactor, pool, SourcePolicy(allow_private=True), 3)
        return {
            "guarded": SourceFetcher(guarded, reactor, timeout, max_bytes=100),
            "plain": SourceFetcher(
                Agent(reactor, pool=pool), reactor, timeout, max_bytes=100
            ),
        }

    def serve(self, protocol: type[Protocol]) -> int:
        port = reactor.listenTCP(
            0, Factory.forProtocol(protocol), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        return port.getHost().port  # type: ignore[no-any-return]

    async def test_refused_connection_names_host_and_port(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again before the fetch
        for kind, fetcher in self.fetchers().items():
            with self.assertRaises(SourceUnavailable, msg=kind) as caught:
                await fetcher.fetch(f"http://127.0.0.1:{port}/photo.jpg")
            self.assertEqual(
                str(caught.exception),
                f"source host 127.0.0.1 refused the connection on port {port}",
            )

    async def test_every_kind_of_timeout_is_a_timeout(self) -> None:
        """docs/api.md: 504 when the source does not answer in time, whether
        it never accepts, accepts and stays silent, or trickles the body."""
        full = unconnectable(self)
        cases = (
            (full.getsockname()[1], "did not answer within 0.5 seconds"),
            (self.serve(Silent), "did not answer within 0.5 seconds"),
            (self.serve(Trickling), "did not send the whole image within 0.5 seconds"),
        )
        for port, message in cases:
            for kind, fetcher in self.fetchers(timeout=0.5).items():
                with self.assertRaises(SourceTimeout, msg=(port, kind)) as caught:
                    await fetcher.fetch(f"http://127.0.0.1:{port}/photo.jpg")
                self.assertEqual(
                    str(caught.exception), f"source host 127.0.0.1 {message}"
                )

    async def test_a_connect_timeout_shorter_than_the_deadline_is_a_timeout(
        self,
    ) -> None:
        full = unconnectable(self)
        endpoints = GuardedEndpoints(
            reactor, SourcePolicy(allow_private=True), connect_timeout=0.3
        )
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
        fetcher = SourceFetcher(agent, reactor, timeout=5, max_bytes=100)
        with self.assertRaises(SourceTimeout) as caught:
            await fetcher.fetch(f"http://127.0.0.1:{full.getsockname()[1]}/a.jpg")
        self.assertEqual(
            str(caught.exception),
            "source host 127.0.0.1 did not accept a connection within 0.3 seconds",
        )


class Recording(Resource):
    """A source that records who asked, and optionally redirects."""

    isLeaf = True

    def __init__(self, redirect: bytes | None = None) -> None:
        super().__init__()
        self.requests: list[bytes] = []
        self.redirect = redirect

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        self.requests.append(request.uri)
        if self.redirect:
            request.redirect(self.redirect)
            return b""
        return b"image bytes"


class GuardTests(TestCase):
    """The SSRF guard over real loopback sockets (127.0.0.1 and 127.0.0.2)."""

    def serve(self, resource: Resource, interface: str = "127.0.0.1") -> int:
        port = reactor.listenTCP(0, Site(resource), interface=interface)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def fetcher(
        self, policy: SourcePolicy, max_redirects: int = 3, resolve: Any = None
    ) -> SourceFetcher:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        agent = source_agent(reactor, pool, policy, max_redirects, resolve)
        return SourceFetcher(agent, reactor, timeout=5, max_bytes=1000)

    async def test_loopback_is_refused_before_connecting(self) -> None:
        source = Recording()
        port = self.serve(source)
        with self.assertRaises(Forbidden) as caught:
            await self.fetcher(SourcePolicy()).fetch(f"http://127.0.0.1:{port}/a.jpg")
        self.assertEqual(
            str(caught.exception),
            "source host 127.0.0.1 resolves to 127.0.0.1, which is loopback" + HINT,
        )
        self.assertEqual(source.requests, [])

    async def test_names_are_checked_by_what_they_resolve_to(self) -> None:
        port = self.serve(Recording())
        with self.assertRaises(Forbidden) as caught:
            await self.fetcher(SourcePolicy()).fetch(f"http://localhost:{port}/a.jpg")
        self.assertIn("which is loopback", str(caught.exception))

    async def test_allowed_when_asked(self) -> None:
        port = self.serve(Recording())
        data = await self.fetcher(SourcePolicy(allow_private=True)).fetch(
            f"http://127.0.0.1:{port}/a.jpg"
        )
        self.assertEqual(data, b"image bytes")

    async def test_every_redirect_hop_is_checked(self) -> None:
        inner = Recording()
        inner_port = self.serve(inner, interface="127.0.0.2")
        outer_port = self.serve(
            Recording(redirect=b"http://127.0.0.2:%d/secret" % inner_port)
        )
        policy = SourcePolicy(allowed_networks=("127.0.0.1/32",))
        with self.assertRaises(Forbidden) as caught:
            await self.fetcher(policy).fetch(f"http://127.0.0.1:{outer_port}/a.jpg")
        self.assertIn("127.0.0.2, which is loopback", str(caught.exception))
        self.assertEqual(inner.requests, [])

    async def test_redirects_to_other_schemes_are_refused(self) -> None:
        port = self.serve(Recording(redirect=b"file:///etc/passwd"))
        with self.assertRaises(Forbidden):
            await self.fetcher(SourcePolicy(allow_private=True)).fetch(
                f"http://127.0.0.1:{port}/a.jpg"
            )

    async def test_too_many_redirects(self) -> None:
        loop = Recording()
        port = self.serve(loop)
        loop.redirect = b"http://127.0.0.1:%d/again" % port
        with self.assertRaises(SourceUnavailable) as caught:
            await self.fetcher(SourcePolicy(allow_private=True), 2).fetch(
                f"http://127.0.0.1:{port}/a.jpg"
            )
        self.assertEqual(str(caught.exception), "source redirected too many times")
        self.assertEqual(len(loop.requests), 3)  # the first request, 2 redirects

    async def test_mixed_dns_answers_are_refused(self) -> None:
        port = self.serve(Recording())

        async def resolve(host: str, port: int) -> list[str]:
            return ["127.0.0.1", "127.0.0.2"]

        policy = SourcePolicy(allowed_networks=("127.0.0.1/32",))
        with self.assertRaises(Forbidden):
            await self.fetcher(policy, resolve=resolve).fetch(
                f"http://images.test:{port}/a.jpg"
            )

    async def test_the_checked_address_is_the_one_connected_to(self) -> None:
        """DNS rebinding: a second answer never reaches the connection."""
        source = Recording()
        port = self.serve(source)
        answers = [["127.0.0.1"], ["127.0.0.2"]]
        asked: list[str] = []

        async def resolve(host: str, port: int) -> list[str]:
            asked.append(host)
            return answers.pop(0)

        policy = SourcePolicy(allowed_networks=("127.0.0.1/32",))
        data = await self.fetcher(policy, resolve=resolve).fetch(
            f"http://images.test:{port}/a.jpg"
        )
        self.assertEqual((data, asked), (b"image bytes", ["images.test"]))
        self.assertEqual(source.requests, [b"/a.jpg"])

    async def test_ipv6_literals_and_encoded_hosts_meet_the_same_policy(self) -> None:
        port = self.serve(Recording(), interface="::1")
        for host, address, reason in (
            ("[::1]", "::1", "loopback"),
            ("[::ffff:127.0.0.1]", "::ffff:7f00:1", "loopback"),
            ("[::]", "::", "unspecified"),
            ("[64:ff9b::7f00:1]", "64:ff9b::7f00:1", "loopback"),
            ("[fe80::1%25eth0]", "fe80::1%eth0", "link-local"),
            ("%31%32%37.0.0.1", "127.0.0.1", "loopback"),
        ):
            # The address as this Python writes it (3.13 writes mapped
            # IPv4 as dotted quads): what is compared is the address.
            shown = str(ip_address(address))
            with self.assertRaises(Forbidden, msg=host) as caught:
                await self.fetcher(SourcePolicy()).fetch(f"http://{host}:{port}/a.jpg")
            self.assertEqual(
                str(caught.exception),
                f"source host {shown} resolves to {shown}, which is {reason}{HINT}",
            )

    async def test_ipv6_sources_are_fetched_when_allowed(self) -> None:
        source = Recording()
        port = self.serve(source, interface="::1")
        policy = SourcePolicy(allowed_networks=("::1/128",))
        data = await self.fetcher(policy).fetch(f"http://[::1]:{port}/a.jpg")
        self.assertEqual((data, source.requests), (b"image bytes", [b"/a.jpg"]))

    async def test_a_redirect_to_an_ipv6_literal_is_checked(self) -> None:
        inner = Recording()
        inner_port = self.serve(inner, interface="::1")
        outer_port = self.serve(Recording(redirect=b"http://[::1]:%d/x" % inner_port))
        policy = SourcePolicy(allowed_networks=("127.0.0.1/32",))
        with self.assertRaises(Forbidden) as caught:
            await self.fetcher(policy).fetch(f"http://127.0.0.1:{outer_port}/a.jpg")
        self.assertIn("::1, which is loopback", str(caught.exception))
        self.assertEqual(inner.requests, [])

    async def test_malformed_hosts_are_400s(self) -> None:
        for url in ("http://[::1/a.jpg", "http://[zz::1]/a.jpg", "http://%ff/a.jpg",
                    "http://a:99999/a.jpg"):  # fmt: skip
            with self.assertRaises(InvalidRequest, msg=url):
                await self.fetcher(SourcePolicy()).fetch(url)

    async def test_a_name_that_does_not_resolve_is_said_so(self) -> None:
        async def resolve(host: str, port: int) -> list[str]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        with self.assertRaises(SourceUnavailable) as caught:
            await self.fetcher(SourcePolicy(), resolve=resolve).fetch(
                "http://images.invalid/a.jpg"
            )
        self.assertEqual(
            str(caught.exception), "source host images.invalid was not found (DNS)"
        )

    async def test_allowlist_is_checked_before_resolving(self) -> None:
        asked: list[str] = []

        async def resolve(host: str, port: int) -> list[str]:
            asked.append(host)
            return ["93.184.216.34"]

        policy = SourcePolicy(allowlist=("*.example.com",))
        with self.assertRaises(Forbidden):
            await self.fetcher(policy, resolve=resolve).fetch("http://evil.test/a.jpg")
        self.assertEqual(asked, [])


class MessagesTwistdTests(TwistdCase):
    """What a client is told when a source fails, by a real server process:
    each failure named, with the host, and what to do where there is something."""

    async def test_each_failure_says_what_happened(self) -> None:
        await self.start_server(
            "--allow_networks", "127.0.0.2/32", "--http_timeout", "0.5"
        )

        def serve(factory: Any) -> int:
            port = reactor.listenTCP(0, factory, interface="127.0.0.2")
            self.addCleanup(port.stopListening)
            return port.getHost().port  # type: ignore[no-any-return]

        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
            closed = s.getsockname()[1]
        hung = unconnectable(self, "127.0.0.2").getsockname()[1]
        silent = serve(Factory.forProtocol(Silent))
        trickling = serve(Factory.forProtocol(Trickling))
        text = Resource()
        text.putChild(b"a.jpg", Data(b"not an image", "image/jpeg"))
        not_image = serve(Site(text))
        formats = (
            "JPEG, PNG, GIF, WEBP, AVIF, TIFF, BMP, HEIF, JXL, SVG, PDF, MP4, MOV, WEBM"
        )
        for url, status, message in (
            ("http://127.0.0.1:1/a.jpg", 403,
             "source host 127.0.0.1 resolves to 127.0.0.1, which is loopback" + HINT),
            ("http://exa mple/a.jpg", 400,
             "source host 'exa mple' is not a valid host name: ' ' (U+0020) is not "
             "allowed; a host name is letters, digits and hyphens, in labels "
             "separated by dots"),
            (f"http://127.0.0.2:{closed}/a.jpg", 502,
             f"source host 127.0.0.2 refused the connection on port {closed}"),
            (f"http://127.0.0.2:{hung}/a.jpg", 504,
             "source host 127.0.0.2 did not answer within 0.5 seconds"),
            (f"http://127.0.0.2:{silent}/a.jpg", 504,
             "source host 127.0.0.2 did not answer within 0.5 seconds"),
            (f"http://127.0.0.2:{trickling}/a.jpg", 504,
             "source host 127.0.0.2 did not send the whole image within 0.5 "
             "seconds"),
            (f"http://127.0.0.2:{not_image}/a.jpg", 415,
             f"the download from http://127.0.0.2:{not_image}/a.jpg is not an "
             f"image in a supported format ({formats})"),
        ):  # fmt: skip
            response, body = await self.call("POST", f"/p?source={quote(url)}")
            self.assertEqual(
                (response.code, json.loads(body)), (status, {"error": message}), url
            )

    async def test_a_body_and_a_source_together_are_refused(self) -> None:
        await self.start_server("--allow_private_sources")
        response, body = await self.call(
            "POST", f"/p?source={quote('http://127.0.0.1:1/a.jpg')}", data=b"x"
        )
        self.assertEqual(
            (response.code, json.loads(body)),
            (400, {"error": "give the image as the body or as ?source=URL, not both"}),
        )
