"""Shared test parts: real images made on the fly, the app over real storage."""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageChops, ImageStat
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from imageserver.access.cors import CorsPolicy
from imageserver.access.rates import RateLimiter, TokenBuckets
from imageserver.assembly import make_thumbor_paths, origin_bucket_settings
from imageserver.bulk.batches import Batches
from imageserver.config import Config
from imageserver.images import Coordination, Images
from imageserver.lifecycle.listeners import Lifecycle, NoLifecycle
from imageserver.metrics.events import Events
from imageserver.origin_paths import OriginPaths
from imageserver.sources.fetcher import SourceFetcher
from imageserver.sources.origins import FileOrigin, HttpOrigin, Origin, S3Origin
from imageserver.storage import Storage
from imageserver.storage.local import LocalStorage
from imageserver.storage.metered import MeteredStorage
from imageserver.storage.quotas import Quotas
from imageserver.storage.s3 import LazyClient
from imageserver.web.app import (
    ImageServerApp,
    Lifetimes,
    allowed_methods,
    answer_headers,
)
from imageserver.web.site import Admission, BoundedSite, methods_of
from tests.rawhttp import body_of, exchange, headers_of, request_bytes, status_of

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
YELLOW = (255, 255, 0)
WHITE = (255, 255, 255)


def synchronous(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """A runner that does the work at once, on the calling thread."""
    return maybeDeferred(f, *args)


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Random RGB pixels, the same every run (Image.effect_noise is not)."""
    w, h = size
    return Image.frombytes("RGB", size, random.Random(seed).randbytes(w * h * 3))


def quadrants(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Red, green / blue, yellow quadrants: shows any flip, turn or crop."""
    w, h = size
    image = Image.new(mode, size)
    image.paste(RED, (0, 0, w // 2, h // 2))
    image.paste(GREEN, (w // 2, 0, w, h // 2))
    image.paste(BLUE, (0, h // 2, w // 2, h))
    image.paste(YELLOW, (w // 2, h // 2, w, h))
    return image


def stripes(size: tuple[int, int], colours: list[tuple[int, int, int]], vertical: bool):
    """Equal bands of colour, left to right (vertical) or top to bottom."""
    w, h = size
    image = Image.new("RGB", size)
    n = len(colours)
    for i, colour in enumerate(colours):
        if vertical:
            image.paste(colour, (i * w // n, 0, (i + 1) * w // n, h))
        else:
            image.paste(colour, (0, i * h // n, w, (i + 1) * h // n))
    return image


def encode(image: Image.Image, fmt: str = "JPEG", **options: Any) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG":
        options.setdefault("quality", 95)
    image.save(out, fmt, **options)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    """How far apart two pictures are: the mean absolute difference of their
    RGB values (``b`` resized to ``a``'s size), 0-255."""
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB").resize(a.size))
    return sum(ImageStat.Stat(diff).mean) / 3


def close_to(
    actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12
) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


class Gate:
    """A runner that holds work until released: slow work, made visible.

    ``calls`` names every function it was given, in order (for a wrapper that
    takes a function first, such as a timer, the function it wraps).
    """

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.held: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        inner = args[0] if args and callable(args[0]) else f
        self.calls.append(inner.__name__)
        d: Deferred[Any] = Deferred()
        self.held.append((d, f, args))
        return d

    def release_first(self) -> None:
        """Run only the job held longest."""
        self.release_at(0)

    def release_at(self, index: int) -> None:
        """Run only the job at ``index`` of those held (-1: the newest)."""
        d, f, args = self.held.pop(index)
        maybeDeferred(f, *args).chainDeferred(d)

    def release(self) -> None:
        """Run everything held so far, and whatever that submits in turn."""
        while self.held:
            d, f, args = self.held.pop(0)
            maybeDeferred(f, *args).chainDeferred(d)


def block_writes(root: str) -> None:
    """Put a file where the test images' folders go (``p/6e0``), so that no
    write under them can land: a disk that refuses, for real."""
    os.makedirs(os.path.join(root, "p"), exist_ok=True)
    with open(os.path.join(root, "p", "6e0"), "wb") as f:
        f.write(b"in the way")


def sample(events: Events, name: str, **labels: str) -> float:
    """The current value of one metric sample (0 when never recorded)."""
    value = events.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class ClosingSite(Site):
    """A site whose connections a test closes and waits for: the server at the
    other end may have exited without this reactor having read the close yet,
    which trial would report as an unclean reactor."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.open: list[tuple[Any, Deferred[None]]] = []

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        closed: Deferred[None] = Deferred()
        self.open.append((protocol, closed))
        lost = protocol.connectionLost

        def connection_lost(reason: Failure) -> None:
            lost(reason)
            closed.callback(None)

        protocol.connectionLost = connection_lost
        return protocol

    async def close(self) -> None:
        for protocol, closed in self.open:
            if not closed.called:
                protocol.transport.abortConnection()
            await closed


def serve(case: Any, resource: Resource) -> str:
    """The base URL of ``resource`` served on loopback for the length of
    ``case``, its connections closed and waited for at the end."""
    site = ClosingSite(resource)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    case.addCleanup(site.close)
    case.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}"


class TestCaseMixin:
    def assertColour(
        self: Any,
        image: Image.Image,
        xy: tuple[int, int],
        expected: tuple[int, ...],
        tolerance: int = 12,
    ) -> None:
        pixel = image.convert("RGBA" if len(expected) == 4 else "RGB").getpixel(xy)
        if not close_to(pixel, expected, tolerance):
            self.fail(f"pixel at {xy} is {pixel}, expected about {expected}")


class AppHarness:
    """The real Klein app over real local storage, driven in memory.

    ``remote`` wraps the local storage (a remote store with the local disk
    as its cache, say).

    Work that would go to thread pools runs at once, so every request finishes
    before the call returns.
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        *,
        sources: Resource | None = None,
        clock: Clock | None = None,
        runner: Callable[..., Deferred[Any]] = synchronous,
        remote: Callable[[Storage], Storage] | None = None,
        lifecycle: Lifecycle | None = None,
        **settings: Any,
    ) -> None:
        self.case = case
        self.root = case.mktemp()
        self.config = Config(local_base_path=self.root, **settings)
        self.clock = clock or Clock()
        self.events = Events()
        self.local = LocalStorage(self.root, synchronous)
        metered = MeteredStorage(self.local, "local", self.events)
        self.storage = remote(metered) if remote else metered
        self.quotas = None
        if self.config.namespace_quota_bytes:
            self.quotas = Quotas(
                self.config.namespace_quota_bytes,
                self.storage,
                synchronous,
                self.clock,
                self.config.quota_interval,
                self.events,
            )
            self.storage = self.quotas.counting(self.storage)
        self.sources = RequestTraversalAgent(sources or Resource())
        self.images = Images(
            storage=self.storage,
            sources=SourceFetcher(
                self.sources,
                self.clock,
                timeout=self.config.http_timeout,
                max_bytes=self.config.max_source_bytes,
            ),
            process=runner,
            policy=self.config.render_policy,
            coordination=Coordination(
                lifecycle=lifecycle or NoLifecycle(),
                rates=(
                    RateLimiter(self.config.rates, TokenBuckets(self.clock.seconds))
                    if self.config.rates
                    else None
                ),
                quotas=self.quotas,
            ),
            events=self.events,
        )
        fetcher = SourceFetcher(
            self.sources,
            self.clock,
            timeout=self.config.http_timeout,
            max_bytes=self.config.max_source_bytes,
        )
        origins: dict[str, Origin] = {}
        most = self.config.max_source_bytes
        for namespace, spec in self.config.origin_specs.items():
            if spec.scheme == "file":
                origins[namespace] = FileOrigin(spec.url, synchronous, most)
            elif spec.scheme == "s3":
                client = LazyClient(origin_bucket_settings(self.config, spec))
                origins[namespace] = S3Origin(spec.url, client, synchronous, most)
            else:
                origins[namespace] = HttpOrigin(spec.url, fetcher)
        self.origin_paths = (
            OriginPaths(
                images=self.images,
                storage=self.storage,
                origins=origins,
                clock=self.clock,
                ttl=self.config.origin_ttl,
                negative_ttl=self.config.origin_missing_ttl,
                stale_while_revalidate=self.config.origin_stale_while_revalidate,
                events=self.events,
                max_fetches=(
                    self.config.max_receiving_bytes // self.config.max_source_bytes
                ),
            )
            if origins
            else None
        )
        self.batches = Batches(
            self.images, self.storage, clock=self.clock, origin_paths=self.origin_paths
        )
        self.resource = ImageServerApp(
            self.images,
            self.batches,
            self.origin_paths,
            make_thumbor_paths(self.config, self.images, self.origin_paths),
            Lifetimes.configured(self.config),
            client_hints=self.config.client_hints,
            similar=self.config.serves_similar,
        ).app.resource()
        self.client = StubTreq(self.resource)

    def start(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        """Send a request; the Deferred fires with the response."""
        return self.client.request(method, "http://imageserver" + url, **kwargs)

    def flush(self) -> None:
        """Deliver every byte waiting in the in-memory connections."""
        self.sources.flush()
        self.client.flush()

    def request(self, method: str, url: str, **kwargs: Any) -> tuple[Any, bytes]:
        """Send a request and return the response and its whole body."""
        d = self.start(method, url, **kwargs)
        self.flush()
        response = self.case.successResultOf(d)
        body = self.case.successResultOf(self.client.content(response))
        return response, body

    def json(self, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
        response, body = self.request(method, url, **kwargs)
        self.case.assertEqual(
            response.headers.getRawHeaders("Content-Type"), ["application/json"]
        )
        return response.code, json.loads(body)

    def upload(self, data: bytes, namespace: str = "p", query: str = "") -> str:
        """Upload ``data``; return the image's folder URL."""
        code, info = self.json("POST", f"/{namespace}{query}", data=data)
        self.case.assertEqual(code, 200, info)
        h = info["hash"]
        return f"/{namespace}/{h[0:3]}/{h[3:6]}/{h[6:9]}/{h[9:]}"


class LoopbackSite:
    """``resource`` (an `AppHarness`'s, say) behind the site as the server
    builds it, with ``admit`` deciding access, on a loopback port. The
    in-memory client skips the site; requests here are sent byte for byte."""

    def __init__(
        self,
        case: TestCase,
        resource: Any,
        admit: Admission | None = None,
        cors: CorsPolicy | None = None,
    ) -> None:
        site = BoundedSite(
            resource,
            max_body_bytes=10**6,
            methods=methods_of(ImageServerApp.app),
            admit=admit,
            answer_headers=answer_headers,
            allowed_methods=allowed_methods,
            cors=cors,
        )
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        case.addCleanup(port.stopListening)
        self.site = site
        self.port = int(port.getHost().port)

    async def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        data: bytes = b"",
    ) -> tuple[int, dict[str, list[str]], bytes]:
        """Status, headers (by lower-case name) and body of the answer."""
        answer = await exchange(self.port, request_bytes(method, target, headers, data))
        return status_of(answer), headers_of(answer), body_of(answer)
