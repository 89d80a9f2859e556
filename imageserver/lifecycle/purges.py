"""Purges made by one process, seen by the others that share its storage.

A purge removes an image from the storage every process shares (the bucket,
or a host's disk) and from the purging process's own copies. The other
processes (a host's workers, other instances on the bucket) keep copies of
their own: the memory cache, and with a bucket the local disk cache. So each
purge (and each delete of one name) also leaves a marker in the shared storage, under
``PURGES/{minute}/{time}.{process}.{namespace}.{hash}`` (``PURGES`` cannot be
a namespace: those are lower case), and every process lists the markers of
the current and the previous minute every ``--purge_check_interval``
seconds and forgets its copies of each image a marker names. A process
therefore stops serving a purged image at most one interval (plus the
listing's own time) after the purge; the cost is two listings per interval
per process, whatever the traffic.

At start a process with a local disk cache reads the markers of the last
``lookback`` minutes, so copies it kept while it was down go too. Marker
folders older than that are deleted by whichever process passes them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from imageserver.errors import (
    Stopping,
    StorageFailed,
    StorageFull,
    StorageUnavailable,
)
from imageserver.lifecycle.listeners import NoLifecycle
from imageserver.naming import ImageId
from imageserver.storage import Storage, StoredObject
from imageserver.storage.queue import WriteQueue

log = Logger()

FOLDER = "PURGES"


def marker_key(minute: int, nanoseconds: int, process: str, image: ImageId) -> str:
    return (
        f"{FOLDER}/{minute:010d}/{nanoseconds}.{process}.{image.namespace}.{image.hash}"
    )


def image_of(name: str) -> tuple[str, ImageId] | None:
    """The process and image a marker's name holds, or None for another name."""
    parts = name.split(".")
    if len(parts) != 4:
        return None
    _, process, namespace, digest = parts
    return process, ImageId(namespace, digest)


class PurgeLog(NoLifecycle, Service):
    """Writes a marker for each purge here; forgets images purged elsewhere.

    ``shared`` is the storage all processes share (the bucket, or the local
    disk when it is the only store); ``markers`` a write queue to it, so a
    marker that cannot be written now is retried. ``forget`` drops this
    process's copies of an image's folder. The clock's time is wall time (a
    reactor's is): markers are filed by minute, so the processes' clocks must
    agree to well within a minute (NTP).
    """

    def __init__(
        self,
        clock: IReactorTime,
        shared: Storage,
        markers: WriteQueue,
        forget: Callable[[ImageId], Awaitable[None]],
        interval: float,
        lookback: int = 0,
    ) -> None:
        self._clock = clock
        self._shared = shared
        self._markers = markers
        self._forget = forget
        self._interval = interval
        self._lookback = lookback
        self.process = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        #: Marker names seen, by minute (only recent minutes are kept).
        self._seen: dict[int, set[str]] = {}
        self._start_minute: int | None = None
        self._cleaned = -1
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock
        self.forgotten = 0

    def _now(self) -> float:
        return self._clock.seconds()

    # -- Lifecycle: purges and deletes. For one deleted name the others
    # forget their copies of the whole folder: a client's deleted file must
    # not stay served from another instance's disk cache.

    def deleted(self, image: ImageId, keys: Sequence[str]) -> None:
        self.purged(image, keys)

    def purged(self, image: ImageId, keys: Sequence[str]) -> None:
        now = self._now()
        key = marker_key(int(now // 60), int(now * 1e9), self.process, image)
        self._markers.submit(key, StoredObject(b"", "text/plain", now, '""'))

    # -- watching -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        minute = int(self._now() // 60)
        self._start_minute = minute - self._lookback
        self._loop.start(self._interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def check(self) -> Deferred[None]:
        # A failure is logged, and the next check comes as usual: a stopped
        # loop would leave copies of purged images served for ever.
        return Deferred.fromCoroutine(self._check()).addErrback(
            lambda failure: log.failure("checking for purges failed", failure)
        )

    async def _check(self) -> None:
        minute = int(self._now() // 60)
        first = minute - 1
        if self._start_minute is not None:
            first, self._start_minute = min(first, self._start_minute), None
        try:
            for m in range(first, minute + 1):
                await self._read(m)
            await self._clean(minute)
        except Stopping:
            return  # a check under way when the shutdown began
        except (StorageUnavailable, StorageFailed, StorageFull) as e:
            log.warn("could not read the purge markers: {error}", error=e)
        for old in [m for m in self._seen if m < minute - 1]:
            del self._seen[old]

    async def _read(self, minute: int) -> None:
        seen = self._seen.setdefault(minute, set())
        names = await self._shared.list(f"{FOLDER}/{minute:010d}")
        for name in names:
            if name in seen:
                continue
            found = image_of(name)
            if found is not None and found[0] != self.process:
                process, image = found
                # Storage trouble leaves the marker unseen: tried again at the
                # next check. A bug is logged once.
                try:
                    await self._forget(image)
                except (StorageUnavailable, StorageFailed, StorageFull):
                    raise
                except Exception:
                    log.failure("forgetting {folder} failed", folder=image.folder)
                else:
                    self.forgotten += 1
                    log.info(
                        "forgot {folder}: purged by {process}",
                        folder=image.folder,
                        process=process,
                    )
            seen.add(name)

    async def _clean(self, minute: int) -> None:
        """Delete the marker folder that just passed out of every lookback."""
        old = minute - self._lookback - 2
        if old > self._cleaned:
            self._cleaned = old
            await self._shared.delete_prefix(f"{FOLDER}/{old:010d}")
