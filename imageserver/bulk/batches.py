"""Batches: many images processed in the background, on the server's own pool.

A job's state lives in the storage (``{ns}/batch/{id}/job.json`` and
``state.json``), so it survives a restart, any instance sharing the bucket can
answer for it, and a job found unfinished resumes where it stopped.

The state is a checkpoint, not a journal: written at a bounded rate (every
`CHECKPOINT_SECONDS`, slower for a large state) and when the job ends, made
into JSON off the reactor. Rewriting it after every item cost a 10,000-item
batch of fast failures 3 GB of writes; a restart now redoes at most the
items of the last interval, which are idempotent.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, cast

from twisted.internet.defer import (
    Deferred,
    DeferredLock,
    DeferredSemaphore,
    gatherResults,
    maybeDeferred,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from imageserver.errors import (
    ContentTooLarge,
    ImageServerError,
    InvalidRequest,
    NotFound,
    TooMany,
)
from imageserver.images import Images
from imageserver.naming import check_namespace
from imageserver.origin_paths import OriginPaths
from imageserver.runtime.pools import Runner
from imageserver.sources.origins import is_url, object_path
from imageserver.storage import Storage

log = Logger()

#: The most items one batch may hold.
MAX_ITEMS = 10_000
#: The largest body of a batch: 10,000 items of URLs of about 400 bytes.
MAX_BODY_BYTES = 4 * 1024 * 1024
#: Jobs running at once in one server process, per namespace and in all.
MAX_RUNNING_PER_NAMESPACE = 4
MAX_RUNNING = 16
#: A running job's state is written at most this often, ...
CHECKPOINT_SECONDS = 5.0
#: ... and a large state no faster than this (8 MB: every 32 s).
CHECKPOINT_BYTES_PER_SECOND = 256 * 1024

_HASH = re.compile(r"[0-9a-f]{32}\Z")


@dataclass(frozen=True)
class Item:
    """One thing to process: a file, or a line of a stream."""

    line: int
    #: A file to upload.
    path: str | None = None
    url: str | None = None
    digest: str | None = None
    #: A path of the namespace's origin.
    origin_path: str | None = None

    @property
    def label(self) -> str:
        return self.path or self.url or self.origin_path or ""


def parse_line(number: int, line: str) -> Item | None:
    """A stream line: a URL and/or a 32-hex hash, tab-separated, in any order.

    Blank lines are None; anything else malformed raises ValueError.
    """
    fields = [f.strip() for f in line.rstrip("\r\n").split("\t") if f.strip()]
    if not fields:
        return None
    url = digest = None
    for field in fields:
        if _HASH.match(field) and digest is None:
            digest = field
        elif field.startswith(("http://", "https://")) and url is None:
            url = field
        else:
            raise ValueError(f"not a URL or a 32-hex hash: {field!r}")
    return Item(number, url=url, digest=digest)


def _text(data: bytes) -> str:
    """A batch body as text: UTF-8 (a byte order mark at its start is not
    part of the first line); `InvalidRequest` naming the line otherwise, as
    a path or URL that is not UTF-8 would be read as another one."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InvalidRequest(
            f"line {line}: the body is not UTF-8 text (one item a line)"
        ) from None


def batch_key(namespace: str, job_id: str, name: str) -> str:
    """Where a job's files live: beside the namespace's images, never among them.

    ``batch`` has five letters, so it never collides with a hash folder.
    """
    return f"{check_namespace(namespace)}/batch/{job_id}/{name}"


def check_job_id(job_id: str) -> str:
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        raise NotFound("unknown batch") from None


def failed_result(item: dict[str, Any], error: str | None) -> dict[str, Any]:
    """An item's line in a job's report with no image (yet): what it named,
    and ``error``."""
    if "path" in item:
        return {"path": item["path"], "hash": None, "width": None, "height": None,
                "error": error}  # fmt: skip
    return {"hash": item["hash"], "url": item["url"], "width": None,
            "height": None, "error": error}  # fmt: skip


