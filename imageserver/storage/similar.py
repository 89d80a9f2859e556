"""The perceptual hashes of each namespace's images, for ``/similar``.

Kept in the store, so every instance (workers, hosts) shares them: each
upload and purge appends a segment, ``SIMILAR/{namespace}/{time}.{process}.
{sequence}`` (beside the namespaces, whose names are lower case: in none of
them, nor in a quota), of 25-byte records (``+`` or ``-``, the md5, the
hash), never rewritten. An instance reads a namespace's segments on its
first search and the new ones at most every `REFRESH` seconds after (at once
for an upload that asks about near-duplicates), in the order of their
names. To compact, it writes what it holds as one new segment, named just
after the newest it holds, and deletes those it read: after each purge, and
past `COMPACT_AFTER` segments once the new records are worth it
(`_worth_compacting`). Within a process, changes to a namespace's segments
take turns. Concurrent compactions write the same records twice
(harmless), a record is only ever deleted from a segment that is in a newer
one, and an instance that finds segments it read deleted by another's
compaction reads the namespace again. A process that compacts from what it
read before another's purge writes the purged image back: the purging
process drops it at its next compaction (`_drop_purged`).

In memory a namespace is two flat arrays, md5s and hashes, scanned with XOR
and a popcount: about 1 ms of CPU for a million images, and exact (no
structure to miss a neighbour). A hit names an image that was there when
its segment was read: callers check that it still is.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import DeferredLock
from twisted.internet.interfaces import IReactorTime

from imageserver.naming import INFO, ImageId
from imageserver.storage import Storage

#: The folder of the namespaces' segments.
FOLDER = "SIMILAR"
#: Seconds a namespace's segments are trusted before they are listed again.
REFRESH = 2.0
#: Segments of a namespace past which an instance compacts them.
COMPACT_AFTER = 64
#: Purges a process remembers, by namespace, to drop at its compactions.
REMEMBERED_PURGES = 4096
_RECORD = 25
_ADD, _REMOVE = b"+", b"-"


#: A segment's record: what happened, to which image, its hash.
_FIELDS = [("op", "S1"), ("md5", "S16"), ("hash", ">u8")]


@dataclass
class _Namespace:
    #: Segments read, by name, with their records.
    read: dict[str, int] = field(default_factory=dict)
    #: The images (md5s, 16 bytes each) and their hashes, one row each.
    digests: Any = None
    hashes: Any = None
    listed_at: float | None = None

    def apply(self, data: bytes) -> None:
        """A segment's records, in order: the last about an image counts."""
        import numpy

        usable = len(data) - len(data) % _RECORD
        records = numpy.frombuffer(data[:usable], dtype=_FIELDS)
        if self.digests is None:
            self.digests = numpy.empty(0, "S16")
            self.hashes = numpy.empty(0, numpy.uint64)
        if not len(records):
            return
        # Each image's last record in the segment.
        backwards = records[::-1]
        _, first = numpy.unique(backwards["md5"], return_index=True)
        last = backwards[first]
        kept = ~numpy.isin(self.digests, last["md5"])
        added = last[last["op"] == _ADD]
        self.digests = numpy.concatenate([self.digests[kept], added["md5"]])
        self.hashes = numpy.concatenate(
            [self.hashes[kept], added["hash"].astype(numpy.uint64)]
        )


