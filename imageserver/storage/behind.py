"""Writes of what can be made again answer at once and land in the background."""

from __future__ import annotations

import time

from imageserver.storage import Storage, StoredObject
from imageserver.storage.queue import WriteQueue


class WriteBehind:
    """A storage whose non-durable writes return before they reach ``backend``.

    A variant that a GET generated can be rendered again, so its client need
    not wait for it to reach the disk (or, with a bucket, the local cache).
    ``queue`` (writing to ``backend``, without retries: a write that fails is
    rendered again when next asked for) carries them; until one lands, reads
    of its key are answered from the queue, so nobody renders it twice.
    Durable writes, and writes whose ETag the caller does not have, wait for
    ``backend`` as before, after any write of the same key on its way.
    """

    def __init__(self, backend: Storage, queue: WriteQueue) -> None:
        assert queue.target is backend, "the queue must write to the backend"
        self._backend = backend
        self._queue = queue

    async def get(self, key: str) -> StoredObject | None:
        pending = self._queue.peek(key)
        if pending is not None:
            return pending
        return await self._backend.get(key)

    async def put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        *,
        durable: bool = True,
        etag: str | None = None,
    ) -> StoredObject:
        if durable or etag is None:
            await self._queue.settle(key)
            return await self._backend.put(
                key, data, content_type, durable=durable, etag=etag
            )
        stored = StoredObject(data, content_type, time.time(), etag)
        self._queue.submit(key, stored)
        return stored

    async def exists(self, key: str) -> bool:
        return self._queue.peek(key) is not None or await self._backend.exists(key)

    async def list(self, folder: str) -> list[str]:
        names = set(await self._backend.list(folder))
        names.update(self._queue.names_in(folder))
        return sorted(names)

    async def delete(self, key: str) -> None:
        # Else the write still on its way would bring the object back.
        await self._queue.cancel(key)
        await self._backend.delete(key)

    async def delete_prefix(self, folder: str) -> None:
        await self._queue.cancel(folder)
        await self._backend.delete_prefix(folder)

    async def usage(self, folder: str) -> int:
        return await self._backend.usage(folder) + self._queue.pending_bytes(folder)
