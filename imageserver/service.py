"""The service tree: pools, storage, ports and probes, started and stopped by twistd.

Building the tree opens nothing; files, sockets and threads appear in
``startService``.
"""

from __future__ import annotations

from typing import Any

from treq.client import HTTPClient
from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.web.client import Agent, HTTPConnectionPool

from imageserver.config import Config
from imageserver.images import Images
from imageserver.naming import is_generated
from imageserver.pools import ThreadPoolService
from imageserver.sources import SourceFetcher
from imageserver.storage import Storage
from imageserver.storage.local import LocalStorage
from imageserver.storage.memory import MemoryCache
from imageserver.storage.s3 import LazyClient, S3Settings, S3Storage
from imageserver.storage.sweeper import CacheSweeper
from imageserver.storage.tiered import TieredStorage
from imageserver.storage.uploads import Uploader
from imageserver.web.admin import AdminApp, Readiness
from imageserver.web.app import ImageServerApp
from imageserver.web.site import BoundedSite


class OrderedMultiService(MultiService):
    """Stops its children one at a time, the last added first.

    So readiness turns 503 before the ports close, and pending uploads are
    drained while the pools they run in are still there.
    """

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for service in reversed(list(self)):
            await maybeDeferred(service.stopService)


class ConnectionPoolService(Service):
    """Owns the source fetcher's persistent connections; closes them at stop."""

    def __init__(self, pool: HTTPConnectionPool) -> None:
        self.pool = pool

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.pool.closeCachedConnections()


def make_service(config: Config, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    top = OrderedMultiService()
    top.setName("imageserver")

    processing = ThreadPoolService(
        reactor, config.processor_concurrency, "imageserver-processing"
    )
    processing.setServiceParent(top)
    io = ThreadPoolService(reactor, config.io_concurrency, "imageserver-io")
    io.setServiceParent(top)
    storage = make_storage(config, reactor, io, top)
    if config.memory_cache_bytes:
        storage = MemoryCache(storage, config.memory_cache_bytes, is_generated)

    connections = ConnectionPoolService(HTTPConnectionPool(reactor, persistent=True))
    connections.setServiceParent(top)
    images = Images(
        storage=storage,
        sources=SourceFetcher(
            HTTPClient(Agent(reactor, pool=connections.pool)),
            reactor,
            timeout=config.http_timeout,
            max_bytes=config.max_source_bytes,
        ),
        process=processing.run,
        rules=config.rules,
        max_source_pixels=config.max_source_pixels,
        default_outputs=config.default_outputs,
    )
    site = BoundedSite(
        ImageServerApp(images).app.resource(), max_body_bytes=config.max_source_bytes
    )
    strports.service(config.endpoint, site, reactor=reactor).setServiceParent(top)

    readiness = Readiness()
    if config.admin_endpoint is not None:
        admin = BoundedSite(AdminApp(readiness).app.resource(), max_body_bytes=1024)
        port = strports.service(config.admin_endpoint, admin, reactor=reactor)
        port.setServiceParent(top)
    # Last in, first out: readiness turns 503 before anything else stops.
    readiness.setServiceParent(top)
    return top


def make_storage(
    config: Config, reactor: Any, io: ThreadPoolService, parent: MultiService
) -> Storage:
    """The local disk alone, or a remote store with the local disk as its cache."""
    local = LocalStorage(config.local_base_path, io.run)
    if config.remote is None:
        return local
    settings = S3Settings(
        bucket=config.aws_bucket,
        region=config.aws_region or None,
        endpoint_url=config.s3_endpoint_url or None,
        access_key_id=config.aws_access_key_id or None,
        secret_access_key=config.aws_secret_key or None,
        base_path=config.remote_base_path,
        acl=config.s3_acl or None,
        max_connections=config.uploader_concurrency,
    )
    s3_pool = ThreadPoolService(reactor, config.uploader_concurrency, "imageserver-s3")
    s3_pool.setServiceParent(parent)
    remote = S3Storage(settings, LazyClient(settings), s3_pool.run)
    uploader = Uploader(remote, reactor, config.shutdown_timeout)
    uploader.setServiceParent(parent)
    sweeper = CacheSweeper(
        config.local_base_path, config.max_file_age * 60, reactor, io.run
    )
    sweeper.setServiceParent(parent)
    return TieredStorage(local, remote, uploader)
