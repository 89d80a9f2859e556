"""Stored bytes per namespace, against ``--namespace_quota_bytes``.

The store is the truth and is shared by every host: what a namespace holds
is counted there (`Storage.usage`: a walk of its folder, or a listing of
its bucket prefix) at most every ``interval`` seconds, when the namespace
is written to; between counts, what this process stores is added as it
goes (`Quotas.counting` wraps the storage: every put crosses it), and a
delete makes the next write count again. A host's workers share their
counts through one small file per namespace under the host's lock folder,
so one walk serves them all. Writes into a namespace at or past its quota
are refused with a 507 (`Quotas.check`, at `Images.check_quota`, which
every upload, stored file, batch and process crosses; each is checked
again as it stores, with the bytes of those being stored, `Quotas.reserving`);
variants are still made and served. docs/security.md says how far a quota
can be passed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from imageserver.errors import StorageFull
from imageserver.metrics.events import Events
from imageserver.runtime.pools import Runner
from imageserver.storage import Storage, StoredObject

log = Logger()

#: Namespaces whose counts a process keeps (the least recently written go).
MAX_NAMESPACES = 10_000


#: A count's time once something was deleted: no longer known.
_DELETED = float("-inf")


class QuotaExceeded(StorageFull):
    """A namespace holds as many bytes as its quota (507)."""


@dataclass(slots=True)
class _Count:
    stored: int  # bytes, as counted plus what this process stored since
    counted_at: float


class Quotas:
    """Refuses writes into a namespace that holds ``limit`` bytes or more."""

    def __init__(
        self,
        limit: int,
        storage: Storage,
        run: Runner,
        clock: IReactorTime,
        interval: float,
        events: Events,
        shared: str | None = None,
    ) -> None:
        self.limit = limit
        self._storage = storage
        self._run = run
        self._clock = clock
        self._interval = interval
        self._events = events
        self._shared = shared
        self._counts: OrderedDict[str, _Count] = OrderedDict()
        self._counting: dict[str, Deferred[None]] = {}
        #: Bytes of uploads being stored now, by namespace (`reserving`).
        self._reserved: dict[str, int] = {}

    def check(self, namespace: str) -> None:
        """Raise `QuotaExceeded` if ``namespace`` is known to hold its quota,
        with what this process is storing into it now; count it again (in
        the background) if its count is older than the interval. One not
        counted yet passes: it is counted once something is stored into it
        (`reserving`, `stored`), so requests that store nothing (not an
        image, a source that is gone) leave no count behind."""
        count = self._counts.get(namespace)
        if count is not None and self._clock.seconds() - count.counted_at >= (
            self._interval
        ):
            self.recount(namespace)
            count = self._counts.get(namespace)  # when counted at once
        if count is None or count.counted_at == _DELETED:
            return  # not known (since a delete): `reserving` waits for it
        reserved = self._reserved.get(namespace, 0)
        if count.stored + reserved >= self.limit:
            self._events.refused_by_quota()
            storing = f" and is storing {reserved} more" if reserved else ""
            raise QuotaExceeded(
                f"namespace {namespace!r} stores {count.stored} bytes{storing}, "
                f"its quota is {self.limit} (--namespace_quota_bytes): delete "
                "images from it (DELETE on an image's folder) or ask for a "
                "larger quota"
            )

    @contextlib.asynccontextmanager
    async def reserving(self, namespace: str, size: int) -> AsyncIterator[None]:
        """Hold ``size`` bytes of ``namespace`` while a write stores them:
        checked with what is stored and what other writes hold, so writes
        at once cannot all pass a check made before any stored. A namespace
        not counted yet, or since a delete, is counted first (the write
        waits for it)."""
        count = self._counts.get(namespace)
        if count is None or count.counted_at == _DELETED:
            await self.recount(namespace)
        self.check(namespace)
        self._reserved[namespace] = self._reserved.get(namespace, 0) + size
        try:
            yield
        finally:
            left = self._reserved.pop(namespace, 0) - size
            if left > 0:
                self._reserved[namespace] = left

    def stored(self, namespace: str, size: int) -> None:
        """``size`` bytes were stored into ``namespace``: added to its count,
        or it is counted (the store holds them already)."""
        count = self._counts.get(namespace)
        if count is None:
            self.recount(namespace)
        else:
            count.stored += size
            self._counts.move_to_end(namespace)
            self._events.namespace_stored(namespace, count.stored)

    def recount(self, namespace: str) -> Deferred[None]:
        """Count ``namespace`` again (once at a time), from the host's shared
        count when a sibling made one within the interval; a failure is
        logged (the last count stands)."""
        running = self._counting.get(namespace)
        if running is None:
            running = Deferred.fromCoroutine(self._count(namespace))
            running.addErrback(
                lambda f: log.failure(
                    "counting the bytes of namespace {namespace} failed",
                    f,
                    namespace=namespace,
                )
            )
            if not running.called:
                self._counting[namespace] = running
                running.addBoth(self._counted, namespace)
        return running

    def _counted(self, result: None, namespace: str) -> None:
        self._counting.pop(namespace, None)
        return result

    async def _count(self, namespace: str) -> None:
        now = self._clock.seconds()
        path = self._path(namespace)
        try:
            known = None if path is None else await self._run(_read_count, path)
            if known is not None and now - known[1] < self._interval:
                stored, counted_at = known
            else:
                stored, counted_at = await self._storage.usage(namespace), now
                if path is not None:
                    await self._run(_write_count, path, stored, counted_at)
        except Exception:
            # Tried again after the interval, not by every write meanwhile;
            # what was known stands (nothing: writes pass).
            previous = self._counts.get(namespace)
            self._counts[namespace] = _Count(previous.stored if previous else 0, now)
            raise
        self._counts[namespace] = _Count(stored, counted_at)
        self._counts.move_to_end(namespace)
        while len(self._counts) > MAX_NAMESPACES:
            gone, _ = self._counts.popitem(last=False)
            self._events.namespace_stored(gone, None)
        self._events.namespace_stored(namespace, stored)

    def stale(self, namespace: str) -> None:
        """Something was deleted: the next write counts again."""
        count = self._counts.get(namespace)
        if count is not None:
            count.counted_at = _DELETED
        path = self._path(namespace)
        if path is not None:  # for the host's other workers too
            self._run(_write_count, path, 0, _DELETED).addErrback(
                lambda f: log.failure("marking a count stale failed", f)
            )

    def _path(self, namespace: str) -> str | None:
        if self._shared is None:
            return None
        name = hashlib.sha256(namespace.encode()).hexdigest()[:32]
        return os.path.join(self._shared, name)

    def counting(self, storage: Storage) -> Storage:
        """``storage``, with what is put and deleted through it counted here."""
        return _Counting(storage, self)


def _namespace(key: str) -> str:
    return key.partition("/")[0]


class _Counting:
    """A storage whose puts add to their namespace's count and whose deletes
    make it count again."""

    def __init__(self, backend: Storage, quotas: Quotas) -> None:
        self._backend = backend
        self._quotas = quotas

    async def get(self, key: str) -> StoredObject | None:
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
        stored = await self._backend.put(
            key, data, content_type, durable=durable, etag=etag
        )
        self._quotas.stored(_namespace(key), len(data))
        return stored

    async def exists(self, key: str) -> bool:
        return await self._backend.exists(key)

    async def list(self, folder: str) -> list[str]:
        return await self._backend.list(folder)

    async def delete(self, key: str) -> None:
        await self._backend.delete(key)
        self._quotas.stale(_namespace(key))

    async def delete_prefix(self, folder: str) -> None:
        await self._backend.delete_prefix(folder)
        self._quotas.stale(_namespace(folder))

    async def usage(self, folder: str) -> int:
        return await self._backend.usage(folder)


def _read_count(path: str) -> tuple[int, float] | None:
    try:
        with open(path) as f:
            stored, counted_at = f.read().split()
        return int(stored), float(counted_at)
    except (OSError, ValueError):
        return None


def _write_count(path: str, stored: int, counted_at: float) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{stored} {counted_at!r}")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
