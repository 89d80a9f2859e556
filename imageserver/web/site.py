"""A twisted.web Site that hides tracebacks, bounds bodies and counts requests."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any, AnyStr, cast
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from imageserver.access.cors import CorsPolicy, request_headers
from imageserver.metrics import tracing
from imageserver.metrics.events import Events
from imageserver.runtime.waiting import WhenIdle

access = Logger(namespace="imageserver.access")
refused = Logger(namespace="imageserver.refused")

#: The methods that only read; a site answers these unless told more.
READS = frozenset({b"GET", b"HEAD"})
#: Asks which methods a path takes, and other origins' pages whether they
#: may read it (CORS): answered by the site itself, where it is told how.
OPTIONS = b"OPTIONS"


#: Header lines (name, value).
HeaderLines = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Refusal:
    """An answer given instead of a request's route: ``code``, a JSON error
    saying ``message`` (none for a 204), and ``headers`` (such as a 401's
    challenge)."""

    code: int
    message: str
    headers: HeaderLines = ()


#: Decides from a request's method, target (path and query, as sent) and
#: headers, once its head has arrived and before any of its body is read,
#: whether it is refused.
Admission = Callable[[bytes, bytes, Headers], "Refusal | None"]


def methods_of(app: Any) -> frozenset[bytes]:
    """The methods a Klein ``app``'s routes answer (werkzeug gives every GET
    route HEAD), exactly as they must be spelt."""
    return frozenset(
        method.encode("ascii")
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
    )


class BodyBudget:
    """Bytes of request bodies held at once, across every connection.

    Bodies are kept in memory (never in a temporary directory whose size
    nobody checks); a body that would pass the budget is refused with 503.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held = 0

    def reserve(self, size: int) -> bool:
        if self.held + size > self.max_bytes:
            return False
        self.held += size
        return True

    def release(self, size: int) -> None:
        self.held -= size


class BoundedRequest(Request):
    """Holds its body in memory within the site's limits.

    A declared length over the limit or over the budget is refused by the
    channel before the body is read; a chunked body is refused the moment it
    passes either.
    """

    _started = 0.0
    _held = 0
    #: Set by the channel when the request is refused but has no body to
    #: leave unread: it is answered here, and the connection kept.
    refusal: Refusal | None = None
    #: The request's span while tracing (`imageserver.metrics.tracing`).
    span: Any = None

    def getHeader(self, key: AnyStr) -> AnyStr | None:
        """The last value of a header; as text, decoded as ISO-8859-1.

        Twisted decodes text values as UTF-8, so one byte that is not (in an
        Accept, an If-None-Match, a User-Agent) raised where a route or the
        access log read it: a 500. Every read of a header by name crosses
        this method; octets that are not ASCII are opaque (RFC 9110 section
        5.5) and match nothing.
        """
        if isinstance(key, bytes):
            return super().getHeader(key)
        values = self.requestHeaders.getRawHeaders(key.encode("latin-1"))
        return None if not values else values[-1].decode("latin-1")

    @property
    def bounded_site(self) -> BoundedSite:
        return cast(BoundedSite, self.channel.site)  # type: ignore[attr-defined]

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()  # type: ignore[assignment]

    def handleContentChunk(self, data: bytes) -> None:
        assert self.content is not None
        received = self.content.tell() + len(data)
        if received > self.bounded_site.max_body_bytes:
            self._refuse(413, _too_large(self.bounded_site.max_body_bytes))
            return
        if received > self._held and not self.hold(received - self._held):
            return
        super().handleContentChunk(data)

    def hold(self, size: int) -> bool:
        """Count ``size`` more bytes against the budget, or refuse the body."""
        budget = self.bounded_site.body_budget
        if not budget.reserve(size):
            self._refuse(
                503, "the server is receiving too many bodies now, try again shortly"
            )
            return False
        if not self._held:
            self.notifyFinish().addBoth(lambda _: budget.release(self._held))
        self._held += size
        return True

    def _refuse(self, code: int, message: str) -> None:
        channel = self.channel
        if isinstance(channel, BoundedChannel):
            channel.refuse(code, message)

    def process(self) -> None:
        if self.span is None:
            self._process()
        else:  # what the request starts is its span's child
            tracing.run_in(self.span, self._process)

    def _process(self) -> None:
        site = self.bounded_site
        for name, value in site.answer_headers(self.path):
            self.setHeader(name, value)
        if self.refusal is None and self.method == OPTIONS:
            self.refusal = site.options(self)
        if self.refusal is not None:
            self.answer(self.refusal)
            return
        super().process()

    def answer(self, refusal: Refusal) -> None:
        """Answer ``refusal`` (an error in JSON, or a bodiless 204) instead of
        a route."""
        self.setResponseCode(refusal.code)
        for name, value in refusal.headers:
            self.setHeader(name, value)
        if refusal.code == 204:
            self.finish()
            return
        body = json.dumps({"error": refusal.message}).encode()
        self.setHeader(b"Content-Type", b"application/json")
        self.setHeader(b"Content-Length", str(len(body)).encode())
        self.write(body)
        self.finish()

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            # The head is sent with the first write (finish() makes one).
            self.bounded_site.complete_head(self)
        super().write(data)


