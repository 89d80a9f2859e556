"""Locks shared by the worker processes of one host, by storage key.

Within a process, `flights.Flights` makes concurrent requests for the same
new variant (or upload) wait for one render. Across the workers of a host,
the leader of each process's flight also locks the key's stripe (one of
`STRIPES` bytes of one file in a folder of the local store, with an
open-file-description lock, so their number is bounded and each process
keeps one file open), and keeps it until the result is stored; whoever gets
it second finds the result stored and renders nothing. Such locks go with the
open file: a worker that dies never leaves a key locked. Attempts do not
block (non-blocking calls on the calling thread, a few microseconds): a busy
stripe is tried again a little later, so no thread waits, and taking a free
one costs no hand-off to a thread.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from imageserver.runtime.pools import Runner
from imageserver.storage.local import translate_errors

#: The folder of lock files, under --local_base_path (never a storage key:
#: keys start with a namespace, which cannot start with a dot).
FOLDER = ".locks"
#: The file whose bytes are the keys' stripes.
KEYS = "keys"
STRIPES = 4096
#: Stripes of image folders' locks: few, so each process keeps them open.
FOLDER_STRIPES = 64
#: Seconds between attempts on a busy stripe: first, and at most.
RETRY, MAX_RETRY = 0.005, 0.1


class HostLocks:
    """Exclusive locks on storage keys, held across processes of this host."""

    def __init__(self, base_path: str, run: Runner, clock: IReactorTime) -> None:
        self._folder = os.path.join(base_path, FOLDER)
        self._run = run
        self._clock = clock
        #: Open folder stripe files, and how many of this process's works
        #: hold each one's shared lock.
        self._shared_files: dict[str, int] = {}
        self._sharing: dict[str, int] = {}
        #: The open file of the keys' stripes, and how many of this
        #: process's works hold each stripe.
        self._keys_fd: int | None = None
        self._holders: dict[int, int] = {}

    @asynccontextmanager
    async def holding(self, keys: Sequence[str]) -> AsyncIterator[None]:
        """Hold the locks of every key (stripes taken in order: no deadlock)."""
        fd = await self._keys_file()
        taken: list[int] = []
        try:
            for stripe in sorted({_stripe(key) for key in keys}):
                await self._take_stripe(fd, stripe)
                taken.append(stripe)
            yield
        finally:
            for stripe in taken:
                self._holders[stripe] -= 1
                if not self._holders[stripe]:
                    del self._holders[stripe]
                    _lock_byte(fd, stripe, fcntl.F_UNLCK)

    async def _keys_file(self) -> int:
        if self._keys_fd is None:
            opened = await self._run(translate_errors, self._open, KEYS)
            if self._keys_fd is None:
                self._keys_fd = opened
            else:  # another work opened it meanwhile
                os.close(opened)
        return self._keys_fd

    async def _take_stripe(self, fd: int, stripe: int) -> None:
        """Lock ``stripe`` for this process's work (shared by its works, which
        `Flights` keep to distinct keys)."""
        delay = RETRY
        while not self._holders.get(stripe):
            if translate_errors(_lock_byte, fd, stripe, fcntl.F_WRLCK):
                break
            await deferLater(self._clock, delay)
            delay = min(delay * 2, MAX_RETRY)
        self._holders[stripe] = self._holders.get(stripe, 0) + 1

    @asynccontextmanager
    async def folder(self, folder: str, *, exclusive: bool) -> AsyncIterator[None]:
        """Hold an image folder's lock: shared by work that stores into it,
        exclusive for its purge.

        Folder locks are stripes of their own (``f`` and two hex digits, of
        `FOLDER_STRIPES`), so a holder of a folder's lock may take its keys'
        locks without waiting on itself. Every render takes one shared, so
        it costs no thread: this process keeps one open file per stripe and
        holds its shared lock while any of its work needs it (counted here),
        taken and dropped with non-blocking calls on the calling thread. A
        purge takes the exclusive lock on a file of its own, once no process
        (this one included) holds the stripe shared.
        """
        name = f"f{_stripe(folder) % FOLDER_STRIPES:02x}"
        if exclusive:
            fd = await self._take(name, fcntl.LOCK_EX)
            try:
                yield
            finally:
                os.close(fd)
            return
        await self._share(name)
        try:
            yield
        finally:
            self._unshare(name)

    async def _share(self, name: str) -> None:
        fd = self._shared_files.get(name)
        if fd is None:
            opened = await self._run(translate_errors, self._open, name)
            fd = self._shared_files.setdefault(name, opened)
            if fd != opened:  # another work opened it meanwhile
                os.close(opened)
        delay = RETRY
        while not self._sharing.get(name):
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # a purge holds it
                await deferLater(self._clock, delay)
                delay = min(delay * 2, MAX_RETRY)
                continue
            break
        self._sharing[name] = self._sharing.get(name, 0) + 1

    def _unshare(self, name: str) -> None:
        self._sharing[name] -= 1
        if not self._sharing[name]:
            del self._sharing[name]
            fcntl.flock(self._shared_files[name], fcntl.LOCK_UN)

    def _open(self, name: str) -> int:
        os.makedirs(self._folder, exist_ok=True)
        return os.open(os.path.join(self._folder, name), os.O_RDWR | os.O_CREAT, 0o600)

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
        fd = self._open(name)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd


#: ``struct flock`` of Linux (64-bit ``off_t``): type, whence, start, length, pid.
_FLOCK = struct.Struct("hhqqi4x")
#: Open-file-description locks (Linux): two opens of the file exclude each
#: other even in one process. Elsewhere POSIX locks, held per process.
_SETLK = getattr(fcntl, "F_OFD_SETLK", fcntl.F_SETLK)


def _lock_byte(fd: int, offset: int, kind: int) -> bool:
    """Lock (``F_WRLCK``) or unlock (``F_UNLCK``) one byte without waiting;
    False when another holds it."""
    try:
        fcntl.fcntl(fd, _SETLK, _FLOCK.pack(kind, os.SEEK_SET, offset, 1, 0))
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def _stripe(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % STRIPES
