"""Assembly: the use cases with what they run on (pools, storage, the source
fetcher, lifecycle listeners), built from a Config for the server, the
command line and each cluster worker alike.

What is built here that must start or stop (pools, queues, sweepers) becomes
a service of the parent given; the lifetimes of the whole server (ports,
probes, workers) are `imageserver.service`'s.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from twisted.application.internet import backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from imageserver.access.rates import RateLimiter, TokenBuckets
from imageserver.config import Config
from imageserver.errors import ImageServerError, StorageFailed, StorageUnavailable
from imageserver.images import Coordination, Images
from imageserver.imaging import documents, renderer
from imageserver.lifecycle.listeners import Lifecycle, Listeners
from imageserver.lifecycle.purges import PurgeLog
from imageserver.lifecycle.webhooks import Webhooks
from imageserver.metrics.events import Events
from imageserver.naming import ORIGINAL, ImageId, is_immutable
from imageserver.origin_paths import OriginPaths
from imageserver.runtime.listening import StartupFailed
from imageserver.runtime.pools import ThreadPoolService
from imageserver.runtime.shutdown import Deadline
from imageserver.sources.addresses import source_host
from imageserver.sources.fetcher import SourceFetcher, source_agent
from imageserver.sources.origins import (
    FileOrigin,
    HttpOrigin,
    Origin,
    OriginRefused,
    OriginSpec,
    OriginUnconfirmed,
    S3Origin,
    bucket_and_prefix,
    check_bucket_origin,
)
from imageserver.storage import Storage, hostlocks
from imageserver.storage.behind import WriteBehind
from imageserver.storage.hostlocks import HostLocks
from imageserver.storage.local import LocalStorage, check_writable
from imageserver.storage.memory import Generations, MemoryCache
from imageserver.storage.metered import MeteredStorage
from imageserver.storage.queue import WriteQueue
from imageserver.storage.quotas import Quotas
from imageserver.storage.s3 import (
    LazyClient,
    S3Settings,
    S3Storage,
    check_bucket,
)
from imageserver.storage.sweeper import STALE_TEMPORARY, CacheSweeper
from imageserver.storage.tiered import TieredStorage
from imageserver.thumbor.plan import Settings as ThumborSettings
from imageserver.thumbor_paths import ThumborPaths

log = Logger()
T = TypeVar("T")

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
        deadline=deadline.remaining,
        closing=documents.close,
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
    if not shared_host:
        # Added after the uploader, so stopped before it: what lands here at
        # shutdown is still handed over to the bucket. Not with a host's
        # workers: there a variant is written, without fsync, under its
        # folder's and its key's host locks, so that the other workers find
        # it and a purge comes after it (Images._render).
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
            storage, config.memory_cache_bytes, is_immutable, generations=generations
        )
    quotas = None
    if config.namespace_quota_bytes:
        quotas = Quotas(
            config.namespace_quota_bytes,
            storage,
            io.run,
            reactor,
            config.quota_interval,
            events,
            shared=(
                os.path.join(config.local_base_path, hostlocks.FOLDER, "usage")
                if shared_host
                else None
            ),
        )
        storage = quotas.counting(storage)

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
        policy=config.render_policy,
        coordination=Coordination(
            host_locks=(
                HostLocks(config.local_base_path, io.run, reactor)
                if shared_host
                else None
            ),
            lifecycle=Listeners(listeners),
            # A render elsewhere, under way during a purge, may store after
            # it: looked for once such renders are over and the purge is
            # known.
            resweep_after=(
                config.processing_timeout + 2 * config.purge_check_interval + 5
                if config.remote is not None and purge_log is not None
                else None
            ),
            quotas=quotas,
            rates=(
                RateLimiter(
                    config.rates,
                    TokenBuckets(
                        reactor.seconds,
                        os.path.join(config.local_base_path, hostlocks.FOLDER, "rates")
                        if shared_host
                        else None,
                    ),
                    events,
                )
                if config.rates
                else None
            ),
        ),
        events=events,
        clock=reactor,
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


def origin_bucket_settings(config: Config, spec: OriginSpec) -> S3Settings:
    """How a bucket origin is reached: with its own profile, region and
    endpoint where its URL names them, else the storage's."""
    own = spec.profile is not None
    return replace(
        s3_settings(config),
        bucket=bucket_and_prefix(spec.url)[0],
        base_path="",
        acl=None,
        timeout=config.http_timeout,
        # One attempt: a failing origin is asked again after a pause, and a
        # fetch must end within --http_timeout.
        max_attempts=1,
        profile=spec.profile,
        region=spec.region or (None if own else config.aws_region or None),
        endpoint_url=spec.endpoint or (None if own else config.s3_endpoint_url or None),
        access_key_id=None if own else config.aws_access_key_id or None,
        secret_access_key=None if own else config.aws_secret_key or None,
    )


