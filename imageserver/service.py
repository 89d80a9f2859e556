"""The service tree: pools, storage, ports and probes, started and stopped by twistd.

Building the tree opens nothing; files, sockets and threads appear in
``startService``.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from twisted.application.internet import backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger, textFileLogObserver
from twisted.python.components import Componentized
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import IResource

from imageserver import __version__, endpoints, hostlocks
from imageserver.batches import Batches
from imageserver.config import Config
from imageserver.errors import StorageFailed, StorageUnavailable
from imageserver.events import Events, host_metrics
from imageserver.hostlocks import HostLocks
from imageserver.images import Images
from imageserver.lifecycle import Lifecycle, Listeners
from imageserver.listening import Listening, StartupFailed
from imageserver.logs import JSONLines, tagged
from imageserver.naming import ImageId, is_generated
from imageserver.pools import ThreadPoolService
from imageserver.purges import PurgeLog
from imageserver.reloading import Hangup, Reloading
from imageserver.shutdown import Deadline, OrderedMultiService, RequestDrain, Signals
from imageserver.sources import SourceFetcher, source_agent
from imageserver.statsd import StatsdClient
from imageserver.storage import Storage
from imageserver.storage.behind import WriteBehind
from imageserver.storage.local import LocalStorage, WritableCheck, check_writable
from imageserver.storage.memory import Generations, MemoryCache
from imageserver.storage.metered import MeteredStorage
from imageserver.storage.queue import WriteQueue
from imageserver.storage.s3 import LazyClient, S3Settings, S3Storage, check_bucket
from imageserver.storage.sweeper import STALE_TEMPORARY, CacheSweeper
from imageserver.storage.tiered import TieredStorage
from imageserver.tokens import WriteTokens
from imageserver.web.access import AccessPolicy
from imageserver.web.admin import AdminApp, Readiness
from imageserver.web.app import (
    UNSIGNED_ROUTES,
    ImageServerApp,
    answer_headers,
    route_name,
)
from imageserver.web.debug import DebugApp, HeapTracing
from imageserver.web.site import BodyBudget, BoundedSite, methods_of
from imageserver.webhooks import Webhooks
from imageserver.workers import LISTENING_FD, AdoptedPort, Ready, Report, Workers

log = Logger()

#: How much nicer than the reactor the processing threads run: a render takes
#: the CPU time that serving stored variants and accepting requests leave, so
#: cache hits do not wait behind renders for a core (docs/performance.md).
RENDER_NICENESS = 10
#: Seconds between attempts to upload a variant to the bucket: 1 s, doubling
#: to a minute, each plus up to a second at random so that many retries do
#: not arrive together.
UPLOAD_RETRY = backoffPolicy(initialDelay=1.0, maxDelay=60.0, factor=2.0)


class ConnectionPoolService(Service):
    """Owns the source fetcher's persistent connections; closes them at stop."""

    def __init__(self, pool: HTTPConnectionPool) -> None:
        self.pool = pool

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.pool.closeCachedConnections()


