"""Fetching originals from source URLs with treq, within a deadline and a size limit."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn
from urllib.parse import urlsplit

from hyperlink import EncodedURL
from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    PotentialDataLoss,
    RedirectAgent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.error import InfiniteRedirection, SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IResponse
from zope.interface import implementer

from imageserver import __version__
from imageserver.errors import (
    ContentTooLarge,
    Forbidden,
    ImageServerError,
    InvalidRequest,
    NotFound,
    SourceTimeout,
    SourceUnavailable,
)
from imageserver.metrics import tracing
from imageserver.sources.addresses import SourcePolicy, source_host
from imageserver.sources.origins import Fetched
from imageserver.sources.outbound import connect_bounded

log = Logger()

_HEADERS = Headers({b"User-Agent": [f"imageserver/{__version__}".encode()]})
#: Every way a connection or an exchange can fail before a whole answer arrives.
_TRANSPORT_ERRORS = (
    error.ConnectError,
    error.DNSLookupError,
    error.ConnectionLost,
    error.ConnectionClosed,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
    SchemeNotSupported,
)


@implementer(IAgentEndpointFactory)
class GuardedEndpoints:
    """Connects an Agent only to addresses the policy allows.

    Each hop (the first request and every redirect) is checked here: the host
    against the allowlist, then every address it resolves to. The connection
    goes to the address that was checked, so a second DNS answer cannot
    slip a private address in (DNS rebinding). HTTPS still verifies the
    certificate against the host name.
    """

    def __init__(
        self,
        reactor: Any,
        policy: SourcePolicy,
        resolve: Callable[[str, int], Awaitable[list[str]]] | None = None,
        connect_timeout: float = 10,
    ) -> None:
        self._reactor = reactor
        self._policy = policy
        self._resolve = resolve or self._getaddrinfo
        self._timeout = connect_timeout

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        scheme = uri.scheme.decode("ascii", "replace")
        if scheme not in ("http", "https"):
            raise Forbidden(f"source redirected to a {scheme} URL; only http(s)")
        try:
            host = source_host(uri.host.decode("utf-8"))
        except (ValueError, UnicodeError) as e:
            raise InvalidRequest(str(e)) from None
        return _Guarded(self, scheme, host, uri.port)

    async def _getaddrinfo(self, host: str, port: int) -> list[str]:
        infos = await deferToThreadPool(
            self._reactor,
            self._reactor.getThreadPool(),
            socket.getaddrinfo,
            host,
            port,
            0,
            socket.SOCK_STREAM,
        )
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def connect(self, scheme: str, host: str, port: int, factory: Any) -> Any:
        refused = self._policy.endpoint_refusal(
            scheme, host, port
        ) or self._policy.host_refusal(host)
        if refused:
            raise Forbidden(refused)
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                addresses = await self._resolve(host, port)
            except OSError as e:
                raise SourceUnavailable(
                    f"source host {host} was not found (DNS)"
                ) from e
        for address in addresses:
            refused = self._policy.address_refusal(host, address)
            if refused:
                raise Forbidden(refused)
        if not addresses:
            raise SourceUnavailable(f"source host {host} has no address")
        address = addresses[0]
        endpoint: IStreamClientEndpoint
        if ":" in address:
            endpoint = TCP6ClientEndpoint(self._reactor, address, port, self._timeout)
        else:
            endpoint = TCP4ClientEndpoint(self._reactor, address, port, self._timeout)
        if scheme == "https":
            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        try:
            return await connect_bounded(endpoint, factory)
        except error.TimeoutError:
            raise SourceTimeout(
                f"source host {host} did not accept a connection within "
                f"{self._timeout:g} seconds"
            ) from None
        except error.ConnectError as e:
            raise _unreachable(host, port, e) from None


@implementer(IStreamClientEndpoint)
class _Guarded:
    def __init__(
        self, endpoints: GuardedEndpoints, scheme: str, host: str, port: int
    ) -> None:
        self._endpoints = endpoints
        self._scheme = scheme
        self._host = host
        self._port = port

    def connect(self, factory: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(
            self._endpoints.connect(self._scheme, self._host, self._port, factory)
        )


def source_agent(
    reactor: Any,
    pool: HTTPConnectionPool,
    policy: SourcePolicy,
    max_redirects: int,
    resolve: Callable[[str, int], Awaitable[list[str]]] | None = None,
) -> IAgent:
    """The Agent source fetches go through: guarded, following few redirects."""
    endpoints = GuardedEndpoints(reactor, policy, resolve)
    agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
    return RedirectAgent(agent, redirectLimit=max_redirects)


def request_uri(url: str) -> bytes:
    """``url`` as an Agent sends it: host checked and IDNA-encoded, the rest
    percent-encoded; ValueError says what is wrong.

    hyperlink (as treq uses it) would IDNA-encode an address host too, and
    fails on ``[::1]`` (python-hyper/hyperlink#68) and on zone ids: it sees a
    placeholder name instead, and the address goes back in afterwards. An
    encoded host name is decoded first.
    """
    parts = urlsplit(url)
    host = source_host(parts.hostname or "")
    userinfo, at, _ = parts.netloc.rpartition("@")
    port = "" if parts.port is None else f":{parts.port}"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        named = parts._replace(netloc=f"{userinfo}{at}{host}{port}").geturl()
        return _to_uri(named).encode("ascii")
    placeholder = parts._replace(netloc=f"{userinfo}{at}address.invalid{port}")
    uri = urlsplit(_to_uri(placeholder.geturl()))
    literal = f"[{host.replace('%', '%25')}]" if ":" in host else host
    userinfo, at, host_and_port = uri.netloc.rpartition("@")
    netloc = userinfo + at + literal + host_and_port.removeprefix("address.invalid")
    return uri._replace(netloc=netloc).geturl().encode("ascii")


def _to_uri(iri: str) -> str:
    return EncodedURL.from_text(iri).to_uri().to_text(with_password=True)


class SourceFetcher:
    """Downloads a source URL into memory, or raises one of our errors.

    ``timeout`` bounds the whole exchange, body included (an Agent's
    connection timeout stops counting once connected).
    """

    def __init__(
        self, agent: IAgent, clock: IReactorTime, timeout: float, max_bytes: int
    ) -> None:
        self._agent = agent
        self._clock = clock
        self._timeout = timeout
        self._max_bytes = max_bytes

    async def fetch(self, url: str) -> bytes:
        fetched = await self.fetch_object(url, None)
        assert fetched is not None  # nothing known: never "not modified"
        return fetched.data

    async def fetch_object(self, url: str, known: str | None) -> Fetched | None:
        """The object at ``url`` with its validator, or None when the server
        says it is still the one ``known`` names (a conditional request)."""
        try:
            parts = urlsplit(url)
            hostname, port = parts.hostname, parts.port
        except ValueError as e:  # unbalanced brackets, a port out of range
            raise InvalidRequest(f"source is not a valid URL ({e})") from None
        if parts.scheme not in ("http", "https") or not hostname:
            raise InvalidRequest("source must be an absolute http or https URL")
        try:
            uri = request_uri(url)
            host = source_host(hostname)
        except ValueError as e:
            raise InvalidRequest(str(e)) from None
        port = port or (443 if parts.scheme == "https" else 80)
        answered: list[bool] = []

        def timed_out(result: object, timeout: float) -> NoReturn:
            # Whatever the cancelled exchange failed with (a lost connection,
            # a cancelled connect), running out of time is what happened.
            if answered:
                raise SourceTimeout(
                    f"source host {host} did not send the whole image within "
                    f"{timeout:g} seconds"
                )
            raise SourceTimeout(
                f"source host {host} did not answer within {timeout:g} seconds"
            )

        with tracing.span("fetch", {"server.address": host, "server.port": port}):
            download = defer.Deferred.fromCoroutine(
                self._download(uri, answered, known)
            )
            download.addTimeout(self._timeout, self._clock, onTimeoutCancel=timed_out)
            try:
                return await download
            except _TRANSPORT_ERRORS as e:
                log.info("source {url} failed: {error}", url=url, error=e)
                raise _explained(e, host, port) from None

    async def _download(
        self, uri: bytes, answered: list[bool], known: str | None
    ) -> Fetched | None:
        headers = _HEADERS.copy()
        if known is not None:
            kind, _, value = known.partition(":")
            name = b"If-None-Match" if kind == "etag" else b"If-Modified-Since"
            headers.setRawHeaders(name, [value.encode("latin-1")])
        trace: dict[str, str] = {}
        tracing.inject(trace)
        for header, value in trace.items():
            headers.setRawHeaders(header, [value])
        response = await self._agent.request(b"GET", uri, headers)
        answered.append(True)
        if response.code == 304 and known is not None:
            _discard(response)
            return None
        if response.code in (404, 410):
            _discard(response)
            raise NotFound(f"source answered {response.code}")
        if not 200 <= response.code < 300:
            _discard(response)
            raise SourceUnavailable(f"source answered {response.code}")
        if isinstance(response.length, int) and response.length > self._max_bytes:
            _discard(response)
            raise ContentTooLarge(self._too_large())
        data = await read_bounded(
            response, self._max_bytes, ContentTooLarge(self._too_large())
        )
        return Fetched(data, _validator(response.headers))

    def _too_large(self) -> str:
        return f"source is larger than the limit of {self._max_bytes} bytes"


def _validator(headers: Headers) -> str | None:
    """What names this answer's bytes for a conditional request: its strong
    or weak ETag, else its Last-Modified (latin-1, as HTTP carries them)."""
    for name, kind in ((b"ETag", "etag"), (b"Last-Modified", "modified")):
        values = headers.getRawHeaders(name)
        if values and values[-1].strip() and len(values[-1]) <= 1024:
            return f"{kind}:{values[-1].strip().decode('latin-1')}"
    return None


def _unreachable(host: str, port: int, e: error.ConnectError) -> SourceUnavailable:
    """A connection that failed, said as a user can act on it."""
    if isinstance(e, error.ConnectionRefusedError):
        return SourceUnavailable(
            f"source host {host} refused the connection on port {port}"
        )
    reason = str(e).rstrip(".")
    return SourceUnavailable(f"source host {host} could not be reached ({reason})")


def _explained(e: Exception, host: str, port: int) -> ImageServerError:
    """Why a download failed, for the client: the refusal or redirect loop
    found on the way (they come wrapped), or what happened to the connection."""
    for reason in getattr(e, "reasons", ()):
        if reason.check(ImageServerError):
            return reason.value  # type: ignore[no-any-return]
        if reason.check(InfiniteRedirection):
            return SourceUnavailable("source redirected too many times")
    if isinstance(e, error.DNSLookupError):  # unguarded: the guard resolves
        return SourceUnavailable(f"source host {host} was not found (DNS)")
    if isinstance(e, error.TimeoutError):  # a connect timeout, unguarded
        return SourceTimeout(f"source host {host} did not accept a connection")
    if isinstance(e, error.ConnectError):
        return _unreachable(host, port, e)
    if isinstance(e, ResponseNeverReceived):
        return SourceUnavailable(
            f"source host {host} closed the connection without answering"
        )
    return SourceUnavailable(
        f"the connection to source host {host} broke before the whole answer arrived"
    )


class _Bounded(Protocol):
    def __init__(self, limit: int, too_large: Exception | None) -> None:
        self.done: Deferred[bytes] = Deferred(self._cancel)
        self._limit = limit
        self._too_large = too_large
        self._chunks: list[bytes] = []
        self._received = 0

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        room = self._limit - self._received
        self._received += len(data)
        if len(data) <= room:
            self._chunks.append(data)
            return
        self.transport.stopProducing()  # type: ignore[union-attr]
        if self._too_large is not None:
            self.done.errback(self._too_large)
        else:
            self.done.callback(b"".join(self._chunks) + data[:room])

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)

    def _cancel(self, _: object) -> None:
        # A deadline: nothing more is read, and the connection is closed.
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


def read_bounded(
    response: IResponse, limit: int, too_large: Exception | None = None
) -> Deferred[bytes]:
    """At most ``limit`` bytes of ``response``'s body, never more in memory.

    Past the limit the connection is closed and the Deferred fails with
    ``too_large``, or (without one) fires with the first ``limit`` bytes.
    Cancelling it (a deadline) closes the connection too, so a body that
    keeps coming is never read on after its reader gave up.
    """
    body = _Bounded(limit, too_large)
    response.deliverBody(body)
    return body.done


class _Discard(Protocol):
    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


def _discard(response: IResponse) -> None:
    """Drop an unwanted body without reading it; the connection is closed."""
    response.deliverBody(_Discard())
