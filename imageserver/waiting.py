"""Waiting for work to drain: used at shutdown by requests and uploads alike."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred


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
