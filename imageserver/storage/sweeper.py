"""Keeps the local disk clean: leftovers of crashes, and (with a remote store)
files the local cache no longer needs."""

from __future__ import annotations

import contextlib
import os

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from imageserver.naming import INFO, ORIGINAL
from imageserver.runtime.pools import Runner

log = Logger()

#: A hidden temporary file this old is a leftover of a crash, not a write.
STALE_TEMPORARY = 3600.0


class CacheSweeper(Service):
    """Every ``interval`` seconds, removes what the local disk need not keep.

    With a remote store (``max_age`` set) the local disk is a cache: files
    older than ``max_age`` seconds go. Alone (``max_age`` None) it is the
    truth: only leftovers of a crash go, once older than `STALE_TEMPORARY`,
    namely hidden temporary files of writes that never finished, and an
    original whose info.json was never written (an upload that died half-way,
    never acknowledged) with whatever was stored beside it.

    The walk runs in the I/O pool, so a big tree never stalls the reactor.
    Files are judged by modification time; empty folders are pruned. Writes
    in progress are left alone, and a sweep does not start while the previous
    one runs.
    """

    def __init__(
        self,
        root: str,
        max_age: float | None,
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
        cutoff = None if self._max_age is None else now - self._max_age
        d = self._run(sweep, self._root, cutoff, now - STALE_TEMPORARY)

        def done(removed: int) -> int:
            self.removed += removed
            if removed:
                log.info("sweep removed {removed} files", removed=removed)
            return removed

        return d.addCallback(done)


def sweep(root: str, cutoff: float | None, stale_cutoff: float) -> int:
    """Remove files modified before ``cutoff`` under ``root``; count them.

    With no ``cutoff``, only crash leftovers modified before ``stale_cutoff``
    (see `CacheSweeper`).
    """
    removed = 0
    for folder, _, files in os.walk(root, topdown=False):
        if folder != root and os.path.relpath(folder, root).startswith("."):
            continue  # not the store's: the workers' lock files (hostlocks)
        orphan = (
            cutoff is None
            and ORIGINAL in files
            and INFO not in files
            and _modified_before(os.path.join(folder, ORIGINAL), stale_cutoff)
        )
        for name in files:
            path = os.path.join(folder, name)
            if orphan or name.startswith("."):
                limit = stale_cutoff
            elif cutoff is None:
                continue
            else:
                limit = cutoff
            if _modified_before(path, limit):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed += 1
        if folder != root:
            # Fails, as it should, unless the folder is empty. A write that
            # loses its folder this way makes it again (storage.local).
            with contextlib.suppress(OSError):
                os.rmdir(folder)
    return removed


def _modified_before(path: str, when: float) -> bool:
    try:
        return os.lstat(path).st_mtime < when
    except FileNotFoundError:
        return False
