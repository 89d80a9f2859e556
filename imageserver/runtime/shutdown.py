"""Graceful shutdown: one deadline for every phase, signals that exit 0."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from imageserver.runtime.waiting import drained

log = Logger()


class Drainable(Protocol):
    """What a drain needs of a site (web.site.BoundedSite is one)."""

    @property
    def in_flight(self) -> int: ...

    def wait_idle(self) -> Deferred[None]: ...


class Deadline:
    """The time left to a shutdown: ``seconds`` from the moment it starts."""

    def __init__(self, clock: IReactorTime, seconds: float) -> None:
        self._clock = clock
        self._seconds = seconds
        self._end: float | None = None

    def start(self) -> None:
        if self._end is None:
            self._end = self._clock.seconds() + self._seconds

    def remaining(self) -> float:
        if self._end is None:
            return self._seconds
        return max(0.0, self._end - self._clock.seconds())


class OrderedMultiService(MultiService):
    """Stops its children one at a time, the last added first.

    So readiness turns 503 before the ports close, in-flight requests finish
    while the pools they need are there, and pending uploads are drained
    before the S3 pool stops.
    """

    def __init__(self, deadline: Deadline | None = None) -> None:
        super().__init__()
        self.deadline = deadline

    def stopService(self) -> Deferred[None]:
        if self.deadline is not None:
            self.deadline.start()
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for service in reversed(list(self)):
            await maybeDeferred(service.stopService)


class RequestDrain(Service):
    """At stop, waits for the site's in-flight requests, within the deadline.

    Added just before the site's port, so it runs once the port has stopped
    listening.
    """

    def __init__(self, site: Drainable, clock: IReactorTime, deadline: Deadline):
        self._site = site
        self._clock = clock
        self._deadline = deadline

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        what = f"{self._site.in_flight} requests in flight"
        if self._site.in_flight and not await drained(
            self._site.wait_idle, self._deadline.remaining, self._clock, what
        ):
            log.warn(
                "stopping with {count} requests unanswered", count=self._site.in_flight
            )


class Closable(Protocol):
    """What `AnswersSent` needs of a site (web.site.BoundedSite is one)."""

    def close_answered(self) -> Deferred[None]: ...


#: Seconds the last step of a shutdown waits for answers still leaving the
#: socket buffers (a slow client reading a large one), after the deadline's
#: steps: an answer handed over is not cut off for the process's exit.
SENDING_SECONDS = 5.0


class AnswersSent(Service):
    """The last step of a shutdown (added first): answers handed to the
    connections, including those of renders that outlived the deadline,
    leave before the process exits, for at most `SENDING_SECONDS`.

    ``site`` is set once the site exists (the service must be added before
    the pools, so that it stops after them).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.site: Closable | None = None

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._wait())

    async def _wait(self) -> None:
        if self.site is not None and not await drained(
            self.site.close_answered,
            SENDING_SECONDS,
            self._clock,
            "answers still being sent",
            quiet=True,
        ):
            log.warn(
                "answers still being sent after {seconds:g}s: cut off",
                seconds=SENDING_SECONDS,
            )


class Signals(Service):
    """SIGTERM and SIGINT stop the server gracefully, and the exit status is 0.

    twistd's own handlers stop the reactor and then re-raise the signal; ours
    stop it without that, so a clean stop exits 0. A second signal exits at
    once.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._stopping = False
        #: Called just before exiting at once (a supervisor kills its workers).
        self.before_exit: list[Callable[[], object]] = []

    def startService(self) -> None:
        super().startService()
        # After twistd has installed its handlers, so ours replace them.
        self._reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        signal.signal(signal.SIGTERM, self._received)
        signal.signal(signal.SIGINT, self._received)

    def _received(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self._stopping:
            log.warn("received {signal} again: exiting now", signal=name)
            for call in self.before_exit:
                call()
            os._exit(0)
        self._stopping = True
        log.info("received {signal}: stopping (send it again to exit now)", signal=name)
        self._reactor.callFromThread(stop_reactor, self._reactor)


def stop_reactor(reactor: Any) -> None:
    """Stop ``reactor``, unless it is stopping already (a worker asked by its
    supervisor first, then signalled by systemd)."""
    with contextlib.suppress(ReactorNotRunning):
        reactor.stop()
