"""Writes of what can be made again answer at once and land in the background."""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from imageserver.errors import StorageFailed, StorageFull, StorageUnavailable
from imageserver.events import Events
from imageserver.storage import Storage, StoredObject
from imageserver.waiting import WhenIdle, drained

log = Logger()


class WriteBehind(Service):
    """A storage whose non-durable writes return before they reach ``backend``.

    A variant that a GET generated can be rendered again, so its client need
    not wait for it to reach the disk (or, with a bucket, the local cache).
    Until a write lands, reads of its key are answered from here, so nobody
    renders it twice. A write that fails is logged and forgotten: the variant
    is rendered again when next asked for. Durable writes, and writes whose
    ETag the caller does not have, wait for ``backend`` as before.

    At shutdown, pending writes get ``shutdown_timeout`` seconds (or what a
    callable says is left of the shutdown's time).
    """

    def __init__(
        self,
        backend: Storage,
        clock: IReactorTime,
        shutdown_timeout: float | Callable[[], float],
        events: Events | None = None,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._shutdown_timeout = shutdown_timeout
        self._events = events or Events()
        self._pending: dict[str, StoredObject] = {}
        self._landing: dict[str, list[Deferred[None]]] = {}
        self._idle = WhenIdle(lambda: bool(self._pending))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def wait_idle(self) -> Deferred[None]:
        """Fires once every pending write has landed or failed."""
        return self._idle.wait()

    async def get(self, key: str) -> StoredObject | None:
        pending = self._pending.get(key)
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
            await self._landed(key)
            return await self._backend.put(
                key, data, content_type, durable=durable, etag=etag
            )
        stored = StoredObject(data, content_type, time.time(), etag)
        running = key in self._pending
        self._pending[key] = stored
        self._events.write_queued(len(self._pending))
        if not running:
            Deferred.fromCoroutine(self._write(key))
        return stored

    async def exists(self, key: str) -> bool:
        return key in self._pending or await self._backend.exists(key)

    async def list(self, folder: str) -> list[str]:
        names = set(await self._backend.list(folder))
        prefix = folder.rstrip("/") + "/"
        names.update(
            key[len(prefix) :]
            for key in self._pending
            if key.startswith(prefix) and "/" not in key[len(prefix) :]
        )
        return sorted(names)

    async def delete(self, key: str) -> None:
        # Else the write still on its way would bring the object back.
        await self._landed(key)
        await self._backend.delete(key)

    async def _landed(self, key: str) -> None:
        """Wait for the write of ``key`` on its way, if there is one."""
        if key in self._pending:
            landed: Deferred[None] = Deferred()
            self._landing.setdefault(key, []).append(landed)
            await landed

    async def _write(self, key: str) -> None:
        while True:
            stored = self._pending[key]
            try:
                await self._backend.put(
                    key,
                    stored.data,
                    stored.content_type,
                    durable=False,
                    etag=stored.etag,
                )
            except (StorageFull, StorageUnavailable, StorageFailed) as e:
                log.warn(
                    "writing {key} failed ({error}); it will be generated again "
                    "when requested",
                    key=key,
                    error=e,
                )
                written = False
                break
            except Exception:
                log.failure(
                    "writing {key} failed; it will be generated again when requested",
                    key=key,
                )
                written = False
                break
            if self._pending[key] is stored:
                written = True
                break
            # A newer version arrived while this one was on its way.
        del self._pending[key]
        self._events.write_finished(written, len(self._pending))
        for landed in self._landing.pop(key, []):
            landed.callback(None)
        self._idle.check()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        what = f"{len(self._pending)} pending writes"
        if self._pending and not await drained(
            self.wait_idle, self._shutdown_timeout, self._clock, what
        ):
            for key in sorted(self._pending):
                log.error(
                    "shutting down before {key} was written; "
                    "it will be generated again when requested",
                    key=key,
                )
