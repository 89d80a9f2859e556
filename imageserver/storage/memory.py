"""A bounded in-memory LRU in front of another storage, for immutable objects.

A cached GET then costs no thread hop and no disk read. Only objects that
never change once written (variants, originals, info.json: their paths are
content-addressed) are kept, so the cache can never serve stale bytes that the
backend has replaced; writes and deletes through this object keep it current.

What another process deletes is told by `Generations`: each folder has a
generation (one of `SLOTS` shared by the folders that hash alike), which a
delete of anything in the folder changes once the delete is done. An object
is kept with the generation its folder had before it was read, and served
only while that generation stands. The workers of a host map one file of
generations, so a purge by one is seen by the others' next cache hit.
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from twisted.application.service import Service

from imageserver.metrics import tracing
from imageserver.storage import Storage, StoredObject, under

#: Generation slots: a delete in one folder also drops what is kept of the
#: folders sharing its slot (about one in this many), which read it again.
SLOTS = 1 << 16
_SIZE = SLOTS * 8


class Generations(Service):
    """Each folder's generation: in this process, or with ``path`` in a file
    every process of the host maps (at start), so a change by one is seen by
    all at their next read, without a system call.

    A change writes a new random value, never an increment: writers need no
    lock, and no two changes can write the same value (an aligned 8-byte
    store is atomic).
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._map = mmap.mmap(-1, _SIZE)
        self._slots = memoryview(self._map).cast("Q")

    def startService(self) -> None:
        super().startService()
        self.open()

    def open(self) -> None:
        """Map the host's file (made if missing); OSError if that fails.

        Nothing is kept before (the service starts before the ports open).
        """
        if self.path is None:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # Blocks reserved, not a sparse file: a page of a sparse map
            # written when the disk is full kills the process (SIGBUS).
            os.posix_fallocate(fd, 0, _SIZE)
            shared = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)  # the map keeps the file
        self._map, self._slots = shared, memoryview(shared).cast("Q")

    @staticmethod
    def slot(folder: str) -> int:
        return zlib.crc32(folder.rstrip("/").encode()) % SLOTS

    def __getitem__(self, slot: int) -> int:
        return self._slots[slot]

    def change(self, slot: int) -> None:
        value = self._slots[slot]
        while value == self._slots[slot]:
            value = int.from_bytes(os.urandom(8), "little")
        self._slots[slot] = value


class _Kept(NamedTuple):
    stored: StoredObject
    slot: int
    generation: int


def _folder(key: str) -> str:
    return key.rpartition("/")[0]


class MemoryCache:
    def __init__(
        self,
        backend: Storage,
        max_bytes: int,
        cacheable: Callable[[str], bool],
        max_object_bytes: int | None = None,
        generations: Generations | None = None,
    ) -> None:
        self._backend = backend
        self._max_bytes = max_bytes
        self._max_object_bytes = (
            max_bytes // 16 if max_object_bytes is None else max_object_bytes
        )
        self._cacheable = cacheable
        self._generations = Generations() if generations is None else generations
        self._objects: OrderedDict[str, _Kept] = OrderedDict()
        self.size = 0

    def _current(self, key: str) -> StoredObject | None:
        """What is kept of ``key`` while its folder's generation stands."""
        kept = self._objects.get(key)
        if kept is None:
            return None
        if self._generations[kept.slot] != kept.generation:
            self._drop(key)  # deleted since, here or by another process
            return None
        self._objects.move_to_end(key)
        return kept.stored

    async def get(self, key: str) -> StoredObject | None:
        # Traced as a lookup (with the backend's, on a miss, inside it).
        with tracing.span(
            "storage get", {"imageserver.storage": "memory", "imageserver.key": key}
        ):
            stored = self._current(key)
            if stored is not None:
                return stored
            slot = self._generations.slot(_folder(key))
            generation = self._generations[slot]
            stored = await self._backend.get(key)
            if stored is not None:
                self._keep(key, stored, slot, generation)
            return stored

    async def put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        *,
        durable: bool = True,
        etag: str | None = None,
    ) -> StoredObject:
        self._drop(key)
        slot = self._generations.slot(_folder(key))
        generation = self._generations[slot]
        stored = await self._backend.put(
            key, data, content_type, durable=durable, etag=etag
        )
        self._keep(key, stored, slot, generation)
        return stored

    async def exists(self, key: str) -> bool:
        return self._current(key) is not None or await self._backend.exists(key)

    async def list(self, folder: str) -> list[str]:
        return await self._backend.list(folder)

    async def delete(self, key: str) -> None:
        await self._deleting(_folder(key), self._backend.delete(key))

    async def delete_prefix(self, folder: str) -> None:
        await self._deleting(folder, self._backend.delete_prefix(folder))

    async def usage(self, folder: str) -> int:
        return await self._backend.usage(folder)

    async def _deleting(self, folder: str, deleted: Awaitable[None]) -> None:
        """Forget ``folder`` here while ``deleted`` removes it (or one of its
        objects) behind; once it is gone, change the folder's generation, so
        no process serves, or keeps from a read under way, what it held.

        The caller holds the folder's gate (`gates.FolderGate.purging`):
        nothing stores into the folder until the generation has changed.
        """
        self.drop_prefix(folder)
        try:
            await deleted
        finally:
            self.drop_prefix(folder)

    def drop_prefix(self, folder: str) -> None:
        """Forget what every process keeps of the image folder ``folder``
        (deleted here, or by a process on another host); a read on its way
        to the backend now is not kept."""
        self._generations.change(self._generations.slot(folder))
        for key in [k for k in self._objects if under(k, folder)]:
            self._drop(key)

    def _keep(self, key: str, stored: StoredObject, slot: int, generation: int) -> None:
        size = len(stored.data)
        if size > self._max_object_bytes or not self._cacheable(key):
            return
        self._drop(key)
        if self._generations[slot] != generation:
            return  # its folder was deleted meanwhile
        self._objects[key] = _Kept(stored, slot, generation)
        self.size += size
        while self.size > self._max_bytes:
            _, evicted = self._objects.popitem(last=False)
            self.size -= len(evicted.stored.data)

    def _drop(self, key: str) -> None:
        kept = self._objects.pop(key, None)
        if kept is not None:
            self.size -= len(kept.stored.data)
