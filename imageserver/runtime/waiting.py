"""Waiting for work to drain: used at shutdown by requests and uploads alike."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()


class WhenIdle:
    """Deferreds that fire once ``busy()`` turns false.

    The owner calls `check` whenever a piece of its work ends.
    """

    def __init__(self, busy: Callable[[], bool]) -> None:
        self._busy = busy
        self._waiting: list[Deferred[None]] = []

    def wait(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self._busy():
            self._waiting.append(d)
        else:
            d.callback(None)
        return d

    def check(self) -> None:
        if not self._busy():
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)


async def drained(
    wait_idle: Callable[[], Deferred[None]],
    timeout: float | Callable[[], float],
    clock: IReactorTime,
    what: str,
    quiet: bool = False,
) -> bool:
    """Wait for ``wait_idle()`` for at most ``timeout`` seconds; whether it fired.

    ``timeout`` may be a callable: what is left of the shutdown's time.
    ``quiet``: no line says so when it has fired at once.
    """
    seconds = timeout() if callable(timeout) else timeout
    idle = wait_idle()
    if not (quiet and idle.called):
        log.info("waiting up to {timeout:g}s for {what}", timeout=seconds, what=what)
    try:
        await idle.addTimeout(seconds, clock)
    except TimeoutError:
        return False
    return True
