"""Worker thread pools as services, and the runner that hands work to them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.python.threadpool import ThreadPool

from imageserver.events import PoolStats

T = TypeVar("T")


class Runner(Protocol):
    """Runs a blocking function somewhere off the reactor thread."""

    def __call__(self, f: Callable[..., T], /, *args: Any) -> Deferred[T]: ...


class ThreadPoolService(Service):
    """A bounded thread pool started and stopped with the application.

    Work submitted before the service starts waits in the pool's queue.
    """

    def __init__(self, reactor: IReactorFromThreads, size: int, name: str) -> None:
        self.setName(name)
        self._reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=size, name=name)

    def run(self, f: Callable[..., T], /, *args: Any) -> Deferred[T]:
        return deferToThreadPool(self._reactor, self.pool, f, *args)  # type: ignore[arg-type]

    def stats(self) -> PoolStats:
        """How to read this pool's load, for the metrics."""
        pool = self.pool
        return PoolStats(
            self.name or "pool",
            size=lambda: pool.max,
            busy=lambda: len(pool.working),
            # ThreadPool has no public queue length; _queue is its work queue.
            queued=lambda: pool._queue.qsize(),
        )

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        # stop() joins the workers: wait for the running jobs off the reactor.
        return deferToThread(self.pool.stop)