class ImageServer(OrderedMultiService):
    """The whole server; with ``--log_format json`` it brings its log observer.

    twistd starts logging after the service is built, with the observer the
    application provides, if any.
    """

    def __init__(
        self, config: Config, deadline: Deadline, worker: int | None = None
    ) -> None:
        super().__init__(deadline)
        self.setName("imageserver")
        self.config = config
        self.worker = worker
        #: Loaded before the ports open: a file that cannot be used stops
        #: the start.
        self.write_tokens: WriteTokens | None = None

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if not isinstance(parent, Componentized):
            return
        observer: ILogObserver | None = None
        if self.config.log_format == "json":
            observer = JSONLines(sys.stdout)
        elif self.worker is not None:
            observer = textFileLogObserver(sys.stdout)
        if observer is not None and self.worker is not None:
            observer = tagged(observer, self.worker)
        if observer is not None:
            parent.setComponent(ILogObserver, observer)

    def privilegedStartService(self) -> None:
        """Check what can be checked, then open the ports.

        twistd opens ports here, before it drops privileges; a failure is one
        line in the log and exit status 1, not a traceback.
        """
        config = self.config
        limit = raise_open_files_limit()
        # Connections, storage files, pools' sockets and the log all need one.
        if limit < config.max_connections + 64:
            log.warn(
                "--max_connections {connections} leaves too few of the {limit} "
                "open files this process may have",
                connections=config.max_connections,
                limit=limit,
            )
        try:
            check_store(config)
            if self.write_tokens is not None:
                try:
                    self.write_tokens.load()
                except (OSError, ValueError) as e:
                    raise StartupFailed(
                        f"--write_tokens {self.write_tokens.path}: {e}"
                    ) from None
            super().privilegedStartService()
        except StartupFailed as e:
            log.critical("{message}", message=str(e))
            raise SystemExit(1) from None

    def startService(self) -> None:
        super().startService()
        config = self.config
        if self.worker is None and writes_are_open(config):
            log.warn(
                "anyone who can reach {endpoint} may upload and delete: "
                "give --write_tokens (docs/security.md)",
                endpoint=config.endpoint,
            )
        storage = os.path.abspath(config.local_base_path)
        if config.remote is not None:
            endpoint = config.s3_endpoint_url or "AWS"
            storage = f"bucket {config.aws_bucket} at {endpoint}, cached in {storage}"
        if config.workers > 1:
            log.info(
                "imageserver {version} started: storage {storage}; {workers} "
                "worker processes",
                version=__version__,
                storage=storage,
                workers=config.workers,
            )
            return
        log.info(
            "imageserver {version} started: storage {storage}; {processing} "
            "processing threads, {io} I/O threads",
            version=__version__,
            storage=storage,
            processing=config.processor_concurrency,
            io=config.io_concurrency,
        )


def writes_are_open(config: Config) -> bool:
    """Whether anyone beyond this host may write: no tokens, no signatures,
    and the main port listens beyond loopback."""
    return not (
        config.write_tokens or config.secret or endpoints.is_loopback(config.endpoint)
    )


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one; the limit now.

    The usual soft limit (1024) is a thousand idle connections away from
    refusing every client; the hard one is what the operator allows.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warn("could not raise the open files limit: {error}", error=e)
            return soft
        log.info("open files limit raised from {soft} to {hard}", soft=soft, hard=hard)
        return hard if hard != resource.RLIM_INFINITY else soft
    return soft