async def item_result(
    images: Images,
    paths: OriginPaths | None,
    namespace: str,
    outputs: str,
    item: dict[str, Any],
) -> dict[str, Any]:
    """One item of a batch, done: its result as the job's report lists it.
    Here or on a cluster worker alike. An item is ``{"url": ..., "hash":
    ...}``, or ``{"path": ...}`` in an origin's namespace (``paths``: the
    origins here), whose path is fetched if new."""
    if "path" in item:
        if paths is None or not paths.serves(namespace):
            return failed_result(
                item, f"namespace {namespace!r} has no origin (--origin) here"
            )
        work = paths.process_item(namespace, item["path"], outputs or None)
    else:
        work = images.process_item(
            namespace, url=item["url"], digest=item["hash"], outputs=outputs or None
        )
    return await _reported(failed_result(item, None), item, work)


async def _reported(
    result: dict[str, Any],
    item: dict[str, Any],
    work: Coroutine[Any, Any, dict[str, Any]],
) -> dict[str, Any]:
    """``result`` completed by ``work``'s info.json, or by its failure."""
    try:
        info = await work
    except ImageServerError as e:
        result["error"] = str(e)
        if e.detail is not None:
            result["detail"] = e.detail  # for the server's log, not the report
    except Exception:
        # A bug, met by this item alone: logged in full here, recorded as the
        # item's failure, and the job goes on (re-running it on every poll
        # would meet it again).
        log.failure("batch item {item} failed unexpectedly", item=item)
        result["error"] = "internal error while processing this item"
    else:
        result.update(hash=info["hash"], width=info["width"], height=info["height"])
    return result


