"""The service tree: pools, storage, ports and probes, started and stopped by twistd.

Building the tree opens nothing; files, sockets and threads appear in
``startService``.
"""

from __future__ import annotations

import os
import resource
import sys
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from twisted.application.service import MultiService
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger, textFileLogObserver
from twisted.python.components import Componentized
from twisted.web.resource import IResource

from imageserver import __version__
from imageserver.access.cors import CorsPolicy
from imageserver.access.tokens import WriteTokens
from imageserver.assembly import (
    check_store,
    make_images,
    make_origin_paths,
    make_thumbor_paths,
)
from imageserver.bulk.batches import Batches
from imageserver.config import Config
from imageserver.metrics.events import Events, host_metrics
from imageserver.metrics.statsd import StatsdClient
from imageserver.runtime import endpoints
from imageserver.runtime.listening import Listening, StartupFailed
from imageserver.runtime.logs import JSONLines, tagged
from imageserver.runtime.pools import ThreadPoolService
from imageserver.runtime.reloading import Hangup, Reloading
from imageserver.runtime.shutdown import (
    AnswersSent,
    Deadline,
    OrderedMultiService,
    RequestDrain,
    Signals,
)
from imageserver.runtime.systemd import SystemdNotifier
from imageserver.storage.local import WritableCheck
from imageserver.web.access import AccessPolicy
from imageserver.web.admin import AdminApp, Readiness
from imageserver.web.app import (
    UNSIGNED_ROUTES,
    ImageServerApp,
    Lifetimes,
    allowed_methods,
    answer_headers,
    is_thumbor_path,
    route_name,
)
from imageserver.web.debug import DebugApp, HeapTracing
from imageserver.web.site import BodyBudget, BoundedSite, methods_of
from imageserver.workers import LISTENING_FD, AdoptedPort, Ready, Report, Workers

log = Logger()


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
        if self.worker is None and thumbor_signed_alone(config):
            log.warn(
                "thumbor's URLs are signed, this server's are not: give --secret "
                "(docs/thumbor.md#migrating-safely)"
            )
        storage = os.path.abspath(config.local_base_path)
        if config.remote is not None:
            endpoint = config.s3_endpoint_url or "AWS"
            storage = f"bucket {config.aws_bucket} at {endpoint}, cached in {storage}"
        for namespace, spec in config.origin_specs.items():
            log.info(
                "namespace {namespace} is served from its origin {url}",
                namespace=namespace,
                url=spec.described,
            )
        if config.thumbor:
            log.info(
                "thumbor's URLs are answered ({how}), images from {source}",
                how="signed, and unsigned /unsafe/ ones"
                if config.thumbor_allow_unsafe
                else "signed ones only",
                source=f"the origin {config.thumbor_loader}"
                if config.thumbor_loader
                else "the web origins",
            )
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


def thumbor_signed_alone(config: Config) -> bool:
    """Whether thumbor's URLs are signed and this server's are not (its
    native routes reach the same images)."""
    return config.thumbor and bool(config.thumbor_security_keys) and not config.secret


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
    # Stopped last of all, after the pools have finished their renders.
    sent = AnswersSent(reactor)
    sent.setServiceParent(top)

    if config.otlp_endpoint:  # stopped after the pools, so their spans go too
        from imageserver.metrics.tracing import Tracing

        Tracing(
            config.otlp_endpoint,
            service_name=config.otlp_service_name,
            sample_ratio=config.otlp_sample_ratio,
            version=__version__,
            worker=worker,
        ).setServiceParent(top)
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
        from imageserver.bulk.cluster import ClusterShards  # dask: only when asked

        waiting = ThreadPoolService(reactor, 32, "imageserver-cluster")
        waiting.setServiceParent(top)
        shards = ClusterShards(config, waiting.run)
        shards.setServiceParent(top)
    origin_paths = make_origin_paths(
        config, reactor, top, images, storage, io_pool, events, worker is not None
    )
    batches = Batches(
        images,
        storage,
        config.batch_concurrency,
        shards=shards,
        clock=reactor,
        run=io_pool.run,
        origin_paths=origin_paths,
    )
    thumbor = make_thumbor_paths(config, images, origin_paths)
    api: IResource = ImageServerApp(
        images,
        batches,
        origin_paths,
        thumbor,
        Lifetimes.configured(config),
        client_hints=config.client_hints,
        similar=config.serves_similar,
    ).app.resource()
    tokens = None
    if config.write_tokens:
        tokens = top.write_tokens = WriteTokens(config.write_tokens)
        Reloading(reactor, tokens.refresh, io_pool.run).setServiceParent(top)
    else:  # SIGHUP (passed on by a supervisor) must not end the process
        Hangup(
            reactor, lambda: log.info("SIGHUP: no file to read again")
        ).setServiceParent(top)
    admit = None
    if config.secrets or tokens is not None or images.rates is not None:
        admit = AccessPolicy(
            reactor,
            secrets=config.secrets,
            tokens=tokens,
            unsigned=UNSIGNED_ROUTES,
            # thumbor's URLs carry thumbor's signature, checked by its route.
            signed_otherwise=is_thumbor_path if thumbor is not None else None,
            rates=images.rates,
        )
    site = BoundedSite(
        api,
        max_body_bytes=config.max_source_bytes,
        events=events,
        route_of=partial(
            route_name,
            origins=frozenset(config.origin_specs),
            thumbor=thumbor is not None,
        ),
        idle_timeout=config.idle_timeout,
        clock=reactor,
        head_timeout=config.request_head_timeout,
        max_connections=config.max_connections,
        body_budget=BodyBudget(config.max_receiving_bytes),
        methods=methods_of(ImageServerApp.app),
        admit=admit,
        answer_headers=partial(answer_headers, client_hints=config.client_hints),
        slashes_encoded=is_thumbor_path if thumbor is not None else lambda path: False,
        allowed_methods=allowed_methods,
        cors=CorsPolicy(config.cors_origins) if config.cors_origins else None,
        traced=True,
    )
    if config.manhole_endpoint is not None:
        from imageserver.runtime.manhole import ManholeService  # conch: only when asked

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
    sent.site = site
    RequestDrain(site, reactor, deadline).setServiceParent(top)
    if worker is None:
        Listening(reactor, config.endpoint, site, "main").setServiceParent(top)
        SystemdNotifier(reactor, lambda: readiness.problem() is None).setServiceParent(
            top
        )
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
    SystemdNotifier(reactor, lambda: readiness.problem() is None).setServiceParent(top)
    readiness.setServiceParent(top)
    return top
