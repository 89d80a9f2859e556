"""``imageserver process`` on a Dask cluster: shards of items, run by workers.

The items are split into shards of ``--shard_size``; each shard is one Dask
task. A worker process runs its shards with the server's own use cases
(`imageserver.bulk.item`), on a Twisted reactor in a thread of its own, started on
the first shard and kept for the next ones (a reactor cannot be started
twice in a process), with its pools and storage. So a shard costs one task
round trip, not a process start. A shard whose task fails is retried
``--shard_retries`` times; a worker that dies has its shards redone
elsewhere by the scheduler. Items are idempotent (stored under their md5,
outputs made when missing), so a shard done twice stores the same files.

Lines are printed as shards finish: in the order of completion, as local runs
print them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import IO, Any, TypeVar, cast

from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredSemaphore,
    gatherResults,
)

from imageserver.assembly import (
    blocking,
    check_store,
    make_images,
    make_origin_paths,
    shared_store,
)
from imageserver.bulk.batches import Item, batch_key, failed_result, item_result
from imageserver.bulk.item import Outcome, Progress, items_from, outcome_of, unique
from imageserver.config import Config
from imageserver.errors import ImageServerError
from imageserver.images import Images
from imageserver.metrics.events import Events
from imageserver.origin_paths import OriginPaths
from imageserver.runtime.pools import Runner
from imageserver.runtime.shutdown import Deadline, OrderedMultiService

T = TypeVar("T")


def shards(items: Sequence[Item], size: int) -> list[list[Item]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def shard_size(items: int, largest: int, threads: int) -> int:
    """``largest``, or less, so that every worker thread gets at least four
    shards: the last shards of a run then leave little of the cluster idle."""
    return max(1, min(largest, items // (4 * max(1, threads))))


def run_shard(
    config: Config,
    namespace: str,
    outputs: str,
    items: list[Item],
    concurrency: int = 0,
    probe: str = "",
) -> list[Outcome]:
    """The task a worker runs: every item of a shard, each to its outcome;
    first, the worker's check that it sees its client's store (`check_probe`)."""
    check_probe(config, namespace, probe)
    return _runtime(config, concurrency).each(
        lambda here, item: outcome_of(
            here.images, namespace, outputs, item, here.paths
        ),
        items,
    )


def run_batch_shard(
    config: Config,
    namespace: str,
    outputs: str,
    items: list[dict[str, Any]],
    probe: str = "",
) -> list[dict[str, Any]]:
    """The task of a server batch's shard: each item's `item_result`."""
    check_probe(config, namespace, probe)
    return _runtime(config, 0).each(
        lambda here, item: item_result(
            here.images, here.paths, namespace, outputs, item
        ),
        items,
    )


class StoreNotShared(ImageServerError):
    """A worker cannot use the store its client writes to, or sees another
    one: its shard fails rather than store where nobody will look."""


def probe_key(namespace: str, token: str) -> str:
    return batch_key(namespace, token, "store-probe")


def write_probe(config: Config, namespace: str) -> str:
    """As a cluster's client: a new probe object in the store ``config``
    names, for each worker to find before its first shard; its token."""
    token = str(uuid.uuid4())
    key = probe_key(namespace, token)
    blocking(shared_store(config).put(key, token.encode(), "text/plain"))
    return token


def remove_probe(config: Config, namespace: str, token: str) -> None:
    """The probe, gone once the run is over (a failure here is harmless)."""
    with contextlib.suppress(ImageServerError):
        blocking(shared_store(config).delete(probe_key(namespace, token)))


_checked: set[tuple[Config, str, str]] = set()
_checking = threading.Lock()


def check_probe(config: Config, namespace: str, token: str) -> None:
    """On a worker, once per run: the store ``config`` names can be used
    here (the start-up check of every process) and holds the probe its
    client wrote; `StoreNotShared` saying why and what to do otherwise.

    A relative path is refused before anything runs; an absolute one is
    known to be shared only once the worker reads there what its client
    wrote (the same host, or the same network file system mounted at the
    same place). A bucket reached with other credentials or endpoint may
    be another store, caught the same way.
    """
    if not token:
        return
    with _checking:
        if (config, namespace, token) in _checked:
            return
        from imageserver.runtime.listening import StartupFailed

        host = socket.gethostname()
        key = probe_key(namespace, token)
        try:
            if config.remote is not None:
                check_store(config)  # the bucket's own error says most
            try:
                stored = blocking(shared_store(config).get(key))
            except ImageServerError as e:
                raise StoreNotShared(
                    f"the worker on {host} cannot read the store: {e}"
                ) from None
            if stored is None or stored.data != token.encode():
                if config.remote is None:
                    raise StoreNotShared(
                        f"the worker on {host} does not see its client's store: "
                        f"--local_base_path {config.local_base_path} there lacks "
                        f"{key}, which the client wrote; mount the same storage "
                        "at that path on every worker, or use --aws_bucket"
                    )
                raise StoreNotShared(
                    f"the worker on {host} does not see its client's store: "
                    f"bucket {config.aws_bucket} lacks {key}, which the client "
                    "wrote; give every worker the same --s3_endpoint_url and "
                    "credentials for that bucket"
                )
            if config.remote is None:
                check_store(config)
        except StartupFailed as e:
            raise StoreNotShared(f"the worker on {host}: {e}") from None
        _checked.add((config, namespace, token))


def _runtime(config: Config, concurrency: int) -> _Runtime:
    """This worker's runtime for ``config``, doing ``concurrency`` items at
    once; 0: the worker's threads and one more (an item read, fetched or
    stored while the others are decoded)."""
    if not concurrency:
        from distributed import get_worker

        concurrency = get_worker().state.nthreads + 1
    return _Runtime.of(dataclasses.replace(config, processor_concurrency=concurrency))


#: The options a Dask task carries to its worker: what doing items needs.
#: An allow-list: every other option (credentials and access secrets,
#: ports, webhooks, debugging, and any option added later until it is
#: named here) stays home and is its default on the worker. Workers take
#: credentials from their own environment, the standard AWS way.
TRAVELS = frozenset(
    {
        "local_base_path",
        "outputs",
        "extensions",
        "auto_formats",
        "default_quality",
        "maximum_width",
        "max_source_bytes",
        "max_source_pixels",
        "max_animation_frames",
        "max_pixels_per_byte",
        "rasterise_seconds",
        "rasterise_memory",
        "max_pdf_pages",
        "max_video_seconds",
        "max_video_decoded_frames",
        "video_codecs",
        "video_preview_frames",
        "max_svg_elements",
        "max_svg_depth",
        "max_svg_filters",
        "processor_concurrency",
        "io_concurrency",
        "memory_cache_bytes",
        "uploader",
        "aws_bucket",
        "aws_region",
        "s3_endpoint_url",
        "s3_acl",
        "remote_base_path",
        "remote_base_url",
        "uploader_concurrency",
        "shutdown_timeout",
        "max_redirects",
        "allow_private_sources",
        "allow_networks",
        "source_allowlist",
        "presets",
        "watermarks",
        "presets_only",
        "max_pending",
        "processing_timeout",
        "http_timeout",
        "max_file_age",
        # A worker fetches an origin's new paths itself (its files, bucket or
        # web server must be reachable there): no secret is in an origin.
        "origin",
        "origin_ttl",
        "origin_missing_ttl",
    }
)


def worker_config(config: Config) -> Config:
    """What a task carries of ``config``: the options in `TRAVELS`, and
    nothing else (no option marked secret is ever among them). ``local:N``
    workers are on this host: a relative path is made this process's."""
    values = {name: getattr(config, name) for name in TRAVELS}
    if config.local_workers is not None:
        values["local_base_path"] = os.path.abspath(config.local_base_path)
    return Config(**values)


