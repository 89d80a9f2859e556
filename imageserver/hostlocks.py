"""Locks shared by the worker processes of one host, by storage key.

Within a process, `flights.Flights` makes concurrent requests for the same
new variant (or upload) wait for one render. Across the workers of a host,
the leader of each process's flight also takes an exclusive ``flock`` on the
file of the key's stripe (one of `STRIPES` files in a folder of the local
store, so their number is bounded), and keeps it until the result is stored;
whoever gets it second finds the result stored and renders nothing. ``flock``
locks go with the process that holds them: a worker that dies never leaves a
key locked. Attempts do not block (``LOCK_NB``): a busy stripe is tried again
a little later, so no thread waits, and a holder always finds a thread free
to store its result.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from imageserver.pools import Runner
from imageserver.storage.local import translate_errors

#: The folder of lock files, under --local_base_path (never a storage key:
#: keys start with a namespace, which cannot start with a dot).
FOLDER = ".locks"
STRIPES = 4096
#: Seconds between attempts on a busy stripe: first, and at most.
RETRY, MAX_RETRY = 0.005, 0.1


class HostLocks:
    """Exclusive locks on storage keys, held across processes of this host."""

    def __init__(self, base_path: str, run: Runner, clock: IReactorTime) -> None:
        self._folder = os.path.join(base_path, FOLDER)
        self._run = run
        self._clock = clock

    @asynccontextmanager
    async def holding(self, keys: Sequence[str]) -> AsyncIterator[None]:
        """Hold the locks of every key (stripes taken in order: no deadlock)."""
        fds: list[int] = []
        try:
            for stripe in sorted({_stripe(key) for key in keys}):
                fds.append(await self._take(f"{stripe:04x}", fcntl.LOCK_EX))
            yield
        finally:
            for fd in fds:
                os.close(fd)  # closing releases the lock

    @asynccontextmanager
    async def folder(self, folder: str, *, exclusive: bool) -> AsyncIterator[None]:
        """Hold an image folder's lock: shared by work that stores into it,
        exclusive for its purge.

        Folder locks are stripes of their own (``f`` and four hex digits), so
        a holder of a folder's lock may take its keys' locks without waiting
        on itself.
        """
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        fd = await self._take(f"f{_stripe(folder):04x}", mode)
        try:
            yield
        finally:
            os.close(fd)

    async def _take(self, name: str, mode: int) -> int:
        delay = RETRY
        while True:
            # A lock folder that cannot be used is storage trouble (503/507).
            fd = await self._run(translate_errors, self._try, name, mode)
            if fd is not None:
                return fd
            await deferLater(self._clock, delay)
            delay = min(delay * 2, MAX_RETRY)

    def _try(self, name: str, mode: int) -> int | None:
        """The open, locked stripe file, or None when another holds it."""
        os.makedirs(self._folder, exist_ok=True)
        path = os.path.join(self._folder, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd


def _stripe(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % STRIPES