class Shards(Protocol):
    """Where a batch's items run when not in this process: a cluster."""

    def run(
        self, namespace: str, outputs: str, items: list[dict[str, Any]]
    ) -> Deferred[list[dict[str, Any]]]:
        """Fires with `item_result` of each item, in order; fails when the
        cluster cannot be reached (the items are then submitted again)."""
        ...

    def shard_size(self, items: int) -> int: ...


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def _at_once(f: Any, *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


class _Job:
    """A job running in this process: its items, its results so far, and
    when its state may next be written."""

    def __init__(self, job: dict[str, Any], state: dict[str, Any]) -> None:
        self.job = job
        self.results: dict[str, Any] = state["results"]
        self.failed = sum(1 for r in self.results.values() if r.get("error"))
        self.next_write = 0.0

    @property
    def namespace(self) -> str:
        return str(self.job["namespace"])

    def record(self, index: int, result: dict[str, Any]) -> None:
        self.results[str(index)] = result
        if result.get("error"):
            self.failed += 1

    def report(self) -> dict[str, Any]:
        return {
            "state": "running",
            "total": len(self.job["items"]),
            "done": len(self.results) - self.failed,
            "failed": self.failed,
        }


class Batches:
    """Creates, runs and reports batch jobs.

    At most ``concurrency`` items of all batches are processed at once, so a
    big batch never takes the processing pool from interactive requests.
    ``run`` makes a job's JSON off the reactor (the I/O pool).
    """

    def __init__(
        self,
        images: Images,
        storage: Storage,
        concurrency: int = 1,
        *,
        shards: Shards | None = None,
        clock: IReactorTime | None = None,
        run: Runner = _at_once,
        origin_paths: OriginPaths | None = None,
    ) -> None:
        self._images = images
        #: Origin namespaces' batches list paths, run here (a cluster's
        #: workers have no origins).
        self._paths = origin_paths
        self._storage = storage
        self._slots = DeferredSemaphore(concurrency)
        self._running: dict[str, Deferred[None]] = {}
        self._jobs: dict[str, _Job] = {}
        #: With --scheduler: the cluster the items run on, in shards.
        self._shards = shards
        if clock is None:
            from twisted.internet import reactor as default

            clock = cast(IReactorTime, default)
        self._clock = clock
        self._run_off = run

    async def create(self, namespace: str, body: BinaryIO, outputs: str | None) -> str:
        """Store a new job from newline-separated items and start it; its id."""
        check_namespace(namespace)
        self._images.check_outputs(namespace, outputs)  # refuse bad ones now
        self._check_room(namespace)
        data = await self._images.read(body)
        if len(data) > MAX_BODY_BYTES:
            raise ContentTooLarge(
                f"a batch body may have at most {MAX_BODY_BYTES} bytes; "
                "split the list into several batches"
            )
        text = _text(data)
        if self._paths is not None and self._paths.serves(namespace):
            listed = self._origin_items(namespace, text)
        else:
            listed = self._items(namespace, text)
            if outputs:  # items by hash store their outputs
                self._images.check_quota(namespace)
        if len(listed) > MAX_ITEMS:
            raise InvalidRequest(
                f"at most {MAX_ITEMS} items per batch; split the list into "
                "several batches"
            )
        self._check_room(namespace)  # again: others may have started meanwhile
        job_id = str(uuid.uuid4())
        job = {
            "id": job_id,
            "namespace": namespace,
            "outputs": outputs or "",
            "created": time.time(),
            "items": listed,
        }
        state: dict[str, Any] = {"state": "running", "results": {}}
        await self._put(namespace, job_id, "job.json", job)
        await self._put(namespace, job_id, "state.json", state)
        self._start(job, state)
        log.info(
            "batch {job_id} of {count} items started", job_id=job_id, count=len(listed)
        )
        return job_id

    def _items(self, namespace: str, text: str) -> list[dict[str, Any]]:
        """A batch's lines: URLs and/or hashes."""
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                item = parse_line(number, line)
            except ValueError as e:
                raise InvalidRequest(f"line {number}: {e}") from None
            if item is not None:
                items.append(item)
        if not items:
            raise InvalidRequest("the body lists no hashes or URLs")
        if any(item.digest is None for item in items):
            self._images.check_uploads(namespace)
        return [{"url": i.url, "hash": i.digest} for i in items]

    def _origin_items(self, namespace: str, text: str) -> list[dict[str, Any]]:
        """An origin namespace's batch lines: one path of the origin each (a
        URL is an upload, refused there)."""
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            path = line.strip()
            if not path:
                continue
            if is_url(path):
                self._images.check_uploads(namespace)
            try:
                object_path(path)
            except InvalidRequest as e:
                raise InvalidRequest(f"line {number}: {e}") from None
            items.append({"path": path})
        if not items:
            raise InvalidRequest(
                "the body lists no paths (one path of the origin per line)"
            )
        return items

    def _check_room(self, namespace: str) -> None:
        """Refuse a job beyond the running jobs' caps (429), saying which."""
        here = sum(1 for j in self._jobs.values() if j.namespace == namespace)
        if here >= MAX_RUNNING_PER_NAMESPACE:
            raise TooMany(
                f"{here} batches are running in namespace {namespace!r}, the most "
                "at once; wait for one to finish (GET its /batch/{job_id} until "
                "it answers 200) and try again"
            )
        if len(self._jobs) >= MAX_RUNNING:
            raise TooMany(
                f"{len(self._jobs)} batches are running on this server, the most "
                "at once; try again when one has finished"
            )

    async def status(self, namespace: str, job_id: str) -> tuple[bool, dict[str, Any]]:
        """(finished, report). An unfinished job not running here is resumed,
        when the caps on running jobs leave room for it."""
        job_id = check_job_id(job_id)
        running = self._jobs.get(job_id)
        if running is not None and running.namespace == namespace:
            return False, running.report()  # from memory: nothing read
        job = await self._get(namespace, job_id, "job.json")
        state = await self._get(namespace, job_id, "state.json")
        results = state["results"]
        failed = sum(1 for r in results.values() if r.get("error"))
        report = {
            "state": state["state"],
            "total": len(job["items"]),
            "done": len(results) - failed,
            "failed": failed,
        }
        if state["state"] != "done":
            if job_id not in self._running:
                try:
                    self._check_room(namespace)
                except TooMany:
                    pass  # resumed when asked again, once there is room
                else:
                    log.info("batch {job_id} resumed", job_id=job_id)
                    self._start(job, state)
            return False, report
        report["items"] = [results[str(i)] for i in range(len(job["items"]))]
        return True, report

    def _start(self, job: dict[str, Any], state: dict[str, Any]) -> None:
        job_id = job["id"]
        # The first item finished is written at once (a small state), so a
        # job killed early resumes without redoing it; later ones at the rate.
        running = self._jobs[job_id] = _Job(job, state)
        d = Deferred.fromCoroutine(self._run(running))
        self._running[job_id] = d

        def finished(result: object) -> None:
            del self._running[job_id]
            del self._jobs[job_id]
            if isinstance(result, Failure):
                log.failure("batch {job_id} stopped", result, job_id=job_id)

        d.addBoth(finished)

    async def _run(self, running: _Job) -> None:
        job = running.job
        if self._shards is not None:
            await self._run_on_cluster(running, self._shards)
            return
        namespace, job_id = job["namespace"], job["id"]
        for index, item in enumerate(job["items"]):
            if str(index) in running.results:
                continue  # finished before a restart: not redone
            async with self._slots:
                result = await item_result(
                    self._images, self._paths, namespace, job["outputs"], item
                )
                result.pop("detail", None)  # logged here already
            running.record(index, result)
            await self._checkpoint(running)
        await self._checkpoint(running, final=True)
        log.info("batch {job_id} finished", job_id=job_id)

    async def _run_on_cluster(self, running: _Job, shards: Shards) -> None:
        """The unfinished items, in shards, on the cluster; the state written
        as shards finish. A shard the cluster could not run (it is
        down, or restarting) is submitted again after a while, so a job
        outlives a scheduler's restart as it outlives the server's."""
        job = running.job
        namespace, job_id = job["namespace"], job["id"]
        todo = [i for i in range(len(job["items"])) if str(i) not in running.results]
        size = shards.shard_size(len(todo))
        writing = DeferredLock()

        async def shard(indices: list[int]) -> None:
            items = [job["items"][i] for i in indices]
            delay = 1.0
            while True:
                try:
                    done = await shards.run(namespace, job["outputs"], items)
                    break
                except Exception as e:
                    log.warn(
                        "batch {job_id}: a shard could not run on the cluster "
                        "({error}); submitting it again in {delay:g}s",
                        job_id=job_id,
                        error=e,
                        delay=delay,
                    )
                    await deferLater(self._clock, delay)
                    delay = min(delay * 2, 60.0)
            for index, result in zip(indices, done, strict=True):
                detail = result.pop("detail", None)
                if detail is not None:
                    # Said in the worker's log, which the operator may not
                    # read: said here too (the report tells the client less).
                    log.warn(
                        "batch {job_id}: {item} failed on the cluster: {detail}",
                        job_id=job_id,
                        item=result.get("path") or result.get("url"),
                        detail=detail,
                    )
                running.record(index, result)
            async with writing:
                await self._checkpoint(running)

        await gatherResults(
            [
                Deferred.fromCoroutine(shard(todo[i : i + size]))
                for i in range(0, len(todo), size)
            ]
        )
        await self._checkpoint(running, final=True)
        log.info("batch {job_id} finished on the cluster", job_id=job_id)

    async def _checkpoint(self, running: _Job, final: bool = False) -> None:
        """Write the job's state when its interval has passed, or it is done.

        The results are copied here (each result is never changed once
        made) and made into JSON off the reactor."""
        now = self._clock.seconds()
        if not final and now < running.next_write:
            return
        state = {"state": "done" if final else "running",
                 "results": dict(running.results)}  # fmt: skip
        size = await self._put(
            running.namespace, running.job["id"], "state.json", state
        )
        running.next_write = self._clock.seconds() + max(
            CHECKPOINT_SECONDS, size / CHECKPOINT_BYTES_PER_SECOND
        )

    async def _put(self, namespace: str, job_id: str, name: str, value: Any) -> int:
        """Store ``value`` as JSON; its size in bytes."""
        data = await self._run_off(_encode, value)
        await self._storage.put(
            batch_key(namespace, job_id, name), data, "application/json"
        )
        return len(data)

    async def _get(self, namespace: str, job_id: str, name: str) -> Any:
        stored = await self._storage.get(batch_key(namespace, job_id, name))
        if stored is None:
            raise NotFound("unknown batch")
        return await self._run_off(json.loads, stored.data)
