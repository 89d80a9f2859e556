"""What every outbound HTTP connection (source fetches, webhooks) shares.

Twisted's HTTP client holds an answer's status line and headers in memory
until they end, however many there are; bodies are bounded by their readers
(`imageserver.sources.fetcher.read_bounded`), heads here: each connection counts the
bytes of every answer's head and drops the connection past the limit.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

log = Logger()

#: Bytes of an answer's status line and headers (with any 1xx answers
#: before it); real answers have a few hundred, browsers and proxies stop
#: at 64 KiB to 256 KiB.
MAX_HEAD_BYTES = 64 * 1024


class _HeadBound(ProtocolWrapper):
    """The transport of an HTTP client connection, counting answers' heads.

    A head starts when the client writes (a request) while no head is being
    read, and ends at its empty line, unless its status is 1xx (another head
    follows, counted with it). Past ``limit`` bytes the connection is
    aborted: the request fails, nothing more is held.
    """

    factory: _HeadBoundFactory
    _reading_head = False
    _counted = 0
    _line = b""
    _status_line = True
    _informational = False

    def write(self, data: bytes) -> None:
        self._start()
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self._start()
        super().writeSequence(data)

    def _start(self) -> None:
        if not self._reading_head:
            self._reading_head, self._counted = True, 0
            self._line, self._status_line = b"", True

    def dataReceived(self, data: bytes) -> None:
        if self._reading_head and not self._scan(data):
            limit = self.factory.limit
            log.warn(
                "{peer} answered with a head over {limit} bytes: connection dropped",
                peer=self.getPeer(),
                limit=limit,
            )
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        super().dataReceived(data)

    def _scan(self, data: bytes) -> bool:
        """Follow the head through ``data``; False once it is over the limit."""
        *lines, rest = (self._line + data).split(b"\n")
        for line in lines:
            self._counted += len(line) + 1
            if self._status_line:
                self._status_line = False
                code = line.split(b" ", 2)[1:2]
                self._informational = code[0][:1] == b"1" if code else False
            elif line.rstrip(b"\r") == b"":
                if not self._informational:
                    self._reading_head = False
                    return self._counted <= self.factory.limit
                self._status_line = True
            if self._counted > self.factory.limit:
                return False
        self._line = rest
        return self._counted + len(rest) <= self.factory.limit


class _HeadBoundFactory(WrappingFactory):
    protocol = _HeadBound

    def __init__(self, wrapped: Any, limit: int) -> None:
        super().__init__(wrapped)
        self.limit = limit


def connect_bounded(
    endpoint: IStreamClientEndpoint, factory: Any, limit: int = MAX_HEAD_BYTES
) -> Deferred[IProtocol]:
    """``endpoint.connect(factory)``, the heads it receives held to ``limit``;
    fires with ``factory``'s own protocol, as an Agent's pool expects."""
    connected: Deferred[Any] = endpoint.connect(_HeadBoundFactory(factory, limit))
    return connected.addCallback(lambda wrapper: wrapper.wrappedProtocol)


@implementer(IStreamClientEndpoint)
class _Bounded:
    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, factory: Any) -> Deferred[IProtocol]:
        return connect_bounded(self._endpoint, factory)


@implementer(IAgentEndpointFactory)
class BoundedEndpoints:
    """An Agent's endpoints to any http(s) host (names verified for TLS),
    answers' heads held to `MAX_HEAD_BYTES`: for receivers the operator
    names (webhooks); sources go through
    `imageserver.sources.fetcher.GuardedEndpoints`."""

    def __init__(self, reactor: Any, connect_timeout: float = 10) -> None:
        self._reactor = reactor
        self._timeout = connect_timeout

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        host = uri.host.decode("idna")
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, uri.host, uri.port, self._timeout
        )
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        return _Bounded(endpoint)
