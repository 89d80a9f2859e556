"""A bounded in-memory LRU in front of another storage, for immutable objects.

A cached GET then costs no thread hop and no disk read. Only objects that
never change once written (variants, originals, info.json: their paths are
content-addressed) are kept, so the cache can never serve stale bytes that the
backend has replaced; writes and deletes through this object keep it current.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable

from imageserver.storage import Storage, StoredObject, under


class MemoryCache:
    def __init__(
        self,
        backend: Storage,
        max_bytes: int,
        cacheable: Callable[[str], bool],
        max_object_bytes: int | None = None,
    ) -> None:
        self._backend = backend
        self._max_bytes = max_bytes
        self._max_object_bytes = (
            max_bytes // 16 if max_object_bytes is None else max_object_bytes
        )
        self._cacheable = cacheable
        self._objects: OrderedDict[str, StoredObject] = OrderedDict()
        self.size = 0
        #: Deletes begun or ended so far.
        self._deletes = 0

    async def get(self, key: str) -> StoredObject | None:
        stored = self._objects.get(key)
        if stored is not None:
            self._objects.move_to_end(key)
            return stored
        deletes = self._deletes
        stored = await self._backend.get(key)
        if stored is not None and deletes == self._deletes:
            self._keep(key, stored)
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
        stored = await self._backend.put(
            key, data, content_type, durable=durable, etag=etag
        )
        self._keep(key, stored)
        return stored

    async def exists(self, key: str) -> bool:
        return key in self._objects or await self._backend.exists(key)

    async def list(self, folder: str) -> list[str]:
        return await self._backend.list(folder)

    async def delete(self, key: str) -> None:
        await self._deleting(key, self._backend.delete(key))

    async def delete_prefix(self, folder: str) -> None:
        await self._deleting(folder, self._backend.delete_prefix(folder))

    async def _deleting(self, prefix: str, deleted: Awaitable[None]) -> None:
        """Forget ``prefix`` here while ``deleted`` removes it behind: reads on
        their way meanwhile are not kept either."""
        self.drop_prefix(prefix)
        try:
            await deleted
        finally:
            self._deletes += 1

    def drop_prefix(self, folder: str) -> None:
        """Forget what is kept of ``folder`` (another process deleted it); a
        read on its way to the backend now is not kept."""
        self._deletes += 1
        for key in [k for k in self._objects if under(k, folder)]:
            self._drop(key)

    def _keep(self, key: str, stored: StoredObject) -> None:
        size = len(stored.data)
        if size > self._max_object_bytes or not self._cacheable(key):
            return
        self._drop(key)
        self._objects[key] = stored
        self.size += size
        while self.size > self._max_bytes:
            _, evicted = self._objects.popitem(last=False)
            self.size -= len(evicted.data)

    def _drop(self, key: str) -> None:
        stored = self._objects.pop(key, None)
        if stored is not None:
            self.size -= len(stored.data)
