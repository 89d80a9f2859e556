"""Times and counts every call to a storage backend, and traces it."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

from imageserver.metrics import tracing
from imageserver.metrics.events import Events
from imageserver.storage import Storage, StoredObject

T = TypeVar("T")


class MeteredStorage:
    def __init__(self, backend: Storage, name: str, events: Events) -> None:
        self._backend = backend
        self._name = name
        self._events = events

    async def _timed(self, operation: str, key: str, call: Awaitable[T]) -> T:
        start = time.perf_counter()
        ok = False
        try:
            with tracing.span(
                f"storage {operation}",
                {"imageserver.storage": self._name, "imageserver.key": key},
            ):
                result = await call
            ok = True
            return result
        finally:
            self._events.storage_call(
                self._name, operation, time.perf_counter() - start, ok
            )

    async def get(self, key: str) -> StoredObject | None:
        return await self._timed("get", key, self._backend.get(key))

    async def put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        *,
        durable: bool = True,
        etag: str | None = None,
    ) -> StoredObject:
        return await self._timed(
            "put",
            key,
            self._backend.put(key, data, content_type, durable=durable, etag=etag),
        )

    async def exists(self, key: str) -> bool:
        return await self._timed("exists", key, self._backend.exists(key))

    async def list(self, folder: str) -> list[str]:
        return await self._timed("list", folder, self._backend.list(folder))

    async def delete(self, key: str) -> None:
        await self._timed("delete", key, self._backend.delete(key))

    async def delete_prefix(self, folder: str) -> None:
        await self._timed("delete_prefix", folder, self._backend.delete_prefix(folder))

    async def usage(self, folder: str) -> int:
        return await self._timed("usage", folder, self._backend.usage(folder))
