"""A remote store (the truth) with the local disk as a working cache."""

from __future__ import annotations

from imageserver.storage import Storage, StoredObject
from imageserver.storage.queue import WriteQueue


class TieredStorage:
    """Reads try the local cache, then the remote store (and fill the cache).

    A durable write goes to the remote store first, then to the cache, so an
    acknowledged write is in the bucket. A non-durable write lands in the
    cache and is handed to ``uploads`` (a queue writing to ``remote``, with
    retries), so a GET that generated a variant is not held back by the
    upload. Deletes cancel uploads on their way, then delete remotely, then
    locally.
    """

    def __init__(self, local: Storage, remote: Storage, uploads: WriteQueue) -> None:
        assert uploads.target is remote, "the queue must write to the remote store"
        self.local = local
        self.remote = remote
        self._uploads = uploads

    async def get(self, key: str) -> StoredObject | None:
        stored = await self.local.get(key)
        if stored is None:
            stored = await self.remote.get(key)
            if stored is not None:
                await self.local.put(key, stored.data, stored.content_type)
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
        if durable:
            await self._uploads.settle(key)
            stored = await self.remote.put(key, data, content_type)
            await self.local.put(key, data, content_type)
            return stored
        stored = await self.local.put(key, data, content_type, durable=False, etag=etag)
        self._uploads.submit(key, stored)
        return stored

    async def exists(self, key: str) -> bool:
        return await self.local.exists(key) or await self.remote.exists(key)

    async def list(self, folder: str) -> list[str]:
        """The remote folder, plus what is still on its way there."""
        remote = await self.remote.list(folder)
        local = await self.local.list(folder)
        return sorted(set(remote) | set(local))

    async def delete(self, key: str) -> None:
        await self._uploads.cancel(key)
        await self.remote.delete(key)
        await self.local.delete(key)

    async def delete_prefix(self, folder: str) -> None:
        await self._uploads.cancel(folder)
        await self.remote.delete_prefix(folder)
        await self.local.delete_prefix(folder)

    async def usage(self, folder: str) -> int:
        """The remote's (the truth), with the uploads on their way there."""
        return await self.remote.usage(folder) + self._uploads.pending_bytes(folder)