class ClusterShards(Service):
    """A server's batch shards (`imageserver.bulk.batches.Shards`) on a cluster.

    Connecting, submitting and waiting block, so each runs in ``run`` (a
    thread pool of the service's own); the client connects on first use, and
    again after losing the scheduler. ``local:N`` starts N workers here.
    """

    def __init__(self, config: Config, run: Runner) -> None:
        self._config = worker_config(config)
        #: The server's own, credentials included: it writes the probes.
        self._own = config
        #: Each namespace's probe (`check_probe`), written on first use.
        self._probes: dict[str, str] = {}
        self._address = config.scheduler
        self._local = config.local_workers
        self._largest = config.shard_size
        self._retries = config.shard_retries
        self._run = run
        self._lock = threading.Lock()
        self._client: Any = None
        self._cluster: Any = None

    def shard_size(self, items: int) -> int:
        # At least 8 shards a job, so that a few workers share even a small one.
        return shard_size(items, self._largest, 2)

    def run(
        self, namespace: str, outputs: str, items: list[dict[str, Any]]
    ) -> Deferred[list[dict[str, Any]]]:
        return self._run(self._submit, namespace, outputs, items)

    def _submit(
        self, namespace: str, outputs: str, items: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        client = self._connected()
        future = client.submit(
            run_batch_shard,
            self._config,
            namespace,
            outputs,
            items,
            self._probe(namespace),
            pure=False,
            retries=self._retries,
        )
        try:
            return future.result()  # type: ignore[no-any-return]
        except OSError:
            self._forget(client)  # the scheduler went: connect again next time
            raise
        except StoreNotShared as e:
            # Not a passing trouble: its items fail, saying so, and the job ends.
            return [failed_result(item, str(e)) for item in items]

    def _probe(self, namespace: str) -> str:
        with self._lock:
            token = self._probes.get(namespace)
            if token is None:
                token = self._probes[namespace] = write_probe(self._own, namespace)
            return token

    def _connected(self) -> Any:
        from distributed import Client

        with self._lock:
            if self._client is None or self._client.status != "running":
                address = self._address
                if self._local is not None:
                    if self._cluster is None:
                        self._cluster = local_cluster(self._local)
                    address = self._cluster.scheduler_address
                self._client = Client(address, timeout=10, set_as_default=False)
            return self._client

    def _forget(self, client: Any) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
        client.close()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        # Not in ``run``: its threads may all be waiting on shards, which
        # closing the client ends.
        from twisted.internet.threads import deferToThread

        return deferToThread(self._close)

    def _close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            if self._cluster is not None:
                self._cluster.close()
            self._client = self._cluster = None
            for namespace, token in self._probes.items():
                remove_probe(self._own, namespace, token)
            self._probes.clear()


class _Runtime:
    """One worker process's use cases, pools and storage, on its reactor."""

    _lock = threading.Lock()
    _runtimes: dict[Config, _Runtime] = {}  # noqa: RUF012 (one per process)

    @classmethod
    def of(cls, config: Config) -> _Runtime:
        with cls._lock:
            runtime = cls._runtimes.get(config)
            if runtime is None:
                runtime = cls._runtimes[config] = cls(config)
            return runtime

    def __init__(self, config: Config) -> None:
        from twisted.internet import reactor
        from twisted.internet.threads import blockingCallFromThread

        self._reactor = cast(Any, reactor)
        self._call = blockingCallFromThread
        if not reactor.running:
            threading.Thread(
                target=reactor.run,
                kwargs={"installSignalHandlers": False},
                name="imageserver-reactor",
                daemon=True,
            ).start()
        self.images: Images
        self.paths: OriginPaths | None
        self._call(self._reactor, self._start, config)
        self._slots = DeferredSemaphore(config.processor_concurrency)

    def _start(self, config: Config) -> None:
        services = OrderedMultiService()
        deadline = Deadline(self._reactor, config.shutdown_timeout)
        events = Events()
        self.images, storage, (_, io) = make_images(
            config, self._reactor, services, events, deadline, long_running=False
        )
        self.paths = make_origin_paths(
            config, self._reactor, services, self.images, storage, io, events
        )
        services.startService()

    def each(
        self, job: Callable[[_Runtime, Any], Coroutine[Any, Any, T]], items: list[Any]
    ) -> list[T]:
        """``job(self, item)`` for every item, at most the concurrency at
        once, on the reactor; their results in order."""

        def shard() -> Deferred[list[T]]:
            return gatherResults(
                [
                    self._slots.run(
                        lambda i: Deferred.fromCoroutine(job(self, i)), item
                    )
                    for item in items
                ]
            )

        return self._call(self._reactor, shard)  # type: ignore[no-any-return]


def local_cluster(workers: int) -> Any:
    """``workers`` Dask worker processes here, on loopback.

    Dask starts its workers with ``MALLOC_TRIM_THRESHOLD_`` set, which turns
    off glibc's adaptive mmap threshold: every decoded image's buffer is then
    mapped and faulted in afresh, and the same renders took 40 % longer
    (docs/batch.md). Workers here run without it, as local mode does.
    """
    import dask
    from distributed import LocalCluster

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )


