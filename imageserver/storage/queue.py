"""Writes that land in the background: tracked, retried, cancelled, drained.

One machine serves two places: variants answered before they reach storage
(`imageserver.storage.behind`), and copies of the local cache on their way to
the bucket (`imageserver.storage.tiered`). They differ only in what a failed
write costs, so the retry policy is a parameter. It is also the one place a
purge cancels what is still on its way.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from imageserver.errors import StorageFailed, StorageFull, StorageUnavailable
from imageserver.metrics import tracing
from imageserver.metrics.events import Events
from imageserver.runtime.waiting import WhenIdle, drained
from imageserver.storage import Storage, StoredObject, under

log = Logger()

#: Seconds to wait before retry ``attempt`` (0 for the first), such as
#: `twisted.application.internet.backoffPolicy` makes.
RetryPolicy = Callable[[int], float]


class WriteQueue(Service):
    """Puts to ``target`` that return at once and land in the background.

    A newer `submit` of a key still on its way replaces its bytes. A write
    that fails with storage trouble is retried after ``retry(attempt)``
    seconds for as long as the service runs, or, without ``retry``, logged
    and forgotten (what is written here can be made again). `cancel` drops
    queued writes and waits for those in flight, so a delete that follows
    is the last word. At shutdown the pending writes get
    ``shutdown_timeout`` seconds (or what a callable says is left of the
    shutdown's time); any left are logged, key by key, as errors.

    ``name`` labels the queue's metrics and logs.
    """

    def __init__(
        self,
        target: Storage,
        clock: IReactorTime,
        shutdown_timeout: float | Callable[[], float],
        *,
        name: str,
        retry: RetryPolicy | None = None,
        events: Events | None = None,
    ) -> None:
        self.target = target
        self._clock = clock
        self._shutdown_timeout = shutdown_timeout
        self.label = name
        self._retry = retry
        self._events = events or Events()
        #: The latest bytes wanted at each key not yet written.
        self._pending: dict[str, StoredObject] = {}
        #: Keys whose writer is running, with who waits for it to end.
        self._running: dict[str, list[Deferred[None]]] = {}
        #: Writers waiting to retry, by key.
        self._sleeping: dict[str, Deferred[None]] = {}
        self._idle = WhenIdle(lambda: bool(self._running))
        #: Past the shutdown's writes: what comes now is not written.
        self._closed = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, key: str, stored: StoredObject) -> None:
        if self._closed:
            # A render that outlasted the shutdown's time: its pools may be
            # gone, so it would wait for ever; said, as a write left is.
            self._events.background_done(self.label, "failed", self.pending)
            log.error(
                "{queue}: {key} came after the shutdown's writes, and is not "
                "written; it will be generated again when requested",
                queue=self.label,
                key=key,
            )
            return
        self._pending[key] = stored
        self._events.background_queued(self.label, len(self._pending))
        if key not in self._running:
            self._running[key] = []
            Deferred.fromCoroutine(self._write(key))

    def peek(self, key: str) -> StoredObject | None:
        """The bytes on their way to ``key``, if any."""
        return self._pending.get(key)

    def pending_bytes(self, folder: str) -> int:
        """Bytes of the pending writes under ``folder`` (at any depth); a
        write that replaces an object counts whole (an estimate)."""
        return sum(
            len(stored.data)
            for key, stored in self._pending.items()
            if under(key, folder)
        )

    def names_in(self, folder: str) -> list[str]:
        """Names of pending keys directly under ``folder``."""
        prefix = folder.rstrip("/") + "/"
        return [
            key[len(prefix) :]
            for key in self._pending
            if key.startswith(prefix) and "/" not in key[len(prefix) :]
        ]

    async def settle(self, key: str) -> None:
        """Wait until no write of ``key`` is on its way."""
        if key in self._running:
            ended: Deferred[None] = Deferred()
            self._running[key].append(ended)
            await ended

    async def cancel(self, prefix: str) -> None:
        """Forget the writes of ``prefix`` and of every key under it, and wait
        for those already in flight: after this, nothing of it lands."""
        keys = [key for key in self._running if under(key, prefix)]
        for key in keys:
            if self._pending.pop(key, None) is not None:
                self._events.background_done(self.label, "cancelled", self.pending)
            sleeping = self._sleeping.get(key)
            if sleeping is not None:
                sleeping.cancel()
        for key in keys:
            await self.settle(key)

    async def _write(self, key: str) -> None:
        attempt = 0
        while key in self._pending:
            stored = self._pending[key]
            try:
                # The span's parent: the work that submitted the write.
                with tracing.span(
                    "write behind",
                    {"imageserver.queue": self.label, "imageserver.key": key},
                ):
                    await self.target.put(
                        key,
                        stored.data,
                        stored.content_type,
                        durable=False,
                        etag=stored.etag,
                    )
            except (StorageFull, StorageUnavailable, StorageFailed) as e:
                if self._retry is None:
                    self._drop(key, "failed")
                    log.warn(
                        "{queue}: writing {key} failed ({error}); it will be "
                        "generated again when requested",
                        queue=self.label,
                        key=key,
                        error=e,
                    )
                    break
                delay = self._retry(attempt)
                attempt += 1
                self._events.background_done(self.label, "retried", self.pending)
                log.warn(
                    "{queue}: writing {key} failed ({error}); retrying in {delay:.3g}s",
                    queue=self.label,
                    key=key,
                    error=e,
                    delay=delay,
                )
                if not await self._sleep(key, delay):
                    break
                continue
            except Exception:
                self._drop(key, "failed")
                log.failure("{queue}: writing {key} failed", queue=self.label, key=key)
                break
            if self._pending.get(key) is stored:
                self._drop(key, "written")
            # Else a newer version arrived on the way, or the key was cancelled.
        for ended in self._running.pop(key):
            ended.callback(None)
        self._idle.check()

    async def _sleep(self, key: str, seconds: float) -> bool:
        """Wait ``seconds``; False when the key was cancelled meanwhile."""
        sleeping: Deferred[None] = deferLater(self._clock, seconds)
        self._sleeping[key] = sleeping
        try:
            await sleeping
        except CancelledError:
            return False
        finally:
            del self._sleeping[key]
        return True

    def _drop(self, key: str, outcome: str) -> None:
        # A key cancelled while its write was on its way is counted already.
        if self._pending.pop(key, None) is not None:
            self._events.background_done(self.label, outcome, self.pending)

    def wait_idle(self) -> Deferred[None]:
        """Fires once no write is on its way."""
        return self._idle.wait()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        try:
            await self._drain_pending()
        finally:
            self._closed = True

    async def _drain_pending(self) -> None:
        what = f"{len(self._pending)} pending writes ({self.label})"
        if self._running and not await drained(
            self.wait_idle, self._shutdown_timeout, self._clock, what
        ):
            for key in sorted(self._pending):
                log.error(
                    "{queue}: shutting down before {key} was written; "
                    "it will be generated again when requested",
                    queue=self.label,
                    key=key,
                )
