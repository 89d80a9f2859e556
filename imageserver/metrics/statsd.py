"""A statsd client on the reactor: UDP datagrams, fire and forget."""

from __future__ import annotations

import ipaddress

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IReactorCore, IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


def _stopped(failure: Failure) -> None:
    """Stopped before the socket opened (waiting to resolve the host again)."""
    failure.trap(CancelledError)


class StatsdClient(DatagramProtocol, Service):
    """Sends each statsd line as one datagram to ``host:port``.

    Sending never blocks and never fails a caller: until the socket is open,
    and whenever the network refuses, lines are dropped. Call ``send`` on the
    reactor thread.

    A host name is resolved by the reactor's resolver (in a thread, never
    blocking the reactor); one that does not resolve is a warning at start-up,
    and is tried again every `RETRY_SECONDS` until it does.
    """

    #: Seconds between tries to resolve a host name that did not resolve.
    RETRY_SECONDS = 30.0

    def __init__(self, reactor: IReactorUDP, host: str, port: int) -> None:
        self._reactor = reactor
        self._host = host
        self._port = port
        self._udp = None
        self._retry: Deferred[None] | None = None
        self.sent = 0
        #: Fires once the socket is open (lines sent before are dropped).
        self.opened: Deferred[None] = Deferred()

    def send(self, line: str) -> None:
        if self.transport is None:
            return
        try:
            self.transport.write(line.encode(), None)
        except OSError:
            return  # nobody listening (ICMP refused) or a full buffer
        self.sent += 1

    def connectionRefused(self) -> None:
        pass  # no statsd daemon yet: keep sending, drop silently

    def startService(self) -> None:
        super().startService()
        opening = Deferred.fromCoroutine(self._open())
        opening.addErrback(_stopped).chainDeferred(self.opened)

    async def _open(self) -> None:
        host = self._host
        try:
            ipaddress.ip_address(host)
        except ValueError:
            host = await self._resolved(host)
        self._udp = self._reactor.listenUDP(  # type: ignore[assignment]
            0, self, interface="", maxPacketSize=8192
        )
        self.transport.connect(host, self._port)  # type: ignore[union-attr]
        log.info("statsd metrics go to {host}:{port}", host=host, port=self._port)

    async def _resolved(self, name: str) -> str:
        resolver: IReactorCore = self._reactor  # type: ignore[assignment]
        clock: IReactorTime = self._reactor  # type: ignore[assignment]
        warned = False
        while True:
            try:
                return await resolver.resolve(name)
            except DNSLookupError:
                if not warned:
                    log.warn(
                        "--statsd_host {host} does not resolve: statsd metrics "
                        "are dropped until it does (tried again every {retry:g} s)",
                        host=name,
                        retry=self.RETRY_SECONDS,
                    )
                    warned = True
            if not self.running:
                raise CancelledError()
            self._retry = deferLater(clock, self.RETRY_SECONDS, lambda: None)
            try:
                await self._retry
            finally:
                self._retry = None

    def stopService(self) -> None:
        super().stopService()
        if self._retry is not None:
            self._retry.cancel()
        if self._udp is not None:
            self._udp.stopListening()  # type: ignore[attr-defined]
            self._udp = None