def make_service(
    config: Config, reactor: Any = None, worker: int | None = None
) -> MultiService:
    """The server's service tree: a whole server; with ``--workers`` above 1,
    the supervisor of that many; as ``worker`` N, one of them."""
    if reactor is None:
        from twisted.internet import reactor
    deadline = Deadline(reactor, config.shutdown_timeout)
    top = ImageServer(config, deadline, worker)
    signals = Signals(reactor)
    signals.setServiceParent(top)
    if config.workers > 1:
        return _supervisor(config, reactor, top, deadline, signals)

    statsd = None
    if config.enable_statsd:
        statsd = StatsdClient(reactor, config.statsd_host, config.statsd_port)
        statsd.setServiceParent(top)
    events = Events(statsd=statsd, statsd_prefix=config.statsd_prefix)
    images, storage, pools = make_images(
        config, reactor, top, events, deadline, shared_host=worker is not None
    )

    _, io_pool = pools
    writable = WritableCheck(config.local_base_path, reactor, io_pool.run)
    writable.setServiceParent(top)
    readiness = Readiness([writable])
    debug = None
    if config.profile:
        HeapTracing().setServiceParent(top)
        debug = DebugApp(reactor).app.resource
    admin_port = None
    if config.admin_endpoint is not None:
        admin = BoundedSite(
            AdminApp(readiness, events.registry, debug).app.resource(),
            max_body_bytes=1024,
        )
        admin_port = Listening(reactor, config.admin_endpoint, admin, "admin")
        admin_port.setServiceParent(top)

    shards = None
    if config.scheduler:
        from imageserver.cluster import ClusterShards  # dask: only when asked

        waiting = ThreadPoolService(reactor, 32, "imageserver-cluster")
        waiting.setServiceParent(top)
        shards = ClusterShards(config, waiting.run)
        shards.setServiceParent(top)
    batches = Batches(
        images,
        storage,
        config.batch_concurrency,
        shards=shards,
        clock=reactor,
        run=io_pool.run,
    )
    api: IResource = ImageServerApp(images, batches).app.resource()
    tokens = None
    if config.write_tokens:
        tokens = top.write_tokens = WriteTokens(config.write_tokens)
        Reloading(reactor, tokens.refresh, io_pool.run).setServiceParent(top)
    else:  # SIGHUP (passed on by a supervisor) must not end the process
        Hangup(
            reactor, lambda: log.info("SIGHUP: no file to read again")
        ).setServiceParent(top)
    admit = None
    if config.secrets or tokens is not None:
        admit = AccessPolicy(
            reactor, secrets=config.secrets, tokens=tokens, unsigned=UNSIGNED_ROUTES
        )
    site = BoundedSite(
        api,
        max_body_bytes=config.max_source_bytes,
        events=events,
        route_of=route_name,
        idle_timeout=config.idle_timeout,
        clock=reactor,
        head_timeout=config.request_head_timeout,
        max_connections=config.max_connections,
        body_budget=BodyBudget(config.max_receiving_bytes),
        methods=methods_of(ImageServerApp.app),
        admit=admit,
        answer_headers=answer_headers,
    )
    if config.manhole_endpoint is not None:
        from imageserver.manhole import ManholeService  # conch: only when asked

        ManholeService(
            reactor,
            config.manhole_endpoint,
            {
                "config": config,
                "images": images,
                "storage": storage,
                "events": events,
                "pools": {p.name: p.pool for p in pools},
                "service": top,
                "reactor": reactor,
            },
            config.manhole_host_keys,
            authorized_keys=config.manhole_keys or None,
            passwords=config.manhole_passwords or None,
        ).setServiceParent(top)
    RequestDrain(site, reactor, deadline).setServiceParent(top)
    if worker is None:
        Listening(reactor, config.endpoint, site, "main").setServiceParent(top)
    else:
        AdoptedPort(reactor, LISTENING_FD, site).setServiceParent(top)
        Ready(
            reactor,
            admin_port,
            lambda: Report(readiness.problem(), tuple(events.pool_readings())),
        ).setServiceParent(top)
    # Last in, first out: readiness turns 503 before anything else stops.
    readiness.setServiceParent(top)
    return top


def _supervisor(
    config: Config,
    reactor: Any,
    top: ImageServer,
    deadline: Deadline,
    signals: Signals,
) -> MultiService:
    """Binds the ports and runs the workers; the admin port answers for all."""
    main = Listening(reactor, config.endpoint, Factory(), "main")
    workers = Workers(reactor, config, main, deadline)
    signals.before_exit.append(workers.kill)
    Hangup(reactor, lambda: workers.signal_all("HUP")).setServiceParent(top)
    if config.write_tokens:  # checked here too: a bad file stops the start
        top.write_tokens = WriteTokens(config.write_tokens)
    readiness = Readiness([workers])
    if config.admin_endpoint is not None:  # stopped after the workers drain
        registry = CollectorRegistry()
        registry.register(workers.metrics)
        host_metrics(registry, workers.pool_readings)
        ProcessCollector(registry=registry)
        admin = BoundedSite(
            AdminApp(
                readiness, registry, workers.debug if config.profile else None
            ).app.resource(),
            max_body_bytes=1024,
        )
        Listening(reactor, config.admin_endpoint, admin, "admin").setServiceParent(top)
    workers.setServiceParent(top)
    # Stopped before the workers drain: the socket closes with their copies.
    main.setServiceParent(top)
    readiness.setServiceParent(top)
    return top


