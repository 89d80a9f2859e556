"""The bounded Site over a real loopback socket (the in-memory client skips it)."""

import json
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from imageserver.metrics.events import Events
from imageserver.web.admin import AdminApp, Readiness
from imageserver.web.app import ImageServerApp, is_thumbor_path, route_name
from imageserver.web.site import BodyBudget, BoundedSite, _path_refusal, methods_of
from tests.rawhttp import exchange, json_of, request_bytes, status_of
from tests.support import AppHarness, encode, quadrants, sample

LIMIT = 20_000
METHODS = methods_of(ImageServerApp.app)


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
            app.resource,
            max_body_bytes=LIMIT,
            events=app.events,
            route_of=route_name,
            methods=METHODS,
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


#: Paths of the native routes behind leading empty segments, which the
#: router drops: never a thumbor URL, whatever its predicate says.
NATIVE_WITH_EMPTY_SEGMENTS = (
    b"//p",
    b"//p/20a/cbf/873/6a0ba6d607bced4accdda17/w9.png",
    b"///p/batch/x",
    b"//unsafe/300x200/http://a/b.jpg",
)


class ConnectionLimitTests(SynchronousTestCase):
    """The site's channel, byte by byte, on the real app and a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.app = AppHarness(self)
        self.budget = BodyBudget(3 * LIMIT)
        self.site = BoundedSite(
            self.app.resource,
            max_body_bytes=LIMIT,
            idle_timeout=60,
            clock=self.clock,
            head_timeout=10,
            max_connections=10,
            body_budget=self.budget,
            methods=METHODS,
        )

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def answer(self, transport: StringTransport) -> tuple[int, dict[str, Any]]:
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 "), head)
        self.assertIn(b"Content-Type: application/json", head)
        return int(head.split()[1]), json.loads(body)

    def test_a_declared_body_over_the_limit_is_refused_before_100_continue(
        self,
    ) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 10000000000\r\n\r\n"
        )
        self.assertNotIn(b"100 Continue", transport.value())
        self.assertEqual(
            self.answer(transport),
            (413, {"error": f"the body is larger than the limit of {LIMIT} bytes"}),
        )
        self.assertTrue(transport.disconnecting)

    def test_a_body_on_a_method_that_takes_none_is_refused_unread(self) -> None:
        """GET, HEAD and DELETE with a body, declared or chunked: a 400 before
        a byte of it is read or a 100 Continue sent (such bodies were read
        and counted against the bodies' budget); none, or an empty one, as
        before."""
        for method in sorted(m.decode() for m in METHODS - {b"POST"}):
            for framing in (b"Content-Length: 5000", b"Transfer-Encoding: chunked"):
                protocol, transport = self.connect()
                protocol.dataReceived(
                    f"{method} /p/abc HTTP/1.1\r\nHost: x\r\n".encode()
                    + b"Expect: 100-continue\r\n"
                    + framing
                    + b"\r\n\r\n"
                )
                self.assertNotIn(b"100 Continue", transport.value())
                self.assertEqual(self.answer(transport), (400, {"error": (
                    f"a {method} request takes no body here: send it without "
                    "one (only POST carries a body)")}), (method, framing))  # fmt: skip
                self.assertTrue(transport.disconnecting)
            for framing in (b"Content-Length: 0\r\n", b""):
                protocol, transport = self.connect()
                protocol.dataReceived(
                    f"{method} /p/abc HTTP/1.1\r\nHost: x\r\n".encode()
                    + framing
                    + b"\r\n"
                )
                self.assertNotIn(b" 400 ", transport.value(), (method, framing))

    def test_an_endless_chunked_body_is_cut_at_the_limit(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"1000\r\n" + b"x" * 0x1000 + b"\r\n"
        for _ in range(LIMIT // 0x1000 + 1):
            protocol.dataReceived(chunk)
        self.assertEqual(self.answer(transport)[0], 413)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.budget.held, 0)

    def test_bodies_past_the_budget_get_503_and_the_budget_comes_back(self) -> None:
        held = []
        for _ in range(3):
            protocol, transport = self.connect()
            protocol.dataReceived(
                b"POST /p HTTP/1.1\r\nHost: x\r\n"
                + f"Content-Length: {LIMIT}\r\n\r\n".encode()
                + b"x" * 100
            )
            self.assertEqual(transport.value(), b"")
            held.append((protocol, transport))
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"
        )
        code, error = self.answer(transport)
        self.assertEqual(code, 503)
        self.assertIn(b"Retry-After: 5", transport.value())
        self.assertEqual(
            error["error"],
            "the server is receiving too many bodies now, try again shortly",
        )
        self.assertEqual(self.budget.held, 3 * LIMIT)
        for protocol, _ in held:
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.budget.held, 0)

    def test_the_head_must_arrive_within_its_deadline(self) -> None:
        protocol, transport = self.connect()
        for byte in b"GET /status_check HTTP/1.1\r\nHost: x\r\n":
            protocol.dataReceived(bytes([byte]))
            self.clock.advance(0.5)  # 10 s reached before the head ends
            if transport.disconnecting:
                break
        self.assertEqual(
            self.answer(transport),
            (408, {"error": "the request head did not arrive in time"}),
        )

    def test_a_prompt_head_is_answered_and_the_next_one_is_timed_afresh(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /status_check HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        self.clock.advance(30)  # idle between requests: the idle timeout's business
        self.assertFalse(transport.disconnecting)
        transport.clear()
        protocol.dataReceived(b"GET /status_check HTTP/1.1\r\n")
        self.clock.advance(9)
        protocol.dataReceived(b"Host: x\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())

    def test_long_lines_get_a_400(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n")
        self.assertEqual(
            self.answer(transport),
            (400, {"error": "the request line or a header is over 16384 bytes"}),
        )
        self.assertTrue(transport.disconnecting)

    def test_connections_past_the_cap_get_503(self) -> None:
        self.site.max_connections = 3
        open_ones = [self.connect() for _ in range(3)]
        for _, transport in open_ones:
            self.assertEqual(transport.value(), b"")
        protocol, transport = self.connect()
        self.assertEqual(self.answer(transport)[0], 503)
        protocol.connectionLost(Failure(ConnectionDone()))
        open_ones[0][0].connectionLost(Failure(ConnectionDone()))
        _, transport = self.connect()
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.site.connections, 3)

    def test_encoded_slashes_and_bad_escapes_are_json_errors(self) -> None:
        folder = self.app.upload(encode(quadrants((40, 30))))
        parts = folder.rsplit("/", 1)
        with capturedLogs() as logged:
            for path, code in (
                (f"{parts[0]}%2F{parts[1]}/w10.jpg", 404),
                (f"{parts[0]}%2f{parts[1]}/w10.jpg", 404),
                (f"{folder}/w10%FF.jpg", 400),
                ("/%FF", 400),
            ):
                protocol, transport = self.connect()
                protocol.dataReceived(
                    f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                )
                self.assertEqual(self.answer(transport)[0], code, path)
                protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([e for e in logged if e.get("log_failure")], [])

    def test_empty_segments_reach_no_route(self) -> None:
        """The router drops leading slashes: were ``//`` let through, ``//p``
        would upload into p while rates and metrics saw another route (and
        with thumbor's URLs answered, read p's images unsigned). Every route,
        every place of the empty segment, every method, thumbor's URLs
        answered or not: 404 and nothing done."""
        for thumbor in (False, True):
            self.site.slashes_encoded = (
                is_thumbor_path if thumbor else lambda path: False
            )
            self.empty_segments_reach_no_route()

    def empty_segments_reach_no_route(self) -> None:
        photo = encode(quadrants((40, 30)))
        folder = self.app.upload(photo)
        head, hash_path = folder[1:].split("/", 1)
        paths = [
            "//p",
            "///p",
            "/p//",
            "//p/batch",
            "/p//batch",
            "/p/batch//x",
            f"//{head}/{hash_path}/w10.jpg",
            f"/{head}//{hash_path}/w10.jpg",
            f"/{head}/{hash_path}//w10.jpg",
            f"/{head}/{hash_path.replace('/', '//', 1)}/w10.jpg",
            f"/{head}/{hash_path}//process",
            f"/{head}/{hash_path}//",
        ]
        stored_before = sorted(FilePath(self.app.root).walk())
        with capturedLogs() as logged:
            for path in paths:
                for method in ("GET", "HEAD", "POST", "DELETE"):
                    body = photo if method == "POST" else b""
                    protocol, transport = self.connect()
                    protocol.dataReceived(
                        f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                    if method == "HEAD":
                        self.assertTrue(
                            transport.value().startswith(b"HTTP/1.1 404 "), path
                        )
                    else:
                        code, error = self.answer(transport)
                        self.assertEqual(code, 404, (method, path))
                        self.assertIn("empty segment", error["error"], path)
                    protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(sorted(FilePath(self.app.root).walk()), stored_before)
        self.assertEqual([e for e in logged if e.get("log_failure")], [])

    def test_a_thumbor_url_may_hold_empty_segments_when_read(self) -> None:
        """Its image URL may be a URL (``http://``); only reading one is
        thumbor's: any other method of such a path is refused as above."""
        url = b"/unsafe/300x200/http://img.example//a.jpg"
        for method, refused in ((b"GET", False), (b"HEAD", False),
                                (b"POST", True), (b"DELETE", True)):  # fmt: skip
            refusal = _path_refusal(url, is_thumbor_path, method)
            self.assertEqual(refusal is not None, refused, method)
            for native in NATIVE_WITH_EMPTY_SEGMENTS:
                self.assertIsNotNone(
                    _path_refusal(native, is_thumbor_path, method), native
                )
        self.assertIsNone(_path_refusal(b"/p/", is_thumbor_path, b"POST"))

    def test_an_absolute_form_target_is_its_path_on_its_host(self) -> None:
        """RFC 9112 section 3.2.2: what a client sends to a proxy is served
        as its path, with every check the path gets; the authority is the
        host meant (a Host header that says otherwise is not)."""
        photo = encode(quadrants((40, 30)))
        cases = [
            ("POST", "http://127.0.0.1:7000/p", photo, 200),
            ("GET", "HTTP://127.0.0.1/status_check", b"", 200),
            ("GET", "http://127.0.0.1?x=1", b"", 404),
            ("POST", "http://127.0.0.1:7000//p", photo, 404),
            ("POST", "http://127.0.0.1:7000/p%2f", photo, 404),
            ("GET", "http://user@127.0.0.1/status_check", b"", 400),
        ]
        for method, target, body, code in cases:
            protocol, transport = self.connect()
            protocol.dataReceived(
                f"{method} {target} HTTP/1.1\r\nHost: elsewhere\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            self.assertEqual(self.answer(transport)[0], code, target)
            protocol.connectionLost(Failure(ConnectionDone()))


class FramingTests(TestCase):
    """Request smuggling hygiene, over a real socket: a body whose length two
    HTTP parsers could read differently is refused before any of it is read,
    so a request hidden in it never runs."""

    def setUp(self) -> None:
        self.app = AppHarness(self)
        self.folder = self.app.upload(encode(quadrants((40, 30))))
        site = BoundedSite(self.app.resource, max_body_bytes=LIMIT, methods=METHODS)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def smuggling(self, framing: bytes, version: bytes = b"HTTP/1.1") -> bytes:
        """A chunked-looking empty upload with a DELETE of the image after it."""
        hidden = f"DELETE {self.folder} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        return (
            b"POST /p " + version + b"\r\nHost: x\r\n" + framing + b"\r\n"
            b"0\r\n\r\n" + hidden
        )

    async def test_ambiguous_framing_is_400_and_nothing_hidden_runs(self) -> None:
        te, cl = b"Transfer-Encoding: ", b"Content-Length: "
        ambiguous = {
            te + b"chunked\r\n" + te + b"identity\r\n": "ambiguous",
            te + b"identity\r\n" + te + b"chunked\r\n": "only",
            te + b"chunked\r\n" + te + b"chunked\r\n": "ambiguous",
            te + b"chunked\r\n" + cl + b"5\r\n": "ambiguous",
            cl + b"5\r\n" + te + b"chunked\r\n": "ambiguous",
            cl.lower() + b"5\r\n" + te.lower() + b"chunked\r\n": "ambiguous",
            cl + b"5\r\n" + cl + b"6\r\n": "ambiguous",
            cl + b"5\r\n" + cl + b"5\r\n": "ambiguous",
            te + b"gzip, chunked\r\n": "only",
            te + b"chunked, chunked\r\n": "only",
            te + b"identity\r\n": "only",
            te + b"xchunked\r\n": "only",
            te + b"chunked\r\n identity\r\n": "folded",  # obs-fold
            te + b"\r\n": "only",
            cl + b"+5\r\n": "number",
            cl + b"0x5\r\n": "number",
            cl + b"5, 5\r\n": "number",
            cl + "\uff15\r\n".encode(): "number",
        }
        with capturedLogs() as logged:
            for framing, says in ambiguous.items():
                answer = await exchange(self.port, self.smuggling(framing))
                self.assertEqual(answer.count(b"HTTP/1.1 "), 1, framing)
                self.assertEqual(status_of(answer), 400, framing)
                self.assertIn(says, json_of(answer)["error"], framing)
            answer = await exchange(
                self.port,
                self.smuggling(b"Transfer-Encoding: chunked\r\n", b"HTTP/1.0"),
            )
            self.assertEqual(
                json_of(answer),
                {"error": "Transfer-Encoding is not allowed in HTTP/1.0"},
            )
        self.assertEqual([e for e in logged if e.get("log_failure")], [])
        # The hidden DELETE never ran.
        info, _ = self.app.request("GET", self.folder + "/info.json")
        self.assertEqual(info.code, 200)

    async def test_the_head_names_one_host_on_unfolded_lines(self) -> None:
        """RFC 9112: no Host or two on HTTP/1.1, a header folded onto the
        next line (obs-fold), and the asterisk target are a JSON 400 before
        anything runs (all were answered, the fold joined, ``*`` a bare 405)."""
        refused = {
            b"GET /p HTTP/1.1\r\n": "exactly one Host",
            b"GET /p HTTP/1.1\r\nHost: a\r\nHost: b\r\n": "exactly one Host",
            b"GET /p HTTP/1.0\r\nHost: a\r\nhost: a\r\n": "exactly one Host",
            b"GET /p HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n": "folded",
            b"GET /p HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\t2\r\n": "folded",
            b"GET /p HTTP/1.1\r\nHost:\r\n a\r\n": "folded",
            b"GET * HTTP/1.1\r\nHost: a\r\n": "target *",
            b"DELETE * HTTP/1.1\r\nHost: a\r\n": "target *",
            # Routed as if the * were not there: a 200.
            b"GET */status_check HTTP/1.1\r\nHost: a\r\n": "not a path",
            b"GET status_check HTTP/1.1\r\nHost: a\r\n": "not a path",
            b"GET %2A HTTP/1.1\r\nHost: a\r\n": "not a path",
            # Klein's own text 400, and a traceback in the log.
            b"GET /status_check HTTP/1.1\r\nHost: \xff\r\n": "not a host",
            b"GET /status_check HTTP/1.1\r\nHost: a b\r\n": "not a host",
            b"GET /status_check HTTP/1.1\r\nHost: a/b\r\n": "not a host",
        }
        with capturedLogs() as logged:
            for head, says in refused.items():
                answer = await exchange(self.port, head + b"Connection: close\r\n\r\n")
                self.assertEqual(status_of(answer), 400, head)
                self.assertIn(says, json_of(answer)["error"], head)
            for head in (b"GET /p/x HTTP/1.1\r\nHost: a\r\n",
                         b"GET /p/x HTTP/1.0\r\n",
                         b"GET /p/x HTTP/1.1\r\nHost: [::1]:80\r\n",
                         b"GET /p/x HTTP/1.1\r\nHost: 127.0.0.1:7000\r\n",
                         b"GET http://a/p/x HTTP/1.1\r\nHost: a\r\n"):  # fmt: skip
                answer = await exchange(self.port, head + b"Connection: close\r\n\r\n")
                self.assertEqual(status_of(answer), 404, head)
        self.assertEqual([e for e in logged if e.get("log_failure")], [])

    async def test_malformed_http_is_a_json_400(self) -> None:
        """What Twisted refuses on its own (it answered a bare 400 without a
        body) is answered as every other refusal."""
        head = b"POST /p HTTP/1.1\r\nHost: x\r\n"
        many = b"".join(b"X-%d: 1\r\n" % i for i in range(600))
        for request in (
            b"GET\r\n\r\n",  # no target, no version
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\n" + many + b"\r\n",
            b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 9000 + b"\r\n"
            + b"X-Longer: " + b"a" * 9000 + b"\r\n\r\n",
            head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
            head + b"Transfer-Encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n",
        ):  # fmt: skip
            answer = await exchange(self.port, request)
            self.assertEqual(status_of(answer), 400, request[:60])
            self.assertIn(b"Content-Type: application/json", answer, request[:60])
            self.assertIn("HTTP", json_of(answer)["error"])
        info, _ = self.app.request("GET", self.folder + "/info.json")
        self.assertEqual(info.code, 200)

    async def test_one_length_or_chunked_is_read_as_before(self) -> None:
        photo = encode(quadrants((20, 10)))
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(photo), photo)
        for framing, body in (
            (b"Content-Length: %d\r\n" % len(photo), photo),
            (b"Transfer-Encoding: chunked\r\n", chunked),
            (b"transfer-encoding: Chunked\r\n", chunked),  # names and codings: any case
        ):
            answer = await exchange(
                self.port,
                b"POST /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                + framing + b"\r\n" + body,
            )  # fmt: skip
            self.assertEqual((status_of(answer), json_of(answer)["width"]),
                             (200, 20), framing)  # fmt: skip


class AdminMethodTests(TestCase):
    """The admin port's site (probes, metrics, /debug/*) reads only."""

    async def test_only_get_and_head_spelt_so(self) -> None:
        site = BoundedSite(
            AdminApp(Readiness(), Events().registry).app.resource(),
            max_body_bytes=1024,
        )
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        for path in ("/probe/live", "/metrics", "/debug/threads"):
            for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
                for spelt in (method, method.lower(), method.capitalize()):
                    answer = await exchange(number, request_bytes(spelt, path))
                    expected = {"GET": 200, "HEAD": 200}.get(spelt, 501)
                    if path == "/debug/threads" and expected == 200:
                        expected = 404  # --profile is off
                    self.assertEqual(status_of(answer), expected, (spelt, path))


class HeaderBytesTests(TestCase):
    """Header values that are not UTF-8 (one 0xFF byte) in every header a
    route or the log reads, on every route: answered as without them, never
    a 500 (Accept, If-None-Match and If-Modified-Since raised in Twisted's
    UTF-8 decoding)."""

    async def test_every_route_x_header_with_a_byte_that_is_not_utf8(self) -> None:
        app = AppHarness(self)
        folder = app.upload(encode(quadrants((40, 30))))
        main = BoundedSite(app.resource, max_body_bytes=LIMIT, methods=METHODS)
        admin = BoundedSite(
            AdminApp(Readiness(), Events().registry).app.resource(),
            max_body_bytes=1024,
        )
        ports = {}
        for name, site in (("main", main), ("admin", admin)):
            port = reactor.listenTCP(0, site, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            ports[name] = port.getHost().port
        photo = encode(quadrants((20, 10)))
        requests = [
            ("main", "GET", f"{folder}/w20.jpg", b""),
            ("main", "GET", f"{folder}/w20.auto", b""),
            ("main", "HEAD", f"{folder}/w10.png", b""),
            ("main", "GET", f"{folder}/info.json", b""),
            ("main", "GET", f"{folder}/original", b""),
            ("main", "GET", f"{folder}/nosuch.txt", b""),
            ("main", "POST", "/p", photo),
            ("main", "DELETE", f"{folder}/w20.jpg", b""),
            ("main", "GET", "/openapi.json", b""),
            ("admin", "GET", "/metrics", b""),
            ("admin", "GET", "/probe/ready", b""),
        ]
        headers = ("Accept", "If-None-Match", "If-Modified-Since", "User-Agent",
                   "Authorization", "Referer", "Accept-Encoding", "Expect")  # fmt: skip
        with capturedLogs() as logged:
            for port, method, path, body in requests:
                plain = await exchange(
                    ports[port], request_bytes(method, path, {}, body)
                )
                for header in headers:
                    value = "caf\xe9 \xff\xfe" + ("" if header != "Accept" else ",*/*")
                    answer = await exchange(
                        ports[port], request_bytes(method, path, {header: value}, body)
                    )
                    what = (method, path, header)
                    self.assertNotEqual(status_of(answer), 500, what)
                    if header not in ("Authorization", "Expect") and method != "DELETE":
                        self.assertEqual(status_of(answer), status_of(plain), what)
        self.assertEqual([e for e in logged if e.get("log_failure")], [])