def process(options: Any, stdin: IO[str], stdout: IO[str], stderr: IO[str]) -> int:
    """``imageserver process`` with ``--scheduler``; the exit status as local."""
    from distributed import Client, as_completed

    config: Config = dataclasses.replace(options.config, outputs=())
    outputs = ",".join(options.config.outputs)
    namespace = options["namespace"]
    errors: list[str] = []
    items, repeats = unique(items_from(options.sources, stdin, errors, options.by_path))
    progress = Progress(len(items) + repeats, stdout, stderr, options["progress_json"])
    for error in errors:
        progress.error(error)
    progress.done(repeats)

    cluster = None
    concurrency = int(options["concurrency"])
    local = config.local_workers
    if local is not None:
        if not concurrency:
            # Each worker its share of the cores, and an item more on its way.
            concurrency = max(1, len(os.sched_getaffinity(0)) // local) + 1
        cluster = local_cluster(local)
        address = cluster.scheduler_address
    else:
        address = config.scheduler
    probe = ""
    try:
        try:
            client = Client(address)
        except OSError as e:
            # Nothing ran: every item failed, said once.
            progress.error(f"cannot reach the scheduler at {address}: {e}")
            return 1
        task_config = worker_config(config)
        try:
            probe = write_probe(config, namespace)
        except ImageServerError as e:
            progress.error(f"cannot write to the store: {e}")
            client.close()
            return 1
        with client:
            threads = sum(
                w["nthreads"] for w in client.scheduler_info()["workers"].values()
            )
            parts = shards(items, shard_size(len(items), config.shard_size, threads))
            futures = client.map(
                run_shard,
                [task_config] * len(parts),
                [namespace] * len(parts),
                [outputs] * len(parts),
                parts,
                [concurrency] * len(parts),
                [probe] * len(parts),
                retries=config.shard_retries,
                pure=False,
            )
            index = {f.key: part for f, part in zip(futures, parts, strict=True)}
            for future in as_completed(futures):
                try:
                    outcomes = future.result()
                except Exception as e:
                    for item in index[future.key]:
                        where = item.path or item.origin_path or f"line {item.line}"
                        progress.report(
                            Outcome(
                                False,
                                f"{where}: shard failed ({type(e).__name__}: {e})",
                            )
                        )
                    continue
                for outcome in outcomes:
                    progress.report(outcome)
    finally:
        progress.close()
        if probe:
            remove_probe(config, namespace, probe)
        if cluster is not None:
            cluster.close()
    return 1 if progress.failed else 0