def make_images(
    config: Config,
    reactor: Any,
    parent: MultiService,
    events: Events,
    deadline: Deadline,
    long_running: bool = True,
    shared_host: bool = False,
) -> tuple[Images, Storage, list[ThreadPoolService]]:
    """The use cases with their pools, storage and source fetcher, as services.

    The server and the command line both run on this. A run that ends when its
    work does (the command line) wants no connections kept open for later,
    and keeps no copies long enough to watch for purges.
    """
    processing = ThreadPoolService(
        reactor,
        config.processor_concurrency,
        "imageserver-processing",
        max_pending=config.max_pending,
        niceness=RENDER_NICENESS,
    )
    processing.setServiceParent(parent)
    io = ThreadPoolService(reactor, config.io_concurrency, "imageserver-io")
    io.setServiceParent(parent)
    for pool in (processing, io):
        events.watch_pool(pool.stats())
    storage = make_storage(config, reactor, io, parent, events, deadline)
    # What every process sharing this store sees, and this one's own copies.
    shared, local_cache = storage, None
    if isinstance(storage, TieredStorage):
        shared, local_cache = storage.remote, storage.local
    # Added after the uploader, so stopped before it: what lands here at
    # shutdown is still handed over to the bucket.
    behind = WriteQueue(
        storage, reactor, deadline.remaining, name="behind", events=events
    )
    behind.setServiceParent(parent)
    storage = WriteBehind(storage, behind)
    memory = None
    if config.memory_cache_bytes:
        # A host's workers share the folders' generations: a purge by one is
        # the others' next cache miss (see storage.memory).
        generations = Generations(
            os.path.join(config.local_base_path, hostlocks.FOLDER, "generations")
            if shared_host
            else None
        )
        generations.setServiceParent(parent)
        storage = memory = MemoryCache(
            storage, config.memory_cache_bytes, is_generated, generations=generations
        )

    connections = ConnectionPoolService(
        HTTPConnectionPool(reactor, persistent=long_running)
    )
    connections.setServiceParent(parent)
    listeners: list[Lifecycle] = []
    # Other processes share the store: workers of this host, or instances on
    # the bucket. Each tells the others of its purges (see purges).
    purge_log = None
    if long_running and (config.remote is not None or shared_host):
        purge_log = _purge_log(
            config, reactor, parent, events, deadline, shared,
            memory, local_cache, lambda image, drop: images.forget(image, drop),
        )  # fmt: skip
        if purge_log is not None:
            listeners.append(purge_log)
    if config.webhook:
        webhooks = Webhooks(
            reactor,
            config.webhook,
            config.webhook_secret.encode(),
            max_queued=config.webhook_queue,
            retry_seconds=config.webhook_retry_seconds,
            shutdown_timeout=deadline.remaining,
            events=events,
        )
        webhooks.setServiceParent(parent)
        listeners.append(webhooks)
    images = Images(
        storage=storage,
        sources=SourceFetcher(
            source_agent(
                reactor,
                connections.pool,
                config.source_policy,
                config.max_redirects,
            ),
            reactor,
            timeout=config.http_timeout,
            max_bytes=config.max_source_bytes,
        ),
        process=processing.run,
        rules=config.rules,
        limits=config.decode_limits,
        presets=config.catalogue,
        serve_originals=config.serve_originals,
        events=events,
        clock=reactor,
        processing_timeout=config.processing_timeout,
        host_locks=(
            HostLocks(config.local_base_path, io.run, reactor) if shared_host else None
        ),
        lifecycle=Listeners(listeners),
        # A render elsewhere, under way during a purge, may store after it:
        # looked for once such renders are over and the purge is known.
        resweep_after=(
            config.processing_timeout + 2 * config.purge_check_interval + 5
            if config.remote is not None and purge_log is not None
            else None
        ),
    )
    if purge_log is not None:  # started once Images exists
        purge_log.setServiceParent(parent)
    return images, storage, [processing, io]


