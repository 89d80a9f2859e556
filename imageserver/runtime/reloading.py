"""Files read again while the server runs: on a timer, and at once on SIGHUP."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from imageserver.runtime.pools import Runner

log = Logger()

#: Seconds between checks of a file for changes.
INTERVAL = 5.0


class Hangup(Service):
    """Calls ``received`` on the reactor thread when the process gets SIGHUP."""

    def __init__(
        self, reactor: IReactorFromThreads, received: Callable[[], Any]
    ) -> None:
        self._reactor = reactor
        self._received = received
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._handle)

    def stopService(self) -> None:
        super().stopService()
        signal.signal(signal.SIGHUP, self._previous or signal.SIG_DFL)

    def _handle(self, number: int, frame: Any) -> None:
        self._reactor.callFromThread(self._received)


class Reloading(Service):
    """Runs ``refresh(force)`` in ``run`` (a thread pool: it reads files)
    every ``interval`` seconds with False, and on SIGHUP with True."""

    def __init__(
        self,
        reactor: Any,
        refresh: Callable[[bool], None],
        run: Runner,
        interval: float = INTERVAL,
    ) -> None:
        self._refresh = refresh
        self._run = run
        self._loop = LoopingCall(self.check)
        self._loop.clock = reactor
        self._interval = interval
        self._hangup = Hangup(reactor, lambda: self.check(force=True))

    def startService(self) -> None:
        super().startService()
        self._hangup.startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        self._hangup.stopService()
        if self._loop.running:
            self._loop.stop()

    def check(self, force: bool = False) -> Deferred[None]:
        if force:
            log.info("SIGHUP: reading files again")
        return self._run(self._refresh, force)
