"""Telling systemd when the server is ready and when it stops (a unit of
``Type=notify``, deploy/imageserver.service): the sd_notify protocol, one
datagram to the socket ``NOTIFY_SOCKET`` names. Without it, nothing."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

#: Seconds between looks at whether the server is ready yet.
POLL = 0.2


def notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``message`` (``READY=1``, ``STOPPING=1``) to systemd; whether
    there was a socket to send it to. A name starting with ``@`` is in the
    abstract namespace."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError as e:
            log.warn("systemd was not told {message}: {error}", message=message,
                     error=e)  # fmt: skip
            return False
    return True


class SystemdNotifier(Service):
    """Says ``READY=1`` once ``ready`` first holds (the ports listen and, with
    workers, every worker serves), and ``STOPPING=1`` when shutdown begins."""

    def __init__(
        self,
        clock: IReactorTime,
        ready: Callable[[], bool],
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._ready = ready
        self._environ = environ
        self._poll = LoopingCall(self._check)
        self._poll.clock = clock

    def startService(self) -> None:
        super().startService()
        if self._environ.get("NOTIFY_SOCKET"):
            self._poll.start(POLL, now=True)

    def _check(self) -> None:
        if self._ready():
            self._poll.stop()
            notify("READY=1", self._environ)

    def stopService(self) -> None:
        if self._poll.running:
            self._poll.stop()
        if self._environ.get("NOTIFY_SOCKET"):
            notify("STOPPING=1", self._environ)
        super().stopService()