def check_origins(config: Config) -> None:
    """Refuse, before anything starts, a bucket origin that cannot be used
    (no such bucket, credentials refused, no such profile): `StartupFailed`
    naming the option; one that cannot be confirmed now is a warning."""
    for namespace, spec in config.origin_specs.items():
        if spec.scheme in ("http", "https"):
            _check_web_origin(config, namespace, spec)
        if spec.scheme != "s3":
            continue
        settings = replace(
            origin_bucket_settings(config, spec),
            max_attempts=1,
            timeout=min(config.http_timeout, 5.0),
        )
        try:
            check_bucket_origin(LazyClient(settings), spec.url)
        except OriginRefused as e:
            raise StartupFailed(f"--origin {namespace}={spec.described}: {e}") from None
        except OriginUnconfirmed as e:
            log.warn(
                "--origin {namespace}={url}: {problem}; starting anyway",
                namespace=namespace,
                url=spec.described,
                problem=str(e),
            )


def _check_web_origin(config: Config, namespace: str, spec: OriginSpec) -> None:
    """A web origin whose host is an address the server may not reach (a
    loopback or private one, without --allow_networks) is refused at start,
    not on every request; a name that does not resolve now is a warning."""
    parts = urlsplit(spec.url)
    try:
        host = source_host(parts.hostname or "")
    except ValueError as e:
        raise StartupFailed(f"--origin {namespace}={spec.described}: {e}") from None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        log.warn(
            "--origin {namespace}={url}: {host} does not resolve now ({why}); "
            "starting anyway",
            namespace=namespace, url=spec.described, host=host, why=e,
        )  # fmt: skip
        return
    for *_, address in answers:
        refused = config.source_policy.address_refusal(host, str(address[0]))
        if refused is not None:
            raise StartupFailed(f"--origin {namespace}={spec.described}: {refused}")


def shared_store(config: Config) -> Storage:
    """The store every process on it shares (the bucket, not the local
    cache; or the local path), its calls run at once in the caller's
    thread: for checks before anything starts, and a cluster's probes."""
    if config.remote is None:
        return LocalStorage(config.local_base_path, _at_once)
    settings = s3_settings(config)
    return S3Storage(settings, LazyClient(settings), _at_once)


def _at_once(f: Callable[..., T], /, *args: Any) -> Deferred[T]:
    return maybeDeferred(f, *args)


def blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a `shared_store` call (its runner ran it at once)."""
    outcome: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(outcome.append)
    (result,) = outcome
    if isinstance(result, Failure):
        result.raiseException()
    return cast(T, result)


def check_watermarks(config: Config) -> None:
    """Refuse, before anything starts, a watermark whose original is not
    stored or cannot be used as one: `StartupFailed` naming it."""
    images = config.watermark_images
    if not images:
        return
    store = shared_store(config)
    for name, image in images.items():
        where = f"--watermarks {name}={image.folder}"
        try:
            stored = blocking(store.get(image.key(ORIGINAL)))
        except ImageServerError as e:
            raise StartupFailed(f"{where}: cannot be read: {e}") from None
        if stored is None:
            raise StartupFailed(
                f"{where}: no original is stored there; upload the watermark "
                "first (POST /NAMESPACE) and name its folder: the namespace, "
                "then the hash it answered split 3/3/3/23"
            )
        try:
            info = renderer.probe(stored.data, config.decode_limits)
        except ImageServerError as e:
            raise StartupFailed(f"{where}: {e}") from None
        if info.width * info.height > renderer.MAX_WATERMARK_PIXELS:
            raise StartupFailed(
                f"{where}: {info.width}x{info.height} is over the "
                f"{renderer.MAX_WATERMARK_PIXELS} pixels a watermark may have"
            )


def check_store(config: Config, local: bool = True) -> None:
    """Refuse, before anything starts, a store that cannot be used: a local
    path that cannot be written, a bucket that does not exist or refuses
    (access denied, no credentials): `StartupFailed`, one line. A bucket
    that cannot be reached now is a warning: it may come back, and readiness
    says so meanwhile. The server, the command line and each cluster worker
    check alike; ``local=False``: a process that writes only to the bucket
    (a cluster's client). Bucket origins are checked too (`check_origins`)."""
    check_origins(config)
    check_watermarks(config)
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


def make_origin_paths(
    config: Config,
    reactor: Any,
    parent: MultiService,
    images: Images,
    storage: Storage,
    io: ThreadPoolService,
    events: Events,
    shared_host: bool = False,
    log_failures: bool = True,
) -> OriginPaths | None:
    """The origins' paths (--origin), or None without origins.

    An HTTP origin's fetcher connects to that origin's host alone, every
    redirect included, under the server's address policy (an origin on a
    private network needs --allow_networks like a source URL). A bucket is
    read with the storage's credentials and endpoint.
    """
    specs = config.origin_specs
    if not specs:
        return None
    connections = ConnectionPoolService(HTTPConnectionPool(reactor, persistent=True))
    connections.setServiceParent(parent)
    origins: dict[str, Origin] = {}
    buckets = None
    for namespace, spec in specs.items():
        if spec.scheme == "file":
            origins[namespace] = FileOrigin(spec.url, io.run, config.max_source_bytes)
            continue
        if spec.scheme == "s3":
            if buckets is None:
                # Their own threads: a slow bucket never holds up storage.
                buckets = ThreadPoolService(
                    reactor, config.io_concurrency, "imageserver-origins"
                )
                buckets.setServiceParent(parent)
                events.watch_pool(buckets.stats())
            settings = origin_bucket_settings(config, spec)
            origins[namespace] = S3Origin(
                spec.url,
                LazyClient(settings),
                buckets.run,
                config.max_source_bytes,
                config.http_timeout,
                reactor,
            )
            continue
        parts = urlsplit(spec.url)
        # Pinned as connections name it: an international name in IDNA.
        host = source_host(parts.hostname or "").encode("idna").decode("ascii")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        policy = replace(
            config.source_policy, allowlist=(), origin=(parts.scheme, host, port)
        )
        agent = source_agent(reactor, connections.pool, policy, config.max_redirects)
        fetcher = SourceFetcher(
            agent,
            reactor,
            timeout=config.http_timeout,
            max_bytes=config.max_source_bytes,
        )
        origins[namespace] = HttpOrigin(spec.url, fetcher)
    return OriginPaths(
        images=images,
        storage=storage,
        origins=origins,
        clock=reactor,
        ttl=config.origin_ttl,
        negative_ttl=config.origin_missing_ttl,
        events=events,
        host_locks=(
            HostLocks(config.local_base_path, io.run, reactor) if shared_host else None
        ),
        # What fetching holds in memory at once: what bodies being received
        # may (each object up to --max_source_bytes).
        max_fetches=config.max_receiving_bytes // config.max_source_bytes,
        log_failures=log_failures,
        stale_while_revalidate=config.origin_stale_while_revalidate,
    )


def make_thumbor_paths(
    config: Config,
    images: Images,
    origin_paths: OriginPaths | None,
) -> ThumborPaths | None:
    """thumbor's URLs on the origins (--thumbor), or None."""
    if not config.thumbor or origin_paths is None:
        return None
    return ThumborPaths(
        images,
        origin_paths,
        config.rules,
        origins={name: spec.url for name, spec in config.origin_specs.items()},
        keys=config.thumbor_security_keys,
        allow_unsafe=config.thumbor_allow_unsafe,
        loader=config.thumbor_loader,
        settings=ThumborSettings(
            quality=config.thumbor_quality,
            auto_webp=config.thumbor_auto_webp,
            auto_avif=config.thumbor_auto_avif,
        ),
    )
