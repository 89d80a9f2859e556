"""The service tree: pools, ports and probes, started and stopped by twistd.

Building the tree opens nothing; files, sockets and threads appear in
``startService``.
"""

from __future__ import annotations

from typing import Any

from treq.client import HTTPClient
from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool

from imageserver.config import Config
from imageserver.images import Images
from imageserver.naming import is_generated
from imageserver.pools import ThreadPoolService
from imageserver.sources import SourceFetcher
from imageserver.storage import Storage
from imageserver.storage.local import LocalStorage
from imageserver.storage.memory import MemoryCache
from imageserver.web.admin import AdminApp, Readiness
from imageserver.web.app import ImageServerApp
from imageserver.web.site import BoundedSite


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
    top = MultiService()
    top.setName("imageserver")

    processing = ThreadPoolService(
        reactor, config.processor_concurrency, "imageserver-processing"
    )
    processing.setServiceParent(top)
    io = ThreadPoolService(reactor, config.io_concurrency, "imageserver-io")
    io.setServiceParent(top)
    connections = ConnectionPoolService(HTTPConnectionPool(reactor, persistent=True))
    connections.setServiceParent(top)

    storage: Storage = LocalStorage(config.local_base_path, io.run)
    if config.memory_cache_bytes:
        storage = MemoryCache(storage, config.memory_cache_bytes, is_generated)
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
