"""Paths in an origin's namespace, and the stored images they stand for.

A namespace backed by an origin (``--origin NAME=URL``) is addressed by the
origin's own paths. The first request for a path fetches its object (once,
however many ask, across the workers of a host), stores it as an upload
would (checked, under its md5) and keeps a record in the storage: the path's
hash, the origin's validator, when it was last checked. Every instance on
the same store shares the records. After ``ttl`` a path is served from what
is stored while it is checked again in the background; an origin that is
down or failing leaves what is stored being served.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from imageserver.errors import (
    ContentTooLarge,
    ImageServerError,
    ImageTooLarge,
    NotFound,
    SourceTimeout,
    SourceUnavailable,
    UnsupportedImage,
)
from imageserver.images import Images
from imageserver.metrics.events import Events
from imageserver.naming import INFO, ImageId
from imageserver.sources.origins import Origin, object_path
from imageserver.storage import Storage
from imageserver.storage.flights import Flights
from imageserver.storage.hostlocks import HostLocks

log = Logger()

#: The folder of a namespace's path records: never a hash folder's first
#: part (three hex digits), never a variant or file name.
RECORDS = "paths"
#: Seconds a record read from the storage is used again without reading it:
#: a cached variant by path then costs what one by hash does (a storage read
#: per request cost 0.22 ms, +76 %: benchmarks/origins.py), and what another
#: process changes (a forget, a new hash) is seen within this long.
REMEMBER_SECONDS = 1.0
#: Records remembered at most (the least recently used go first).
REMEMBERED = 10_000
#: Seconds at least between two attempts on a path whose origin failed (for
#: a path with an image stored, which is served meanwhile, `--origin_ttl`
#: if longer): a failing origin is not asked at the rate clients ask, and
#: the log says so once per attempt.
FAILURE_PAUSE = 5.0


@dataclass(frozen=True)
class Record:
    """What a path stood for when it was last checked at the origin."""

    path: str
    #: The md5 of its object, or None: the origin had no such object.
    hash: str | None
    #: The origin's validator of those bytes (ETag, Last-Modified, ...).
    validator: str | None
    #: When the origin was last asked (seconds since the epoch).
    checked: float
    #: For a path the origin no longer has: the image it stood for, which a
    #: forget of the path still purges.
    was: str | None = None


def _told(e: Exception, namespace: str, path: str) -> ImageServerError:
    """What a client is told of an origin's failure: its kind, no address."""
    if isinstance(e, (ContentTooLarge, UnsupportedImage, ImageTooLarge)):
        return e  # about the object, not the origin
    kind = SourceTimeout if isinstance(e, SourceTimeout) else SourceUnavailable
    what = "did not answer in time" if kind is SourceTimeout else "failed"
    answer: ImageServerError = kind(
        f"the origin of {namespace!r} {what} for {path!r}; it is asked again "
        f"in {FAILURE_PAUSE:g} seconds (the server's log says why)"
    )
    #: What the operator is told (the command line's item lines): why.
    answer.detail = f"the origin of {namespace!r} {what} for {path!r}: {e}"
    return answer


def _again(answer: ImageServerError) -> ImageServerError:
    """The answer of a recent failure, as a new exception to raise."""
    return copy.copy(answer)


def _missing_here(namespace: str, path: str) -> NotFound:
    return NotFound(f"no object {path!r} at the origin of {namespace!r}")


def record_key(namespace: str, segments: tuple[str, ...]) -> str:
    """The storage key of a path's record: its SHA-256, so every path has a
    key of the same shape, whatever it spells."""
    digest = hashlib.sha256("/".join(segments).encode("utf-8")).hexdigest()
    return f"{namespace}/{RECORDS}/{digest[:2]}/{digest[2:]}.json"


@functools.lru_cache(maxsize=4096)
def _located(namespace: str, path: str) -> tuple[tuple[str, ...], str]:
    """A path's segments and its record's key (remembered: a cached variant
    by path asks for them on every request)."""
    segments = object_path(path)
    return segments, record_key(namespace, segments)