def _purge_log(
    config: Config,
    reactor: Any,
    parent: MultiService,
    events: Events,
    deadline: Deadline,
    shared: Storage,
    memory: MemoryCache | None,
    local_cache: Storage | None,
    forget: Callable[[ImageId, Callable[[str], Awaitable[None]]], Awaitable[None]],
) -> PurgeLog | None:
    """The purge markers of this process, when it is to watch for others'."""
    if not config.purge_check_interval:
        return None
    markers = retrying_queue(shared, "purges", reactor, parent, events, deadline)

    async def drop(folder: str) -> None:
        """This process's copies of a folder: the disk cache, then memory (a
        read of the disk on its way meanwhile is then not kept)."""
        if local_cache is not None:
            await local_cache.delete_prefix(folder)
        if memory is not None:
            memory.drop_prefix(folder)

    return PurgeLog(
        reactor,
        shared,
        markers,
        lambda image: forget(image, drop),
        config.purge_check_interval,
        lookback=config.max_file_age if config.remote is not None else 0,
    )


def retrying_queue(
    target: Storage,
    name: str,
    reactor: Any,
    parent: MultiService,
    events: Events,
    deadline: Deadline,
) -> WriteQueue:
    """A write queue to ``target`` that retries until its writes land, as a
    service of ``parent`` (drained at shutdown)."""
    queue = WriteQueue(
        target,
        reactor,
        deadline.remaining,
        name=name,
        retry=UPLOAD_RETRY,
        events=events,
    )
    queue.setServiceParent(parent)
    return queue


def s3_settings(config: Config) -> S3Settings:
    """The bucket ``config`` names, and how to reach it."""
    return S3Settings(
        bucket=config.aws_bucket,
        region=config.aws_region or None,
        endpoint_url=config.s3_endpoint_url or None,
        access_key_id=config.aws_access_key_id or None,
        secret_access_key=config.aws_secret_key or None,
        base_path=config.remote_base_path,
        acl=config.s3_acl or None,
        max_connections=config.uploader_concurrency,
    )


def check_store(config: Config, local: bool = True) -> None:
    """Refuse, before anything starts, a store that cannot be used: a local
    path that cannot be written, a bucket that does not exist or refuses
    (access denied, no credentials): `StartupFailed`, one line. A bucket
    that cannot be reached now is a warning: it may come back, and readiness
    says so meanwhile. The server, the command line and each cluster worker
    check alike; ``local=False``: a process that writes only to the bucket
    (a cluster's client)."""
    try:
        if local or config.remote is None:
            check_writable(config.local_base_path)
    except OSError as e:
        raise StartupFailed(
            f"--local_base_path {os.path.abspath(config.local_base_path)} "
            f"cannot be written: {e.strerror}"
        ) from None
    if config.remote is None:
        return
    try:
        check_bucket(s3_settings(config))
    except StorageFailed as e:
        raise StartupFailed(str(e)) from None
    except StorageUnavailable as e:
        log.warn("{problem}; starting anyway", problem=str(e))


def make_storage(
    config: Config,
    reactor: Any,
    io: ThreadPoolService,
    parent: MultiService,
    events: Events,
    deadline: Deadline,
) -> Storage:
    """The local disk alone, or a remote store with the local disk as its cache."""
    local = MeteredStorage(
        LocalStorage(config.local_base_path, io.run), "local", events
    )
    if config.remote is None:
        # The local disk is the truth: only crash leftovers are swept, hourly.
        CacheSweeper(
            config.local_base_path, None, reactor, io.run, interval=STALE_TEMPORARY
        ).setServiceParent(parent)
        return local
    settings = s3_settings(config)
    s3_pool = ThreadPoolService(reactor, config.uploader_concurrency, "imageserver-s3")
    s3_pool.setServiceParent(parent)
    events.watch_pool(s3_pool.stats())
    remote = MeteredStorage(
        S3Storage(settings, LazyClient(settings), s3_pool.run), "s3", events
    )
    uploads = retrying_queue(remote, "bucket", reactor, parent, events, deadline)
    sweeper = CacheSweeper(
        config.local_base_path, config.max_file_age * 60, reactor, io.run
    )
    sweeper.setServiceParent(parent)
    return TieredStorage(local, remote, uploads)
