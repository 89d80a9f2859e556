"""Deletes old files from the local cache when a remote store holds the truth."""

from __future__ import annotations

import contextlib
import os

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from imageserver.pools import Runner

log = Logger()

#: A hidden temporary file this old is a leftover of a crash, not a write.
STALE_TEMPORARY = 3600.0


class CacheSweeper(Service):
    """Every ``interval`` seconds, removes files older than ``max_age`` seconds.

    The walk runs in the I/O pool, so a big tree never stalls the reactor.
    Files are judged by modification time; empty folders are pruned.
    Temporary files of writes in progress are left alone, and a sweep does not
    start while the previous one runs.
    """

    def __init__(
        self,
        root: str,
        max_age: float,
        clock: IReactorTime,
        run: Runner,
        interval: float = 120.0,
    ) -> None:
        self._root = os.path.abspath(root)
        self._max_age = max_age
        self._clock = clock
        self._run = run
        self._interval = interval
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = clock
        self.removed = 0

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return None

    def sweep(self) -> Deferred[int]:
        now = self._clock.seconds()
        d = self._run(sweep, self._root, now - self._max_age, now - STALE_TEMPORARY)

        def done(removed: int) -> int:
            self.removed += removed
            if removed:
                log.info("cache sweep removed {removed} files", removed=removed)
            return removed

        return d.addCallback(done)


def sweep(root: str, cutoff: float, stale_cutoff: float) -> int:
    """Remove files modified before ``cutoff`` under ``root``; count them."""
    removed = 0
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            limit = stale_cutoff if name.startswith(".") else cutoff
            try:
                if os.lstat(path).st_mtime < limit:
                    os.unlink(path)
                    removed += 1
            except FileNotFoundError:
                pass
        if folder != root:
            # Fails, as it should, unless the folder is empty. A write that
            # loses its folder this way makes it again (storage.local).
            with contextlib.suppress(OSError):
                os.rmdir(folder)
    return removed
