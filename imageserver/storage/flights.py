"""Single-flight: identical work that is already running is joined, not repeated."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Hashable, Sequence
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from imageserver.errors import Stopping

log = Logger()

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Flights(Generic[K, V]):
    """Runs work for a set of keys once, however many callers ask for them.

    Each caller gets its own Deferred: cancelling it (a client that hung up)
    detaches that caller only; the work goes on for the others and its result
    is still stored.
    """

    def __init__(self) -> None:
        self._waiters: dict[K, list[Deferred[V]]] = {}

    def run(
        self,
        keys: Sequence[K],
        work: Callable[[list[K]], Coroutine[Any, Any, dict[K, V]]],
    ) -> dict[K, Deferred[V]]:
        """Wait for ``keys``; start ``work(missing)`` for those not yet running.

        ``work`` must return a value for every key it was given.
        """
        waiting: dict[K, Deferred[V]] = {}
        new: list[K] = []
        for key in dict.fromkeys(keys):
            if key not in self._waiters:
                self._waiters[key] = []
                new.append(key)
            waiting[key] = Deferred()
            self._waiters[key].append(waiting[key])
        if new:
            Deferred.fromCoroutine(work(new)).addBoth(self._land, new)
        return waiting

    def _land(self, result: dict[K, V] | Failure, keys: list[K]) -> None:
        told = False
        for key in keys:
            for waiter in self._waiters.pop(key):
                if waiter.called:  # cancelled by its caller
                    continue
                told = True
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result[key])
        if isinstance(result, Failure) and not told and not result.check(Stopping):
            log.failure("work for {keys} failed with nobody waiting", result, keys=keys)
