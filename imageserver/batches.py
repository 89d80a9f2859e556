"""Batches: many images processed in the background, on the server's own pool.

A job's state lives in the storage (``{ns}/batch/{id}/job.json`` and
``state.json``), so it survives a restart, any instance sharing the bucket can
answer for it, and a job found unfinished resumes where it stopped.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from twisted.internet.defer import (
    Deferred,
    DeferredLock,
    DeferredSemaphore,
    gatherResults,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from imageserver.errors import ImageServerError, InvalidRequest, NotFound
from imageserver.images import Images
from imageserver.naming import check_namespace
from imageserver.storage import Storage

log = Logger()

#: The most items one batch may hold.
MAX_ITEMS = 10_000

_HASH = re.compile(r"[0-9a-f]{32}\Z")


@dataclass(frozen=True)
class Item:
    """One thing to process: a file, or a line of a stream."""

    line: int
    path: str | None = None
    url: str | None = None
    digest: str | None = None

    @property
    def label(self) -> str:
        return self.path or self.url or ""


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


async def item_result(
    images: Images, namespace: str, outputs: str, item: dict[str, Any]
) -> dict[str, Any]:
    """One item of a batch (``{"url": ..., "hash": ...}``), done: its result
    as the job's report lists it. Here or on a cluster worker alike."""
    result = {"hash": item["hash"], "url": item["url"], "width": None,
              "height": None, "error": None}  # fmt: skip
    try:
        info = await images.process_item(
            namespace, url=item["url"], digest=item["hash"], outputs=outputs or None
        )
    except ImageServerError as e:
        result["error"] = str(e)
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


class Batches:
    """Creates, runs and reports batch jobs.

    At most ``concurrency`` items of all batches are processed at once, so a
    big batch never takes the processing pool from interactive requests.
    """

    def __init__(
        self,
        images: Images,
        storage: Storage,
        concurrency: int = 1,
        *,
        shards: Shards | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self._images = images
        self._storage = storage
        self._slots = DeferredSemaphore(concurrency)
        self._running: dict[str, Deferred[None]] = {}
        #: With --scheduler: the cluster the items run on, in shards.
        self._shards = shards
        self._clock = clock

    async def create(self, namespace: str, body: BinaryIO, outputs: str | None) -> str:
        """Store a new job from newline-separated items and start it; its id."""
        check_namespace(namespace)
        self._images.check_outputs(namespace, outputs)  # refuse bad ones now
        text = (await self._images.read(body)).decode("utf-8", "replace")
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
        if len(items) > MAX_ITEMS:
            raise InvalidRequest(f"at most {MAX_ITEMS} items per batch")
        job_id = str(uuid.uuid4())
        job = {
            "id": job_id,
            "namespace": namespace,
            "outputs": outputs or "",
            "created": time.time(),
            "items": [{"url": i.url, "hash": i.digest} for i in items],
        }
        await self._put(namespace, job_id, "job.json", job)
        await self._put(
            namespace, job_id, "state.json", {"state": "running", "results": {}}
        )
        self._start(job, {"state": "running", "results": {}})
        log.info(
            "batch {job_id} of {count} items started", job_id=job_id, count=len(items)
        )
        return job_id

    async def status(self, namespace: str, job_id: str) -> tuple[bool, dict[str, Any]]:
        """(finished, report). An unfinished job not running here is resumed."""
        job_id = check_job_id(job_id)
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
                log.info("batch {job_id} resumed", job_id=job_id)
                self._start(job, state)
            return False, report
        report["items"] = [results[str(i)] for i in range(len(job["items"]))]
        return True, report

    def _start(self, job: dict[str, Any], state: dict[str, Any]) -> None:
        job_id = job["id"]
        d = Deferred.fromCoroutine(self._run(job, state))
        self._running[job_id] = d

        def finished(result: object) -> None:
            del self._running[job_id]
            if isinstance(result, Failure):
                log.failure("batch {job_id} stopped", result, job_id=job_id)

        d.addBoth(finished)

    async def _run(self, job: dict[str, Any], state: dict[str, Any]) -> None:
        if self._shards is not None:
            await self._run_on_cluster(job, state, self._shards)
            return
        namespace, job_id = job["namespace"], job["id"]
        results: dict[str, Any] = state["results"]
        for index, item in enumerate(job["items"]):
            if str(index) in results:
                continue  # finished before a restart: not redone
            async with self._slots:
                results[str(index)] = await item_result(
                    self._images, namespace, job["outputs"], item
                )
            await self._put(namespace, job_id, "state.json", state)
        state["state"] = "done"
        await self._put(namespace, job_id, "state.json", state)
        log.info("batch {job_id} finished", job_id=job_id)

    async def _run_on_cluster(
        self, job: dict[str, Any], state: dict[str, Any], shards: Shards
    ) -> None:
        """The unfinished items, in shards, on the cluster; the state written
        as each shard finishes. A shard the cluster could not run (it is
        down, or restarting) is submitted again after a while, so a job
        outlives a scheduler's restart as it outlives the server's."""
        namespace, job_id = job["namespace"], job["id"]
        results: dict[str, Any] = state["results"]
        todo = [i for i in range(len(job["items"])) if str(i) not in results]
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
                    assert self._clock is not None
                    await deferLater(self._clock, delay)
                    delay = min(delay * 2, 60.0)
            for index, result in zip(indices, done, strict=True):
                results[str(index)] = result
            async with writing:
                await self._put(namespace, job_id, "state.json", state)

        await gatherResults(
            [
                Deferred.fromCoroutine(shard(todo[i : i + size]))
                for i in range(0, len(todo), size)
            ]
        )
        state["state"] = "done"
        await self._put(namespace, job_id, "state.json", state)
        log.info("batch {job_id} finished on the cluster", job_id=job_id)

    async def _put(self, namespace: str, job_id: str, name: str, value: Any) -> None:
        data = json.dumps(value).encode()
        await self._storage.put(
            batch_key(namespace, job_id, name), data, "application/json"
        )

    async def _get(self, namespace: str, job_id: str, name: str) -> Any:
        stored = await self._storage.get(batch_key(namespace, job_id, name))
        if stored is None:
            raise NotFound("unknown batch")
        return json.loads(stored.data)