#: The methods whose requests may carry a body (uploads, client files,
#: batches): any other request with one is refused before it is read.
BODY_METHODS = frozenset({b"POST"})


def _ignore(data: bytes) -> None:
    pass


def _too_large(limit: int) -> str:
    return f"the body is larger than the limit of {limit} bytes"


#: A Host header's value (RFC 9110 section 7.2): a registered name, an
#: IPv4 address or a bracketed IP literal, then an optional port.
_HOST = re.compile(rb"(\[[0-9A-Za-z:.]+\]|[0-9A-Za-z._~!$&'()*+,;=%-]*)(:[0-9]*)?")
#: A request target in absolute form (RFC 9112 section 3.2.2).
_ABSOLUTE = re.compile(rb"https?://", re.IGNORECASE)


def _origin_form(target: bytes) -> tuple[bytes, bytes]:
    """The authority and the path (with its query) of an absolute-form
    request target, ``http://host:port/path?query``."""
    rest = target.split(b"://", 1)[1]
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=-1)
    if cut < 0:
        return rest, b"/"
    authority, path = rest[:cut], rest[cut:]
    return authority, path if path.startswith(b"/") else b"/" + path


def _path_refusal(
    path: bytes,
    slashes_encoded: Callable[[bytes], bool] = lambda path: False,
    method: bytes = b"GET",
) -> Refusal | None:
    """Targets no route may see: the asterisk and anything else that is not
    a path (an absolute URL is made one before), encoded slashes and empty
    segments (a name never holds one; but a path ``slashes_encoded``
    accepts, a thumbor URL's image URL, may when read) and percent-escapes
    that are not UTF-8.

    Empty segments are refused here, where every route passes, because the
    router drops leading ones (``//p`` would upload into ``p`` while the
    rates and metrics took it for another route)."""
    if path == b"*":
        return Refusal(
            400, "the request target * is for OPTIONS, not served here: ask for a path"
        )
    if not path.startswith(b"/"):
        return Refusal(400, "the request target is not a path: start it with /")
    if b"%2f" in path.lower() and not slashes_encoded(path):
        return Refusal(404, "unknown path: encoded slashes are not part of any name")
    if b"//" in path and not (
        # A thumbor URL read, whose image URL may hold http://; never at the
        # start, which the router drops (//p/... would be p's own routes).
        method in (b"GET", b"HEAD")
        and not path.startswith(b"//")
        and slashes_encoded(path)
    ):
        return Refusal(
            404, "unknown path: it has an empty segment (//): write one slash"
        )
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return Refusal(400, "the path is not UTF-8")
    return None


#: What Twisted refuses on its own (it answered a bare 400).
MALFORMED = (
    "the request is not well-formed HTTP/1.1: check the request line, the "
    "headers (name: value, no NUL, CR or LF in a value, at most {headers} of "
    "them in {size} bytes) and the chunk sizes of a chunked body"
)