class SimilarIndex:
    """Add, remove and find images of a namespace by perceptual hash."""

    def __init__(self, storage: Storage, clock: IReactorTime | None = None) -> None:
        self._storage = storage
        self._seconds = clock.seconds if clock is not None else time.time
        self._namespaces: dict[str, _Namespace] = {}
        self._process = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._sequence = itertools.count()
        self._last = 0
        #: Segments this process wrote into each namespace since it last
        #: looked whether to compact.
        self._written: dict[str, int] = {}
        #: One change of a namespace's segments at a time, here: a
        #: compaction never runs between a segment's name and its write.
        self._locks: dict[str, DeferredLock] = {}
        #: The images this process purged lately, by namespace: a
        #: compaction drops them whatever record of another process's
        #: brought them back (one that had not read the purge yet).
        self._purged: dict[str, OrderedDict[str, None]] = {}

    async def add(self, namespace: str, digest: str, phash: int) -> None:
        """Record the image ``digest`` with its hash."""
        self._purged.get(namespace, OrderedDict()).pop(digest, None)  # stored again
        async with self._lock(namespace):
            await self._append(namespace, _record(_ADD, digest, phash))
            self._written[namespace] = self._written.get(namespace, 0) + 1
            if self._written[namespace] >= COMPACT_AFTER:
                self._written[namespace] = 0
                await self._current(namespace, fresh=True)

    async def remove(self, namespace: str, digest: str) -> None:
        """Record that the image ``digest`` is gone, then compact the
        namespace's segments: nothing of a purged image stays in them."""
        purged = self._purged.setdefault(namespace, OrderedDict())
        purged[digest] = None
        while len(purged) > REMEMBERED_PURGES:
            purged.popitem(last=False)
        async with self._lock(namespace):
            await self._append(namespace, _record(_REMOVE, digest, 0))
            await self._current(namespace, fresh=True, compact=True)

    def _lock(self, namespace: str) -> DeferredLock:
        return self._locks.setdefault(namespace, DeferredLock())

    async def near(
        self, namespace: str, phash: int, distance: int, most: int, fresh: bool = False
    ) -> list[tuple[str, int]]:
        """The ``most`` images of ``namespace`` nearest ``phash``, at most
        ``distance`` bits from it: (md5, distance), the nearest first (among
        as near, the first recorded). ``fresh``: with every segment written
        so far read (not only those of `REFRESH` seconds ago)."""
        import numpy

        async with self._lock(namespace):
            state = await self._current(namespace, fresh)
        if state.hashes is None or not len(state.hashes):
            return []
        bits = numpy.bitwise_count(state.hashes ^ numpy.uint64(phash))
        found = numpy.flatnonzero(bits <= distance)
        found = found[numpy.argsort(bits[found], kind="stable")[:most]]
        # Raw bytes: an element of an S16 array loses trailing zero bytes.
        raw = state.digests[found].tobytes()
        return [
            (raw[16 * n : 16 * n + 16].hex(), int(bits[i])) for n, i in enumerate(found)
        ]

    async def _append(
        self, namespace: str, data: bytes, after: str | None = None
    ) -> None:
        """Write a segment of ``data`` (records), and apply it here.
        ``after``: a segment it must sort after (a compaction's newest)."""
        name = self._segment_name(after)
        await self._storage.put(
            f"{FOLDER}/{namespace}/{name}", data, "application/octet-stream"
        )
        state = self._namespaces.get(namespace)
        if state is not None:
            state.apply(data)
            state.read[name] = len(data) // _RECORD

    def _segment_name(self, after: str | None = None) -> str:
        """A name after every other this process wrote (the time, made to
        grow; a sequence number for the same time), sorting as it should.
        A compaction's is named just after the newest segment it holds (not
        now): a purge's record written elsewhere since it listed the store
        sorts after it, and is applied after it, wherever it is read."""
        if after is not None:
            newest = int(after.partition(".")[0]) + 1
            return f"{newest:020d}.{self._process}.{next(self._sequence):012d}"
        self._last = max(int(self._seconds() * 1e9), self._last + 1)
        return f"{self._last:020d}.{self._process}.{next(self._sequence):012d}"

    async def _current(
        self, namespace: str, fresh: bool = False, compact: bool = False
    ) -> _Namespace:
        """The namespace's state, with the segments written since it was
        last listed (at most `REFRESH` seconds ago, unless ``fresh``) read;
        compacted when `_worth_compacting`, or ``compact``."""
        state = self._namespaces.setdefault(namespace, _Namespace())
        now = self._seconds()
        if (
            not fresh
            and state.listed_at is not None
            and now - state.listed_at < REFRESH
        ):
            return state
        names = await self._storage.list(f"{FOLDER}/{namespace}")
        if any(name not in names for name in state.read):
            # Another instance compacted what was read here (a purge, say):
            # its removals went with the segments, so read it all again.
            state = self._namespaces[namespace] = _Namespace()
        state.listed_at = now
        for name in names:
            if name in state.read:
                continue
            stored = await self._storage.get(f"{FOLDER}/{namespace}/{name}")
            data = b"" if stored is None else stored.data  # compacted meanwhile
            state.apply(data)
            state.read[name] = len(data) // _RECORD
        if compact or _worth_compacting(state):
            await self._compact(namespace, state, names)
        return state

    async def _drop_purged(self, namespace: str, state: _Namespace) -> None:
        """Forget the images this process purged that a segment brought
        back, unless they are stored again."""
        import numpy

        purged = self._purged.get(namespace)
        if not purged or state.digests is None or not len(state.digests):
            return
        known = numpy.array([bytes.fromhex(d) for d in purged], dtype="S16")
        back = state.digests[numpy.isin(state.digests, known)].tobytes()
        for start in range(0, len(back), 16):
            digest = back[start : start + 16].hex()
            if not await _still_stored(self._storage, namespace, digest):
                state.apply(_record(_REMOVE, digest, 0))

    async def _compact(
        self, namespace: str, state: _Namespace, names: list[str]
    ) -> None:
        """Write what ``state`` holds as one segment (none if it holds
        nothing), then delete ``names`` (all of them read into it)."""
        import numpy

        await self._drop_purged(namespace, state)
        if state.digests is not None and len(state.digests):
            records = numpy.empty(len(state.digests), dtype=_FIELDS)
            records["op"] = _ADD
            records["md5"] = state.digests
            records["hash"] = state.hashes
            await self._append(
                namespace, records.tobytes(), after=max(names) if names else None
            )
        for name in names:
            await self._storage.delete(f"{FOLDER}/{namespace}/{name}")
            state.read.pop(name, None)


async def _still_stored(storage: Storage, namespace: str, digest: str) -> bool:
    return await storage.exists(ImageId(namespace, digest).key(INFO))


def _worth_compacting(state: _Namespace) -> bool:
    """Past `COMPACT_AFTER` segments, once the records outside the largest
    are an eighth of it or more: each record is then rewritten a bounded
    number of times, however large the namespace grows (a million images'
    25 MB is not rewritten for every 64 uploads)."""
    if len(state.read) <= COMPACT_AFTER:
        return False
    largest = max(state.read.values())
    return 8 * (sum(state.read.values()) - largest) >= largest


def _record(op: bytes, digest: str, phash: int) -> bytes:
    return op + bytes.fromhex(digest) + phash.to_bytes(8, "big")
