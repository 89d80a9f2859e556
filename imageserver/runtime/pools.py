"""Worker thread pools as services, and the runner that hands work to them."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from imageserver.errors import Overloaded, Stopping
from imageserver.metrics import tracing
from imageserver.metrics.events import PoolStats

log = Logger()

T = TypeVar("T")


class Runner(Protocol):
    """Runs a blocking function somewhere off the reactor thread."""

    def __call__(self, f: Callable[..., T], /, *args: Any) -> Deferred[T]: ...


class _NicedThreadPool(ThreadPool):
    """A thread pool whose threads run at a lower priority (a higher nice
    value) than the rest of the process."""

    def __init__(self, niceness: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._niceness = niceness

    def threadFactory(self, *args: Any, **kwargs: Any) -> threading.Thread:  # type: ignore[override]
        target = kwargs.pop("target")
        niceness = self._niceness

        def niced() -> None:
            _lower_priority(niceness)
            target()

        kwargs["target"] = niced
        return threading.Thread(*args, **kwargs)


def _lower_priority(niceness: int) -> None:
    """Adds ``niceness`` to this thread's nice value (Linux: per thread)."""
    if niceness and hasattr(os, "setpriority"):
        tid = threading.get_native_id()
        with contextlib.suppress(OSError):  # not allowed: it runs as it is
            nice = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, nice + niceness)


class ThreadPoolService(Service):
    """A bounded thread pool started and stopped with the application.

    Work submitted before the service starts waits in the pool's queue. With
    ``max_pending``, at most that many jobs wait for a thread: one more is
    refused at once with `Overloaded`, so memory never grows without bound.
    With ``niceness``, the threads run that much nicer than the reactor (on
    Linux), so they take only the CPU time it leaves. A stop waits for the
    jobs running (a thread cannot be stopped), not those still queued: they
    fail with `Stopping` as they come up (at a stop the requests that wanted
    them have been answered, a 503 after --processing_timeout, or their
    results would not be written); with ``deadline`` (the seconds a
    shutdown has left), one still running then is logged. ``closing`` runs
    once the threads are done (the processing pool's rasteriser processes
    are ended there).
    """

    def __init__(
        self,
        reactor: Any,
        size: int,
        name: str,
        max_pending: int | None = None,
        niceness: int = 0,
        deadline: Callable[[], float] | None = None,
        clock: IReactorTime | None = None,
        closing: Callable[[], None] | None = None,
    ) -> None:
        self.setName(name)
        self._closing = closing
        self._reactor: IReactorFromThreads = reactor
        self._clock: IReactorTime = clock or reactor
        self._size = size
        self._max_pending = max_pending
        self._deadline = deadline
        self.outstanding = 0
        self._stopping = False
        self.pool = _NicedThreadPool(niceness, minthreads=0, maxthreads=size, name=name)

    def run(self, f: Callable[..., T], /, *args: Any) -> Deferred[T]:
        if self.pool.joined:
            # A stopped pool takes no work (Twisted's drops it unanswered).
            return fail(Stopping("the server is stopping"))
        if (
            self._max_pending is not None
            and self.outstanding - self._size >= self._max_pending
        ):
            return fail(
                Overloaded("the server is busy processing images, try again shortly")
            )
        self.outstanding += 1
        result: Deferred[T] = Deferred()

        def done(succeeded: bool, value: Any) -> None:
            # One trip back to the reactor per job (each one wakes it up).
            self._reactor.callFromThread(self._finished, result, succeeded, value)

        def job(*args: Any) -> T:
            if self._stopping:
                raise Stopping("the server stopped before this job started")
            return f(*args)

        self.pool.callInThreadWithCallback(done, tracing.in_thread(job), *args)
        return result

    def _finished(self, result: Deferred[Any], succeeded: bool, value: Any) -> None:
        # Counted down when the thread is done, even if the caller gave up
        # waiting (a timeout): the thread was busy until then. A cancelled
        # Deferred ignores the late result.
        self.outstanding -= 1
        if succeeded:
            result.callback(value)
        else:
            result.errback(value)

    def stats(self) -> PoolStats:
        """How to read this pool's load, for the metrics."""
        pool = self.pool
        return PoolStats(
            self.name or "pool",
            size=lambda: pool.max,
            busy=lambda: len(pool.working),
            # Jobs beyond the threads wait: the count admission is made by.
            queued=lambda: max(0, self.outstanding - self._size),
        )

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True  # the queued jobs are not run
        # stop() joins the workers: wait for the running jobs off the reactor.
        stopped = deferToThread(self._stop)
        if self._deadline is not None:
            late = self._clock.callLater(self._deadline(), self._late)

            def in_time(result: object) -> object:
                if late.active():
                    late.cancel()
                return result

            stopped.addBoth(in_time)
        return stopped

    def _stop(self) -> None:
        self.pool.stop()
        if self._closing is not None:
            self._closing()

    def _late(self) -> None:
        log.warn(
            "{pool}: {count} jobs still running at the end of --shutdown_timeout; "
            "the process ends when they do (a thread cannot be stopped)",
            pool=self.name,
            count=len(self.pool.working),
        )