def _framing_refusal(
    framing: tuple[tuple[bytes, bytes], ...], version: bytes
) -> str | None:
    """Why the framing headers of a request so far (name in lower case,
    value) leave its body's length in doubt, or None.

    One Content-Length of ASCII digits, or one Transfer-Encoding naming
    chunked alone (coding names are case-insensitive, RFC 9112 section 7) on
    HTTP/1.1, and nothing else: a proxy in front may read any other mix
    differently from us, and a body read two ways lets one request hide
    inside another (RFC 9112 section 6.3).
    """
    (name, value), earlier = framing[-1], framing[:-1]
    if earlier:
        return (
            "the body's length is ambiguous: send one Content-Length or one "
            "Transfer-Encoding: chunked, not several, not both"
        )
    if name == b"content-length" and not re.fullmatch(rb"[0-9]{1,18}", value):
        return "Content-Length must be a number of bytes"
    if name == b"transfer-encoding":
        if version != b"HTTP/1.1":
            return f"Transfer-Encoding is not allowed in {version.decode('latin-1')}"
        if value.lower() != b"chunked":
            return "the only Transfer-Encoding accepted is chunked"
    return None


class BoundedChannel(HTTPChannel):
    """An HTTP connection that answers what it refuses, in JSON, and closes.

    A request's head (request line and headers) must arrive whole within the
    site's ``head_timeout`` from its first byte, however slowly it trickles;
    a body declared over the limit is refused before a byte of it is read
    (no ``100 Continue``); a line over 16 KiB gets a 400, not a silent close.
    A method the site does not implement, in any spelling, is a 501, a body
    whose length is ambiguous or on a method that takes none a 400, all
    before any of it is read.
    """

    site: BoundedSite
    _head_deadline: IDelayedCall | None = None
    _awaiting_head = True
    _refused = False
    #: The framing headers of the request being read: (name, value).
    _framing: tuple[tuple[bytes, bytes], ...] = ()
    #: Lines of the request head read so far.
    _head_lines = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self.site.connection_opened(self):
            self.refuse(503, "the server has too many connections, try again shortly")

    def dataReceived(self, data: bytes) -> None:
        if self._awaiting_head and self._head_deadline is None:
            self._head_deadline = self.site.clock.callLater(
                self.site.head_timeout, self._head_too_slow
            )
        super().dataReceived(data)

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        self.refuse(408, "the request head did not arrive in time")

    def _head_received(self) -> None:
        self._awaiting_head = False
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(
            400, f"the request line or a header is over {self.MAX_LENGTH} bytes"
        )

    def lineReceived(self, line: bytes) -> None:
        if self._head_lines and line[:1] in (b" ", b"\t"):
            # A header folded onto the next line (obs-fold, RFC 9112 section
            # 5.2): a proxy in front may read it otherwise.
            self.refuse(
                400,
                "a header folded onto a following line is not accepted: send "
                "each header on one line",
            )
            return
        self._head_lines += 1
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        name, colon, value = line.partition(b":")
        name = name.lower()
        if colon and name in (b"content-length", b"transfer-encoding"):
            self._framing += ((name, value.strip(b" \t")),)
            problem = _framing_refusal(self._framing, self._version)
            if problem is not None:
                self.refuse(400, problem)
                return False
        return super().headerReceived(line)  # type: ignore[no-any-return]

    def allHeadersReceived(self) -> None:
        self._head_received()
        self._framing = ()
        self._head_lines = 0
        hosts = self.requests[-1].requestHeaders.getRawHeaders(b"host", [])
        if len(hosts) > 1 or (not hosts and self._version == b"HTTP/1.1"):
            # RFC 9112 section 3.2: which host is meant must not be in doubt.
            self.refuse(400, "an HTTP/1.1 request carries exactly one Host header")
            return
        if hosts and not _HOST.fullmatch(hosts[0]):
            self.refuse(400, "the Host header is not a host name or address")
            return
        if _ABSOLUTE.match(self._path):
            # RFC 9112 section 3.2.2: the absolute form (what a client sends
            # to a proxy) is accepted; its authority is the host meant. From
            # here every check and route sees the path, as for any request.
            authority, path = _origin_form(self._path)
            if not _HOST.fullmatch(authority):
                self.refuse(400, "the request target's host is not a host name")
                return
            self._path = path
            self.requests[-1].requestHeaders.setRawHeaders(b"host", [authority])
        if self._command not in self.site.methods:
            # Methods are case-sensitive (RFC 9110 section 9.1): "post" is
            # not POST, and is refused before a route or a guard sees it.
            allowed = ", ".join(sorted(m.decode() for m in self.site.methods))
            self.refuse(
                501,
                f"the method {self._command.decode('latin-1')!r} is not "
                f"implemented here (methods are case-sensitive): use one of "
                f"{allowed}",
            )
            return
        request = self.requests[-1]
        refusal = self.site.admission(self._command, self._path, request.requestHeaders)
        if refusal is not None:
            if self.length != 0:  # a body follows (None: chunked): leave it unread
                self.refuse(refusal.code, refusal.message, refusal.headers)
                return
            request.refusal = refusal
            # Answered at once: nothing is to be sent, so no 100 Continue.
            request.requestHeaders.removeHeader(b"Expect")
        if self.length != 0 and self._command not in BODY_METHODS:
            # Never read, buffered nor counted against the bodies' budget
            # (no 100 Continue): no route of these methods reads a body.
            takes = (
                "only POST carries a body"
                if BODY_METHODS & self.site.methods
                else "this port takes no bodies"
            )
            self.refuse(
                400,
                f"a {self._command.decode()} request takes no body here: send it "
                f"without one ({takes})",
            )
            return
        limit = self.site.max_body_bytes
        if self.length is not None and self.length > limit:
            self.refuse(413, _too_large(limit))
            return
        if self.length and not request.hold(self.length):
            return
        # In flight from here: a shutdown waits for a body still arriving
        # (named already for the log, should the client give up sending it).
        request.method, request.uri = self._command, self._path
        request.path = self._path.partition(b"?")[0]
        request._started = time.perf_counter()
        self.site.request_started(request)
        super().allHeadersReceived()

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.refuse(
            400,
            MALFORMED.format(headers=self.maxHeaders, size=self.totalHeadersSize),
        )

    def requestDone(self, request: Request) -> None:
        super().requestDone(request)
        self._awaiting_head = True

    def refuse(self, code: int, message: str, extra: HeaderLines = ()) -> None:
        """Answer ``code`` with a JSON error (and ``extra`` headers) at once and
        close the connection.

        Only for requests not yet handed to a resource: nothing else has
        written to the connection.
        """
        self._head_received()
        self._refused = True
        if self.transport is None or getattr(self.transport, "disconnecting", False):
            return
        body = json.dumps({"error": message}).encode()
        headers = [
            f"HTTP/1.1 {code} {http.RESPONSES.get(code, b'Error').decode()}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if code == 503:
            headers.append("Retry-After: 5")
        target = getattr(self, "_path", None)  # once the request line is read
        if target is not None:
            extra = (*self.site.answer_headers(target.partition(b"?")[0]), *extra)
        headers += [f"{n.decode('latin-1')}: {v.decode('latin-1')}" for n, v in extra]
        self.transport.write("\r\n".join(headers).encode() + b"\r\n\r\n" + body)
        refused.info(
            "refused {peer}: {status} {message}",
            peer=getattr(self.transport.getPeer(), "host", ""),
            status=code,
            message=message,
        )
        # Whatever else the client sends is dropped unread, also what is
        # still buffered.
        self.dataReceived = self.lineReceived = self.rawDataReceived = _ignore  # type: ignore[method-assign,assignment]
        self.loseConnection()

    def allContentReceived(self) -> None:
        # Twisted goes on to a request without a body once the headers end,
        # also after one of them was refused.
        if not self._refused:
            super().allContentReceived()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._head_received()
        self.site.connection_closed(self)
        super().connectionLost(reason)


class BoundedSite(Site):
    """Our Site: see `BoundedRequest` and `BoundedChannel`; every answered
    request is logged once.

    ``route_of`` names a request's route for metrics and logs (a small fixed
    set, never the raw path); ``events`` receives the counts and timings.
    ``methods`` are all the site answers, spelt exactly (`methods_of` an app):
    every request crosses the site, so this is the one place a method is
    checked, and what is behind it (routes, metrics) sees only these.
    ``admit`` decides who may do what (`imageserver.web.access`), also here
    and for the same reason, when a request's head has arrived: a refused
    request's body is never read (nor a ``100 Continue`` sent for it).
    ``answer_headers`` are those every answer to a path carries, whoever
    gives it (a route, a refusal). ``slashes_encoded`` says which paths may
    hold an encoded slash (thumbor's URLs, whose image may be an encoded
    URL). A ``traced`` site gives each request a span while tracing is on
    (`imageserver.metrics.tracing`).
    """

    requestFactory = BoundedRequest
    protocol = BoundedChannel  # type: ignore[assignment]
    displayTracebacks = False
    #: The listening port says where it listens (`imageserver.runtime.listening`).
    noisy = False

    def __init__(
        self,
        resource: IResource,
        max_body_bytes: int,
        events: Events | None = None,
        route_of: Callable[[Request], str] = lambda request: "other",
        idle_timeout: float = 60,
        clock: IReactorTime | None = None,
        head_timeout: float = 10,
        max_connections: int = 1000,
        body_budget: BodyBudget | None = None,
        methods: frozenset[bytes] = READS,
        admit: Admission | None = None,
        answer_headers: Callable[[bytes], HeaderLines] = lambda path: (),
        slashes_encoded: Callable[[bytes], bool] = lambda path: False,
        allowed_methods: Callable[[bytes], frozenset[bytes]] | None = None,
        cors: CorsPolicy | None = None,
        traced: bool = False,
    ) -> None:
        # Bodies are images and files, never forms: twisted.web must not parse
        # them into request.args (nor answer a bare 400 to a bad multipart one).
        super().__init__(
            resource,
            timeout=idle_timeout,
            reactor=clock,
            parsePOSTFormSubmission=False,
        )
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = cast(IReactorTime, clock)
        self.max_body_bytes = max_body_bytes
        self.head_timeout = head_timeout
        self.max_connections = max_connections
        self.methods = methods | ({OPTIONS} if allowed_methods is not None else set())
        self._allowed_methods = allowed_methods
        self._cors = cors
        self.traced = traced
        self._admit = admit
        self.answer_headers = answer_headers
        self.slashes_encoded = slashes_encoded
        self.body_budget = body_budget or BodyBudget(4 * max_body_bytes)
        self.connections = 0
        #: Open connections, and those closing once their answers are sent.
        self._channels: set[BoundedChannel] = set()
        self._closing: set[BoundedChannel] = set()
        self._closed = WhenIdle(lambda: bool(self._closing))
        self._events = events
        self._route_of = route_of
        self.in_flight = 0
        self._idle = WhenIdle(lambda: self.in_flight > 0)

    def admission(
        self, method: bytes, target: bytes, headers: Headers
    ) -> Refusal | None:
        """Whether a request whose head has arrived is refused, and how."""
        refusal = _path_refusal(target.partition(b"?")[0], self.slashes_encoded, method)
        if refusal is None and self._admit is not None:
            refusal = self._admit(method, target, headers)
        return refusal

    def options(self, request: BoundedRequest) -> Refusal:
        """The answer to an OPTIONS request: the path's methods (``Allow``),
        and to a page's preflight (``Origin`` and
        ``Access-Control-Request-Method``) whether it may read (CORS)."""
        assert self._allowed_methods is not None
        allowed = self._allowed_methods(request.path)
        if not allowed:
            return Refusal(404, "unknown path: no route takes it")
        allow = b", ".join(sorted(allowed | {OPTIONS}))
        lines: list[tuple[bytes, bytes]] = [(b"Allow", allow)]
        origin = request.getHeader("Origin")
        method = request.getHeader("Access-Control-Request-Method")
        if origin is None or method is None:
            return Refusal(204, "", lines)
        if self._cors is None:
            return Refusal(
                403,
                "this server's answers are not open to other origins' pages "
                "(--cors_origins)",
                lines,
            )
        try:
            wanted = request_headers(
                request.getHeader("Access-Control-Request-Headers")
            )
        except ValueError as e:
            return Refusal(400, f"Access-Control-Request-Headers: {e}", lines)
        preflight = self._cors.preflight(origin, method, wanted)
        return Refusal(preflight.code, preflight.refusal or "", lines + preflight.lines)

    def complete_head(self, request: BoundedRequest) -> None:
        """Add what every answer to a read carries, whoever made it: the
        CORS headers (`CorsPolicy.answer_lines`), ``Vary`` merged into one."""
        if self._cors is None or request.method not in READS:
            return
        headers = request.responseHeaders
        for name, value in self._cors.answer_lines(request.getHeader("Origin")):
            if name == b"Vary":
                values = [
                    v.strip()
                    for line in headers.getRawHeaders(b"Vary", [])
                    for v in line.split(b",")
                    if v.strip()
                ]
                if value.lower() not in {v.lower() for v in values}:
                    values.append(value)
                headers.setRawHeaders(b"Vary", [b", ".join(values)])
            else:
                headers.setRawHeaders(name, [value])

    def connection_opened(self, channel: BoundedChannel) -> bool:
        """Count a new connection; False when it is one too many."""
        self.connections += 1
        self._channels.add(channel)
        return self.connections <= self.max_connections

    def connection_closed(self, channel: BoundedChannel) -> None:
        self.connections -= 1
        self._channels.discard(channel)
        self._closing.discard(channel)
        self._closed.check()

    def close_answered(self) -> Deferred[None]:
        """Close every connection with no request unanswered, each once what
        it was sent has left (the reactor's stop would cut a large answer
        still in the socket's buffer); fires when they all have."""
        for channel in list(self._channels):  # closing may drop one
            if not channel.requests and channel.transport is not None:
                self._closing.add(channel)
                channel.transport.loseConnection()
        return self._closed.wait()

    def wait_idle(self) -> Deferred[None]:
        """Fires once no request is in flight."""
        return self._idle.wait()

    def request_started(self, request: BoundedRequest) -> None:
        self.in_flight += 1
        if self._events is not None:
            self._events.request_started()
        if self.traced:
            request.span = tracing.start_request(
                request.method.decode("ascii", "replace"),
                lambda name: request.requestHeaders.getRawHeaders(name),
            )
        request.notifyFinish().addBoth(self._finished, request)

    def _finished(self, result: Any, request: BoundedRequest) -> None:
        """On the last byte sent, or on the client hanging up first."""
        self.in_flight -= 1
        self._idle.check()
        duration = time.perf_counter() - request._started
        route = self._route_of(request)
        method = request.method.decode("ascii", "replace")
        completed = result is None
        if self._events is not None:
            self._events.request_finished(route, method, request.code, duration)
        access.info(
            "{method} {uri} {status} {bytes} {duration:.4f}s{gone}",
            method=method,
            uri=request.uri.decode("ascii", "replace"),
            route=route,
            status=request.code,
            bytes=request.sentLength,
            duration=duration,
            peer=getattr(request.getClientAddress(), "host", ""),
            user_agent=(request.getHeader("user-agent") or ""),
            gone="" if completed else " (client hung up)",
        )
        if request.span is not None:
            tracing.end_request(
                request.span,
                method,
                route,
                request.code,
                request.path.decode("ascii", "replace"),
            )

    def log(self, request: http.Request) -> None:
        """The access log is written in ``_finished``, with structured fields."""