class OriginPaths:
    """Each origin namespace's paths, resolved to stored images."""

    def __init__(
        self,
        *,
        images: Images,
        storage: Storage,
        origins: Mapping[str, Origin],
        clock: IReactorTime,
        ttl: float,
        negative_ttl: float,
        events: Events,
        host_locks: HostLocks | None = None,
        max_fetches: int = 4,
        log_failures: bool = True,
        stale_while_revalidate: float = 0,
    ) -> None:
        self._images = images
        self._stale_while_revalidate = stale_while_revalidate
        self._storage = storage
        self._origins = dict(origins)
        self._clock = clock
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._events = events
        self._host_locks = host_locks
        #: Whether an origin's failures are logged (the command line says
        #: them in each item's line instead).
        self._log_failures = log_failures
        self._checks: Flights[str, Record] = Flights()
        #: Objects being fetched and stored at once, each up to
        #: --max_source_bytes in memory: the others wait their turn.
        self._fetching = DeferredSemaphore(max(1, max_fetches))
        #: Paths whose origin failed lately: when, and the client's answer.
        self._failed: OrderedDict[str, tuple[float, ImageServerError]] = OrderedDict()
        #: Records lately read or written: (record, when it was read).
        self._remembered: OrderedDict[str, tuple[Record, float]] = OrderedDict()
        #: Paths never fetched that the origin does not have, with when it
        #: said so: kept here alone, so paths a client makes up (a scanner's)
        #: write nothing to the storage.
        self._missing: OrderedDict[str, float] = OrderedDict()
        #: Background checks under way (stopping waits for none: a check
        #: cut short leaves the record as it was).
        self.checking: set[Deferred[Record]] = set()

    def serves(self, namespace: str) -> bool:
        return namespace in self._origins

    def cache_control(self) -> str:
        """Answers for a path may change after a check: kept `ttl`, and
        served stale while a cache asks again, if the operator said."""
        header = f"public, max-age={int(self._ttl)}"
        if self._stale_while_revalidate:
            seconds = math.ceil(self._stale_while_revalidate)
            header += f", stale-while-revalidate={seconds}"
        return header

    async def image(
        self,
        namespace: str,
        path: str,
        gone: ImageId | None = None,
        wait: bool = False,
    ) -> ImageId:
        """The stored image ``path`` stands for, fetched when new or gone
        stale past use; `NotFound` when the origin has no such object.

        ``gone``: the image this path was found to stand for is no longer
        stored (purged by its hash): the origin is asked again at once.
        ``wait``: a stale path is checked before the answer, not in the
        background (bulk work, which warms what the origin has now); an
        origin failing then leaves what is stored.
        """
        segments, key = _located(namespace, path)
        record = await self._recall(key)
        now = self._clock.seconds()
        if gone is not None and record is not None and record.hash == gone.hash:
            self._remembered.pop(key, None)
            record = await self._checks.run(
                [key], self._checker(namespace, segments, gone.hash)
            )[key]
        failed = self._failed.get(key)
        # A path with an image stored is served meanwhile, and asked again
        # after the TTL; one with nothing to serve fails until asked again.
        serving = record is not None and record.hash is not None
        pause = max(self._ttl, FAILURE_PAUSE) if serving else FAILURE_PAUSE
        pausing = failed is not None and now - failed[0] < pause
        if record is not None and record.hash is not None:
            stored = record.hash
            if now - record.checked < self._ttl:
                return ImageId(namespace, stored)
            if pausing:
                self._events.origin_stale_served(namespace, "origin_failing")
                return ImageId(namespace, stored)
            if not wait:
                self._check_in_background(namespace, segments, key)
                self._events.origin_stale_served(namespace, "revalidating")
                return ImageId(namespace, stored)
            checking = self._checks.run([key], self._checker(namespace, segments))
            checked = None
            # Stale-if-error: the check logged and counted a failure.
            with contextlib.suppress(ImageServerError):
                checked = await checking[key]
            if checked is None:
                self._events.origin_stale_served(namespace, "origin_failing")
            elif checked.hash is None:
                raise _missing_here(namespace, path)
            else:
                stored = checked.hash
            return ImageId(namespace, stored)
        if pausing and failed is not None:
            raise _again(failed[1])
        missing = _missing_here(namespace, path)
        if record is not None and now - record.checked < self._negative_ttl:
            raise missing
        said = self._missing.get(key)
        if record is None and said is not None and now - said < self._negative_ttl:
            raise missing
        record = await self._checks.run([key], self._checker(namespace, segments))[key]
        if record.hash is None:
            raise missing
        return ImageId(namespace, record.hash)

    async def process_item(
        self,
        namespace: str,
        path: str,
        outputs: str | None = None,
        tell_why: bool = False,
    ) -> dict[str, Any]:
        """One item of bulk work in an origin's namespace (a batch's, the
        command line's): the path fetched if new, its ``outputs`` made;
        its info.json. ``tell_why``: an origin's failure says why (to the
        operator running the command line, not to an HTTP client)."""
        try:
            image = await self.image(namespace, path, wait=True)
        except ImageServerError as e:
            if tell_why and e.detail is not None:
                raise type(e)(e.detail) from None
            raise
        if outputs:
            await self._images.process(image, outputs)
        info = await self._images.get(image, INFO)
        return json.loads(info.data)  # type: ignore[no-any-return]

    async def forget(self, namespace: str, path: str) -> ImageId | None:
        """Forget ``path`` (the next request fetches it again); the image it
        stood for, if any, for the caller to purge."""
        _, key = _located(namespace, path)
        record = await self._read(key)
        self._remembered.pop(key, None)
        self._failed.pop(key, None)
        if record is None:
            if self._missing.pop(key, None) is None:
                raise NotFound(
                    f"{path!r} is not known here: never fetched from the origin, "
                    "or forgotten already"
                )
            return None
        await self._storage.delete(key)
        stood_for = record.hash or record.was
        return None if stood_for is None else ImageId(namespace, stood_for)

    def _check_in_background(
        self, namespace: str, segments: tuple[str, ...], key: str
    ) -> None:
        checking = self._checks.run([key], self._checker(namespace, segments))[key]
        self.checking.add(checking)
        # Stale-if-error: what is stored goes on being served (the check
        # counted and logged the error).
        checking.addErrback(lambda _: None)
        checking.addBoth(lambda _: self.checking.discard(checking))

    def _checker(
        self, namespace: str, segments: tuple[str, ...], gone: str | None = None
    ) -> Callable[[list[str]], Coroutine[Any, Any, dict[str, Record]]]:
        async def check(keys: list[str]) -> dict[str, Record]:
            (key,) = keys
            if self._host_locks is None:
                return {key: await self._check(namespace, segments, key, gone)}
            async with self._host_locks.holding([key]):
                return {key: await self._check(namespace, segments, key, gone)}

        return check

    async def _check(
        self,
        namespace: str,
        segments: tuple[str, ...],
        key: str,
        gone: str | None = None,
    ) -> Record:
        """Ask the origin about a path and record the answer (``gone``: the
        hash it stood for, no longer stored: fetched whatever the record)."""
        record = await self._read(key)
        now = self._clock.seconds()
        if (
            record is not None
            and (gone is None or record.hash != gone)
            and now - record.checked
            < (self._ttl if record.hash is not None else self._negative_ttl)
        ):
            return record  # checked meanwhile (another worker, instance)
        path = "/".join(segments)
        had = (
            record.hash
            if record is not None and record.hash and record.hash != gone
            else None
        )
        await self._fetching.acquire()
        try:
            return await self._ask(namespace, path, segments, key, record, had)
        finally:
            self._fetching.release()

    async def _ask(
        self,
        namespace: str,
        path: str,
        segments: tuple[str, ...],
        key: str,
        record: Record | None,
        had: str | None,
    ) -> Record:
        """Ask the origin for ``path``; ``had``: the hash it stood for, still
        to be checked as stored (if it was purged since, it is fetched whole)."""
        now = self._clock.seconds()
        origin = self._origins[namespace]
        if had is not None and not await self._images.stored(ImageId(namespace, had)):
            had = None
        known = record.validator if had is not None and record is not None else None
        try:
            fetched = await origin.fetch(segments, known)
        except NotFound:
            return await self._missing_now(namespace, path, key, record, now)
        except Exception as e:
            self._failing(namespace, path, key, had, e, now)
        if fetched is None:
            assert had is not None
            self._failed.pop(key, None)
            self._events.origin(namespace, "not_modified")
            return await self._write(key, Record(path, had, known, now))
        try:
            image = await self._images.store_original(
                namespace, fetched.data, f"the origin's object {path!r}"
            )
        except (ContentTooLarge, UnsupportedImage, ImageTooLarge) as e:
            # The object itself: fetched again only after the pause.
            self._failing(namespace, path, key, had, e, now)
        self._failed.pop(key, None)
        # An origin that gives no validator is fetched whole at each check:
        # the same bytes again are "not modified" all the same.
        self._events.origin(
            namespace,
            "fetched" if had is None else "not_modified" if image.hash == had
            else "changed",
        )  # fmt: skip
        return await self._write(key, Record(path, image.hash, fetched.validator, now))

    async def _missing_now(
        self, namespace: str, path: str, key: str, record: Record | None, now: float
    ) -> Record:
        self._failed.pop(key, None)
        self._events.origin(namespace, "missing")
        was = None if record is None else record.hash or record.was
        if was is None:
            self._remember_missing(key, now)
            return Record(path, None, None, now)
        return await self._write(key, Record(path, None, None, now, was))

    def _failing(
        self,
        namespace: str,
        path: str,
        key: str,
        known: str | None,
        e: Exception,
        now: float,
    ) -> NoReturn:
        """Count, log and remember a failure of the origin (or of its
        object), and raise what the client is told."""
        self._events.origin(namespace, "error")
        if self._log_failures:
            log.warn(
                "asking the origin of {namespace} for {path} failed{stale}: {why}",
                namespace=namespace,
                path=path,
                stale=", serving what is stored" if known else "",
                why=e,
            )
        # The client is told what failed, not where: the origin's address
        # and what it said stay in the log.
        answer = _told(e, namespace, path)
        self._failed[key] = (now, answer)
        self._failed.move_to_end(key)
        while len(self._failed) > REMEMBERED:
            self._failed.popitem(last=False)
        raise copy.copy(answer) from None

    async def _recall(self, key: str) -> Record | None:
        """The record of ``key``, remembered if read within
        `REMEMBER_SECONDS`, else read."""
        remembered = self._remembered.get(key)
        if remembered is not None:
            record, read = remembered
            if self._clock.seconds() - read < REMEMBER_SECONDS:
                self._remembered.move_to_end(key)
                return record
        return await self._read(key)

    async def _read(self, key: str) -> Record | None:
        stored = await self._storage.get(key)
        if stored is None:
            self._remembered.pop(key, None)
            return None
        try:
            record = Record(**json.loads(stored.data))
        except (ValueError, TypeError):
            log.warn("{key} is not a path record; fetching again", key=key)
            return None
        self._remember(key, record)
        return record

    async def _write(self, key: str, record: Record) -> Record:
        data = json.dumps(asdict(record)).encode()
        await self._storage.put(key, data, "application/json")
        self._remember(key, record)
        return record

    def _remember_missing(self, key: str, now: float) -> None:
        self._missing[key] = now
        self._missing.move_to_end(key)
        while len(self._missing) > REMEMBERED:
            self._missing.popitem(last=False)

    def _remember(self, key: str, record: Record) -> None:
        self._remembered[key] = (record, self._clock.seconds())
        self._remembered.move_to_end(key)
        while len(self._remembered) > REMEMBERED:
            self._remembered.popitem(last=False)
