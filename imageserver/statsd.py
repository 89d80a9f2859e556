"""A statsd client on the reactor: UDP datagrams, fire and forget."""

from __future__ import annotations

import ipaddress

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

log = Logger()


class StatsdClient(DatagramProtocol, Service):
    """Sends each statsd line as one datagram to ``host:port``.

    Sending never blocks and never fails a caller: until the socket is open,
    and whenever the network refuses, lines are dropped. Call ``send`` on the
    reactor thread.
    """

    def __init__(self, reactor: IReactorUDP, host: str, port: int) -> None:
        self._reactor = reactor
        self._host = host
        self._port = port
        self._udp = None
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
        Deferred.fromCoroutine(self._open()).chainDeferred(self.opened)

    async def _open(self) -> None:
        host = self._host
        try:
            ipaddress.ip_address(host)
        except ValueError:
            resolver: IReactorCore = self._reactor  # type: ignore[assignment]
            host = await resolver.resolve(host)
        self._udp = self._reactor.listenUDP(  # type: ignore[assignment]
            0, self, interface="", maxPacketSize=8192
        )
        self.transport.connect(host, self._port)  # type: ignore[union-attr]
        log.info("statsd metrics go to {host}:{port}", host=host, port=self._port)

    def stopService(self) -> None:
        super().stopService()
        if self._udp is not None:
            self._udp.stopListening()  # type: ignore[attr-defined]
            self._udp = None
