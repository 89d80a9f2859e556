"""A twisted.web Site that hides tracebacks, bounds bodies and counts requests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from zope.interface import implementer

from imageserver.events import Events
from imageserver.signing import verify
from imageserver.waiting import WhenIdle

access = Logger(namespace="imageserver.access")


class BoundedRequest(Request):
    """Stops keeping a request body once it passes the site's limit.

    The handler sees ``body_too_large`` and answers 413; the bytes past the
    limit are read and dropped, never held in memory or on disk.
    """

    body_too_large = False
    _received = 0
    _started = 0.0

    @property
    def max_body_bytes(self) -> int:
        site = cast(BoundedSite, self.channel.site)  # type: ignore[attr-defined]
        return site.max_body_bytes

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body_bytes:
            self.body_too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._received += len(data)
        if self._received > self.max_body_bytes:
            self.body_too_large = True
            assert self.content is not None
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        site = cast(BoundedSite, self.channel.site)  # type: ignore[attr-defined]
        self._started = time.perf_counter()
        site.request_started(self)
        super().process()


class BoundedSite(Site):
    """Our Site: see `BoundedRequest`; every answered request is logged once.

    ``route_of`` names a request's route for metrics and logs (a small fixed
    set, never the raw path); ``events`` receives the counts and timings.
    """

    requestFactory = BoundedRequest
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        max_body_bytes: int,
        events: Events | None = None,
        route_of: Callable[[Request], str] = lambda request: "other",
        idle_timeout: float = 60,
        clock: IReactorTime | None = None,
    ) -> None:
        # Bodies are images and files, never forms: twisted.web must not parse
        # them into request.args (nor answer a bare 400 to a bad multipart one).
        super().__init__(
            resource,
            timeout=idle_timeout,
            reactor=clock,
            parsePOSTFormSubmission=False,
        )
        self.max_body_bytes = max_body_bytes
        self._events = events
        self._route_of = route_of
        self.in_flight = 0
        self._idle = WhenIdle(lambda: self.in_flight > 0)

    def wait_idle(self) -> Deferred[None]:
        """Fires once no request is in flight."""
        return self._idle.wait()

    def request_started(self, request: BoundedRequest) -> None:
        self.in_flight += 1
        if self._events is not None:
            self._events.request_started()
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

    def log(self, request: http.Request) -> None:
        """The access log is written in ``_finished``, with structured fields."""


@implementer(IResource)
class SignatureGuard:
    """Lets through only requests whose URL is signed with the secret.

    ``unsigned`` lists the (method, path) pairs that stay open, such as the
    health check for load balancers; HEAD goes with GET. Anything else,
    including another method on an open path (``POST /status_check`` is an
    upload into a namespace of that name), needs a signature. A refusal is the
    same JSON 403 for a missing and a wrong signature.
    """

    isLeaf = True

    def __init__(
        self,
        wrapped: IResource,
        secret: bytes,
        unsigned: frozenset[tuple[bytes, bytes]] = frozenset(),
    ) -> None:
        self._wrapped = wrapped
        self._secret = secret
        self._unsigned = unsigned

    def getChildWithDefault(self, name: bytes, request: Request) -> IResource:
        return self

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError

    def render(self, request: Request) -> bytes | int:
        method = b"GET" if request.method == b"HEAD" else request.method
        if (method, request.path) not in self._unsigned and not verify(
            self._secret, request.uri.decode("latin-1")
        ):
            body = b'{"error": "this URL needs a valid signature (sig)"}'
            request.setResponseCode(403)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Content-Length", str(len(body)).encode())
            return body
        return self._wrapped.render(request)  # type: ignore[no-any-return]
