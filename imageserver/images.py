"""The use cases: upload an original, get a variant or file, process outputs.

This layer owns the rules (what is stored where, in which order, what runs
once) and nothing else: HTTP lives in `imageserver.web`, pixels in
`imageserver.imaging.renderer`, bytes at rest behind `imageserver.storage.Storage`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, TypeVar

from twisted.internet.defer import Deferred, FirstError, TimeoutError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from imageserver import formats, naming, negotiation
from imageserver.access.rates import RateLimiter
from imageserver.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotAnImage,
    NotCanonical,
    NotFound,
    Overloaded,
    Stopping,
    StorageFailed,
    StorageFull,
    StorageUnavailable,
    UnsupportedImage,
)
from imageserver.imaging import containers, geometry, likeness, renderer
from imageserver.imaging.faces import parse as parse_faces
from imageserver.lifecycle.listeners import Lifecycle, NoLifecycle
from imageserver.metrics import tracing
from imageserver.metrics.events import Events
from imageserver.naming import (
    AUTO,
    INFO,
    MAX_OUTPUTS,
    ORIGINAL,
    QUALITY_SUFFIX,
    ImageId,
    Presets,
    Variant,
    VariantRules,
    ascii_digits,
    check_file_name,
    check_namespace,
    is_file_name,
    is_generated,
    variant_format,
)
from imageserver.runtime.pools import Runner
from imageserver.sources.fetcher import SourceFetcher
from imageserver.storage import Storage, StoredObject, content_type_for, etag_of
from imageserver.storage.flights import Flights
from imageserver.storage.gates import FolderGate
from imageserver.storage.hostlocks import HostLocks
from imageserver.storage.quotas import Quotas
from imageserver.storage.similar import SimilarIndex

log = Logger()

T = TypeVar("T")

#: Text fields info.json gained after the Go image-server's four (and
#: frames): an older info.json without them is completed on its first read.
_LATER_FIELDS = ("blurhash", "thumbhash", "dominant_color", "phash")
#: How many of the 64 bits of two images' perceptual hashes may differ for
#: them to be alike, unless a request says (docs/api.md); the most it may
#: say (past it, pictures are unrelated: about 32 bits differ).
SIMILAR_DISTANCE = 12
MOST_SIMILAR_DISTANCE = 20
#: The most images /similar answers with, the nearest first.
MOST_SIMILAR = 100
_MD5 = re.compile(r"[0-9a-f]{32}")
#: What an upload may do about images like it already stored.
SIMILAR_POLICIES = ("refuse", "report")
#: Originals whose transparency (for .auto's jpg or png) and size (for -ch
#: and crops) are remembered.
_KNOWN_ALPHA = 4096
#: How long a chosen quality's record may take to read before the answer
#: goes without it, and how long one found missing is not asked again, in
#: seconds; how many missing ones are remembered.
SIDECAR_WAIT = 0.5
SIDECAR_RETRY = 10.0
REMEMBERED = 4096


@dataclass(frozen=True, slots=True)
class Resolved:
    """The stored name a requested name is served from, and how it was found."""

    name: str
    #: Through a preset: its meaning may change when the operator edits it.
    preset: bool = False
    #: Chosen by the Accept header (``.auto``).
    negotiated: bool = False
    #: Whether the stored name is served by its own URL too (not under
    #: --presets_only, where a preset's variant may be served only by it).
    direct: bool = True
    #: Seconds a preset's answers may be kept, where --preset_max_age says.
    max_age: int | None = None
    #: The client hints that chose it (a ``-ch`` name): what it varies by.
    hints: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RenderPolicy:
    """What may be made and served, and what making it may cost: one value
    from the configuration (`imageserver.config.Config.render_policy`)."""

    #: How variant names are read and spelled.
    rules: VariantRules
    #: What decoding one original may cost.
    limits: renderer.Limits
    #: Names the operator gave to variants (--presets).
    presets: Presets = field(default_factory=Presets)
    #: Whether `Images.get` hands out originals, metadata and all
    #: (--serve_originals).
    serve_originals: bool = True
    #: Seconds a request waits for the work that stores into an image's
    #: folder (renders, an upload) before a 503; the work goes on.
    processing_timeout: float | None = None
    #: Namespaces whose originals come from an origin (--origin): nothing is
    #: uploaded into them.
    origins: frozenset[str] = frozenset()
    #: The originals watermarks are made from (--watermarks), by md5.
    watermarks: Mapping[str, ImageId] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Coordination:
    """How this process works with others on its host and its store; the
    defaults: alone."""

    #: With several workers on this host: locks that make one of them render
    #: a new variant or store a new upload (see storage.hostlocks).
    host_locks: HostLocks | None = None
    #: Told of every change (webhooks, other instances' purge logs).
    lifecycle: Lifecycle = field(default_factory=NoLifecycle)
    #: With other instances on the same store: seconds after a purge to
    #: remove what their renders, under way at the time, stored after it.
    resweep_after: float | None = None
    #: What namespaces and write tokens may ask for, shared by the host's
    #: workers (--namespace_render_rate, ...).
    rates: RateLimiter | None = None
    #: What namespaces may store (--namespace_quota_bytes).
    quotas: Quotas | None = None


class Images:
    """Upload, look up and generate images, with collaborators given, not found."""

    def __init__(
        self,
        *,
        storage: Storage,
        sources: SourceFetcher,
        process: Runner,
        policy: RenderPolicy,
        coordination: Coordination | None = None,
        events: Events | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        coordination = coordination or Coordination()
        self._clock = clock
        self._serve_originals = policy.serve_originals
        self._origins = policy.origins
        self._host_locks = coordination.host_locks
        #: Stores into a folder and its purge never overlap (see gates).
        self._gate = FolderGate(coordination.host_locks)
        self._lifecycle = coordination.lifecycle
        self._resweep_after = coordination.resweep_after
        #: Also asked by the web's admission (uploads, writes).
        self.rates = coordination.rates
        self._quotas = coordination.quotas
        self._processing_timeout = policy.processing_timeout
        self._storage = storage
        self._events = events or Events()
        self._sources = sources
        self._process = process
        self.rules = policy.rules
        self._limits = policy.limits
        self._watermarks = policy.watermarks
        #: The watermarks' originals, read once each.
        self._marks: dict[str, bytes] = {}
        self.presets = policy.presets
        self._fetches: Flights[str, bytes] = Flights()
        #: By image, and whether it refuses near-duplicates (an upload that
        #: does not must not share one that does, and be refused with it).
        self._ingests: Flights[tuple[ImageId, bool], bytes] = Flights()
        self._renders: Flights[tuple[str, bool], StoredObject] = Flights()
        self._similar = SimilarIndex(storage, clock)
        self._alpha: OrderedDict[ImageId, bool] = OrderedDict()
        #: Chosen qualities looked for lately and not found, by key, with
        #: when to look again (`SIDECAR_RETRY`).
        self._unchosen: OrderedDict[str, float] = OrderedDict()
        self._sizes: OrderedDict[ImageId, tuple[int, int]] = OrderedDict()

    async def upload(
        self,
        namespace: str,
        *,
        body: BinaryIO | None = None,
        source: str | None = None,
        outputs: str | None = None,
        body_is: str = "the body",
        faces: bool = False,
        similar: str | None = None,
    ) -> bytes:
        """Store an original (the body, or fetched from ``source``); return info.json.

        Returns once the original, its info.json and every output are stored.
        ``body_is`` names the body in messages (the command line's is a file).
        With ``faces``, info.json carries the faces in the picture. With
        ``similar``, images like it already stored refuse it (``refuse``: a
        409 naming them) or are named in the answer (``report``).
        """
        check_namespace(namespace)
        if similar is not None and similar not in SIMILAR_POLICIES:
            raise InvalidRequest(f"similar is refuse or report, not {similar[:20]!r}")
        self.check_uploads(namespace)
        variants = self._outputs(namespace, outputs, defaults=True)
        data, subject = b"", body_is
        if source is not None:
            if body is not None and body.read(1):
                raise InvalidRequest(
                    "give the image as the body or as ?source=URL, not both"
                )
            data = await self._fetches.run([source], self._download)[source]
            subject = f"the download from {source}"
        elif body is not None:
            data = await self.read(body)
        if not data and subject == "the body":
            raise UnsupportedImage(
                "the body is empty: send the image as the body or give ?source=URL"
            )
        if not data:
            raise UnsupportedImage(f"{subject} is empty")
        try:
            return await self._store(namespace, data, variants, faces, similar)
        except NotAnImage as e:
            raise e.about(subject) from None

    def names_an_output(self, namespace: str, name: str) -> bool:
        """Whether ``name`` is something an image yields (a variant, a
        preset, info.json, its original), not a client's file: raises as
        `VariantRules.canonical` does for a malformed variant name."""
        if name in (INFO, ORIGINAL) or self.presets.resolve(namespace, name):
            return True
        asks = naming.hinted(name)
        return self.rules.canonical(asks.base if asks else name) is not None

    async def stored(self, image: ImageId) -> bool:
        """Whether ``image`` is stored (its info.json is)."""
        return await self._storage.exists(image.key(INFO))

    def check_uploads(self, namespace: str) -> None:
        """Refuse uploads into a namespace served from an origin (its images
        come from there) or storing its quota; every way in crosses here:
        the API, batches, the CLI, client files."""
        if namespace in self._origins:
            raise Forbidden(
                f"namespace {namespace!r} is served from its origin (--origin): "
                "its images come from there; upload into another namespace"
            )
        self.check_quota(namespace)

    @contextlib.asynccontextmanager
    async def _held(
        self, namespace: str, size: int, asked: bool = True
    ) -> AsyncIterator[None]:
        """Around the puts of a write a client ``asked`` for (an upload with
        its outputs, a process, a client file) of ``size`` bytes: checked
        against the namespace's quota with what else is being written into
        it, and held while it is (`Quotas.reserving`). Taken once the bytes
        are made (a body that is not an image never gets here). What readers
        cause (a GET's variant) and an origin's namespace are not held."""
        if not asked or self._quotas is None or namespace in self._origins:
            yield
            return
        async with self._quotas.reserving(namespace, size):
            yield

    def check_quota(self, namespace: str) -> None:
        """Refuse a write into a namespace storing its quota: uploads (above)
        and whatever else a client asks to be stored (``process``, a batch
        with outputs). Not an origin's namespace: its variants are made as
        a GET's are, for readers, who cannot act on a quota."""
        if self._quotas is not None and namespace not in self._origins:
            self._quotas.check(namespace)

    async def store_original(
        self, namespace: str, data: bytes, subject: str
    ) -> ImageId:
        """Store ``data`` as an upload would (checked, once, with the default
        outputs): an origin's object, fetched. ``subject`` names it in
        messages."""
        if not data:
            raise UnsupportedImage(f"{subject} is empty")
        variants = self._outputs(namespace, None, defaults=True)
        try:
            info = await self._store(namespace, data, variants)
        except NotAnImage as e:
            raise e.about(subject) from None
        return ImageId(namespace, json.loads(info)["hash"])

    async def _store(
        self,
        namespace: str,
        data: bytes,
        variants: tuple[Variant, ...],
        faces: bool = False,
        similar: str | None = None,
    ) -> bytes:
        # What is stored (and hashed) is the image, without anything a file
        # carries after its end.
        data, digest = await self._process(_identified, data)
        image = ImageId(namespace, digest)

        async def store() -> bytes:
            refuse = similar == "refuse"

            async def ingest(_: object) -> dict[tuple[ImageId, bool], bytes]:
                info = await self._ingest(image, data, variants, faces, refuse)
                return {(image, refuse): info}

            info = await self._ingests.run([(image, refuse)], ingest)[(image, refuse)]
            # An image stored before: what it makes now is a render (the
            # upload rate does not see a batch's items).
            await self._ensure(image, variants, data, rated=True)
            if faces:
                info = await self._with_faces(image, info, data)
            if similar == "report":
                fields = json.loads(info)
                phash = likeness.parse(str(fields.get("phash", "")))
                if phash is not None:
                    fields["similar"] = await self._near(
                        namespace, phash, SIMILAR_DISTANCE, image.hash, fresh=True
                    )
                info = json.dumps(fields).encode()
            return info

        return await self._storing(image.folder, store)

    async def resolve(
        self,
        image: ImageId,
        name: str,
        accept: str | None,
        hints: negotiation.ClientHints | None = None,
    ) -> Resolved:
        """What to serve for ``name``: a preset's variant, for ``.auto`` the
        concrete variant the client's ``Accept`` header allows best, and for
        a ``-ch`` name the size its client ``hints`` choose (None: the
        server reads no hints, --client_hints)."""
        asks = naming.hinted(name)
        if asks is not None:
            if hints is None:
                raise InvalidRequest(
                    f"{name!r}: this server reads no client hints: name the "
                    f"size without -{naming.HINTS} (--client_hints)"
                )
            # Spelt canonically at the largest size a hint may give it: what
            # folds at the name's own size (a round past half the width,
            # noup) may not at the hinted one.
            largest = naming.at_width(asks.base, self.rules.maximum_width)
            try:
                self._parse(largest)
            except NotCanonical as e:
                canonical = naming.at_width(e.canonical, None, like=asks.base)
                stem, _, ext = canonical.rpartition(".")
                raise NotCanonical(name, f"{stem}-{naming.HINTS}.{ext}") from None
            # The hinted size, else smaller ones, else the name's own: a
            # hint never makes a 400 of a name that serves without it.
            for chosen in naming.with_hints(
                asks, hints.dpr, hints.width, self.rules.maximum_width
            ):
                try:
                    resolved = await self.resolve(image, chosen, accept)
                except NotCanonical as e:
                    # What the hinted size folds to (noup, a round) is
                    # served, never redirected to: the URL is the -ch one.
                    resolved = await self.resolve(image, e.canonical, accept)
                except InvalidRequest:
                    if chosen == asks.base:
                        raise
                    continue
                if chosen != asks.base and not await self._within_side(
                    image, resolved.name
                ):
                    continue
                return replace(resolved, hints=asks.headers)
        preset = self.presets.resolve(image.namespace, name)
        # A preset's URL is its name: it is served, not redirected, however
        # the operator spelled its variant (the start-up check agrees).
        try:
            variant = self._parse(preset, lenient=True) if preset else self._parse(name)
        except NotCanonical as e:
            # Under --presets_only, a spelling of a name that is not served
            # is refused, not sent to its canonical spelling to be refused.
            variant = self.rules.parse(e.canonical)
            if variant is None or self.presets.allows(image.namespace, variant.name):
                await self._crop_within(image, variant)
                raise
        if variant is None:
            return Resolved(name)
        if preset is None and not self.presets.allows(image.namespace, variant.name):
            self._events.variant(variant.format, "failed")
            raise Forbidden(
                f"{name!r} is not one of this server's presets nor of its "
                "--outputs (--presets_only)"
            )
        # A watermark by its name means what the operator points it at: as
        # a preset's name does.
        mutable = preset is not None or self.rules.watermark_named(name)
        max_age = self.presets.max_age(image.namespace, name)
        if variant.format != AUTO:
            direct = self.presets.allows(image.namespace, variant.name)
            return Resolved(
                variant.name, preset=mutable, direct=direct, max_age=max_age
            )
        accepted = negotiation.accepted_types(accept)
        choice = self.rules.negotiated(variant, accepted, has_alpha=False)
        if choice.format not in self.rules.auto_formats:
            # The fallback depends on transparency: jpg, or png for alpha
            # (the original's, or what the variant makes: a mask); jpg for a
            # byte budget, which png cannot keep, and for a background, which
            # flattens all transparency.
            alpha = (
                not variant.max_bytes
                and variant.background is None
                and (variant.adds_transparency or await self._has_alpha(image))
            )
            choice = self.rules.negotiated(variant, accepted, alpha)
        direct = self.presets.allows(image.namespace, choice.name)
        return Resolved(
            choice.name,
            preset=mutable,
            negotiated=True,
            direct=direct,
            max_age=max_age,
        )

    async def _within_side(self, image: ImageId, name: str) -> bool:
        """Whether the side a ``wN`` or ``hN`` variant does not name, which
        follows the original's shape, stays within --maximum_width."""
        variant = self.rules.parse(name)
        if variant is None or variant.fit not in (naming.Fit.WIDTH, naming.Fit.HEIGHT):
            return True
        plan = geometry.plan(variant, *await self._size(image))
        return max(plan.output_size) <= self.rules.maximum_width

    async def _size(self, image: ImageId) -> tuple[int, int]:
        """The original's width and height, from its info.json; kept, as an
        image's folder is named by its bytes (a purged image uploaded again
        has the same size)."""
        known = self._sizes.get(image)
        if known is not None:
            self._sizes.move_to_end(image)
            return known
        info = json.loads((await self.get(image, INFO)).data)
        size = self._sizes[image] = (info["width"], info["height"])
        while len(self._sizes) > _KNOWN_ALPHA:
            self._sizes.popitem(last=False)
        return size

    async def _crop_within(self, image: ImageId, variant: Variant | None) -> None:
        """A crop box past the original is refused before a redirect to the
        name's canonical spelling, not after it: a 301 leads to a 200."""
        if variant is not None and variant.crop is not None:
            geometry.crop_region(variant, *await self._size(image))

    async def _has_alpha(self, image: ImageId) -> bool:
        """Whether the original has transparency; known once per image."""
        known = self._alpha.get(image)
        if known is not None:
            self._alpha.move_to_end(image)
            return known
        info = await self.get(image, INFO)
        if json.loads(info.data)["content_type"] == "image/jpeg":
            alpha = False
        else:
            original = await self._storage.get(image.key(ORIGINAL))
            if original is None:
                raise NotFound("image not found")
            alpha = await self._process(renderer.has_alpha, original.data, self._limits)
        self._alpha[image] = alpha
        while len(self._alpha) > _KNOWN_ALPHA:
            self._alpha.popitem(last=False)
        return alpha

    def _parse(self, name: str, lenient: bool = False) -> Variant | None:
        """Parse a requested name (``lenient``: any spelling, no `NotCanonical`);
        a refused variant name is counted as failed."""
        try:
            return self.rules.canonical(name) if lenient else self.rules.parse(name)
        except (InvalidRequest, NotFound, Forbidden):
            # A variant request all the same (a bad number, an extension not
            # served): counted as a failed one.
            self._events.variant(variant_format(name) or "other", "failed")
            raise

    async def get(self, image: ImageId, name: str) -> StoredObject:
        """A variant (generated on first request), info.json, the original or a file.

        ``.auto`` names are `negotiate`d first.
        """
        variant = self._parse(name)
        if variant is None:
            return await self._get_file(image, name)
        if variant.format == AUTO:
            raise InvalidRequest(f"{name!r}: negotiate .auto before getting it")
        stored = await self._storage.get(image.key(name))
        if stored is not None and renderer.is_whole(variant.format, stored.data):
            self._events.variant(variant.format, "cached")
            return stored
        if stored is not None:
            # Written without fsync (see LocalStorage): a power loss can cut
            # it short. Made again, it replaces the broken file.
            log.warn(
                "{key} is not a whole {image_format} file; generating it again",
                key=image.key(name),
                image_format=variant.format,
            )

        if self.rates is not None:
            self.rates.render(image.namespace)

        async def generate() -> dict[str, StoredObject]:
            # What a GET generates can be made again: it is answered before
            # it is written.
            return await self._generate(image, [variant], durable=False)

        try:
            generated = await self._storing(image.folder, generate)
        except Exception:
            self._events.variant(variant.format, "failed")
            raise
        self._events.variant(variant.format, "generated")
        return generated[name]

    async def process_item(
        self,
        namespace: str,
        *,
        url: str | None = None,
        digest: str | None = None,
        outputs: str | None = None,
    ) -> dict[str, Any]:
        """One item of a batch: an image by hash, by source URL, or both.

        A hash already in the store gets its missing ``outputs`` made; else the
        URL is fetched and stored (its hash must then match). Returns info.json.
        """
        if digest is not None:
            image = ImageId(check_namespace(namespace), digest)
            try:
                info = json.loads((await self.get(image, INFO)).data)
            except NotFound:
                if url is None:
                    raise NotFound(f"{digest} is not in the store") from None
            else:
                if outputs:
                    await self.process(image, outputs)
                return info  # type: ignore[no-any-return]
        if url is None:
            raise InvalidRequest("an item needs a URL or a hash")
        info = json.loads(await self.upload(namespace, source=url, outputs=outputs))
        if digest is not None and info["hash"] != digest:
            raise InvalidRequest(f"{url} has md5 {info['hash']}, not {digest}")
        return info  # type: ignore[no-any-return]

    async def process(
        self, image: ImageId, outputs: str | None, faces: bool = False
    ) -> None:
        """Generate whichever of ``outputs`` are not stored yet; with
        ``faces``, find the faces for info.json if it has none yet."""
        variants = self._outputs(image.namespace, outputs)
        if not variants and not faces:
            raise InvalidRequest(
                "give the variants to generate in ?outputs=, or ?faces=1"
            )
        self.check_quota(image.namespace)

        async def work() -> None:
            await self._ensure(image, variants, rated=True)
            if faces:
                stored = await self._storage.get(image.key(INFO))
                if stored is None:
                    raise NotFound("image not found")
                await self._with_faces(image, stored.data)

        await self._storing(image.folder, work)

    async def put_file(self, image: ImageId, name: str, body: BinaryIO) -> None:
        """Keep a client's file in the image's folder, replacing any previous one
        (not in an origin's namespace: what is there comes from the origin)."""
        self.check_uploads(image.namespace)
        check_file_name(name)
        if self.presets.is_preset(image.namespace, name):
            raise InvalidRequest(f"the name {name!r} is a preset's")
        data = await self.read(body)
        async with self._gate.storing(image.folder):
            if not await self._storage.exists(image.key(ORIGINAL)):
                raise NotFound("image not found")
            async with self._held(image.namespace, len(data)):
                await self._storage.put(image.key(name), data, content_type_for(name))

    async def delete(self, image: ImageId, name: str) -> None:
        """Remove one variant (made again when next asked for) or client file.

        The original and info.json go only with the whole image (`purge`).
        """
        stored_name = self._stored_name(image.namespace, name)
        key = image.key(stored_name)
        async with self._gate.purging(image.folder):
            if not await self._storage.exists(image.key(INFO)):
                raise NotFound("image not found")
            if not await self._storage.exists(key):
                raise NotFound(f"{name!r} is not stored")
            await self._storage.delete(key)
            # A byte budget's quality goes with its variant.
            await self._storage.delete(key + QUALITY_SUFFIX)
        self._events.deleted("variant" if is_generated(key) else "file")
        log.info("deleted {key}", key=key)
        self._lifecycle.deleted(image, [key])

    def _stored_name(self, namespace: str, name: str) -> str:
        """The name ``name`` is stored under, for a delete."""
        if name in (ORIGINAL, INFO):
            raise InvalidRequest(
                f"{name} goes only with the whole image: DELETE the image's folder"
            )
        preset = self.presets.resolve(namespace, name)
        try:
            if preset is None:
                variant = self.rules.parse(name)
            else:
                variant = self.rules.canonical(preset)
        except NotCanonical as e:
            variant = self.rules.parse(e.canonical)
            assert variant is not None  # a canonical name is a variant's
        if variant is None:
            if not is_file_name(name):
                raise NotFound("file not found")
            return name
        if variant.format == AUTO:
            raise InvalidRequest(
                f"{name!r} is chosen by Accept, not stored: delete the name "
                "it was served as (its Content-Location)"
            )
        return variant.name

    async def purge(self, image: ImageId) -> list[str]:
        """Remove everything of an image: original, info.json, every variant and
        file, here and in every layer of storage; the keys that were there.

        Work storing into the image's folder finishes first and is removed
        with the rest; work that arrives meanwhile waits, then finds nothing.
        """
        check_namespace(image.namespace)
        async with self._gate.purging(image.folder):
            names = await self._storage.list(image.folder)
            if not names and not await self._storage.exists(image.key(INFO)):
                # Nothing to tell, but clear what a crash may have left deeper.
                await self._storage.delete_prefix(image.folder)
                raise NotFound("image not found")
            await self._storage.delete_prefix(image.folder)
            await self._forget_likeness(image)
        self._alpha.pop(image, None)
        keys = [image.key(name) for name in names]
        self._events.deleted("image")
        log.info(
            "purged {namespace}/{hash} ({count} objects)",
            namespace=image.namespace,
            hash=image.hash,
            count=len(keys),
        )
        self._lifecycle.purged(image, keys)
        if self._clock is not None and self._resweep_after is not None:
            self._clock.callLater(self._resweep_after, self._resweep, image)
        return keys

    async def forget(
        self, image: ImageId, drop: Callable[[str], Awaitable[None]]
    ) -> None:
        """Another process purged ``image``: ``drop`` this process's copies of
        its folder, once the work storing into it here is done."""
        async with self._gate.purging(image.folder):
            await drop(image.folder)
        self._alpha.pop(image, None)

    def _resweep(self, image: ImageId) -> Deferred[None]:
        return Deferred.fromCoroutine(self._sweep_again(image)).addErrback(
            lambda f: log.failure(
                "sweeping {folder} again failed", f, folder=image.folder
            )
        )

    async def _sweep_again(self, image: ImageId) -> None:
        """Remove variants that another instance's render, under way during a
        purge, stored after it; unless the image was uploaded again since."""
        async with self._gate.purging(image.folder):
            if await self._storage.exists(image.key(INFO)):
                return
            late = [n for n in await self._storage.list(image.folder) if n != ORIGINAL]
            for name in late:
                await self._storage.delete(image.key(name))
        if late:
            log.info(
                "removed {count} objects of purged {folder} stored after the purge",
                count=len(late),
                folder=image.folder,
            )

    async def read(self, body: BinaryIO) -> bytes:
        """A request body's bytes, read off the reactor thread."""
        return await self._process(_read, body)

    def check_outputs(self, namespace: str, outputs: str | None) -> None:
        """Refuse, now, ``outputs`` that `process` would refuse later."""
        self._outputs(check_namespace(namespace), outputs)

    def _outputs(
        self, namespace: str, outputs: str | None, defaults: bool = False
    ) -> tuple[Variant, ...]:
        """The variants ``?outputs=`` names (by variant or preset name), and,
        with ``defaults``, those --outputs makes for the namespace."""
        names = dict.fromkeys(n.strip() for n in (outputs or "").split(","))
        names.pop("", None)
        if len(names) > MAX_OUTPUTS:
            raise InvalidRequest(f"at most {MAX_OUTPUTS} outputs per request")
        requested: list[Variant] = []
        for name in names:
            preset = self.presets.resolve(namespace, name)
            variant = self.rules.output(name, preset)
            if preset is None and not self.presets.allows(namespace, variant.name):
                raise InvalidRequest(
                    f"output {name!r} is not one of this server's presets nor "
                    "of its --outputs (--presets_only)"
                )
            requested.append(variant)
        made = self.presets.outputs_for(namespace) if defaults else ()
        return tuple({v.name: v for v in (*made, *requested)}.values())

    async def _download(self, urls: list[str]) -> dict[str, bytes]:
        (url,) = urls
        start = time.perf_counter()
        try:
            data = await self._sources.fetch(url)
        except Exception:
            self._events.source_fetched(time.perf_counter() - start, None)
            raise
        self._events.source_fetched(time.perf_counter() - start, len(data))
        return {url: data}

    async def _render_many(
        self,
        original: bytes,
        variants: Sequence[Variant],
        with_placeholders: bool = False,
        known_faces: Sequence[geometry.Box] | None = None,
        with_faces: bool = False,
    ) -> tuple[renderer.ImageInfo, list[tuple[bytes, str]]]:
        """Decode once, encode each variant: in the processing pool, timed.

        Each output comes with its ETag, hashed in the pool too. The faces
        are as `renderer.render_many` takes them.
        """
        marks = {
            v.watermark.hash: await self._mark(v.watermark.hash)
            for v in variants
            if v.watermark is not None
        }
        with tracing.span("process", {"imageserver.variants": len(variants)}):
            info, outputs, seconds = await self._process(
                _rendered,
                original,
                variants,
                self._limits,
                with_placeholders,
                marks,
                known_faces,
                with_faces,
            )
        self._events.processed(seconds)
        if info.still_because is not None:
            log.info(
                "animation served as its first frame: {reason}",
                reason=info.still_because,
            )
        return info, outputs

    async def _storing(self, folder: str, work: Callable[[], Awaitable[T]]) -> T:
        """``work`` inside ``folder``'s gate (as work that stores there),
        waited for as `_in_time` says."""

        async def gated() -> T:
            async with self._gate.storing(folder):
                return await work()

        return await self._in_time(gated())

    async def _in_time(self, work: Coroutine[Any, Any, T]) -> T:
        """``work``'s result, waited for at most --processing_timeout (then a
        503).

        The work itself is not cancelled, by the deadline or by a client that
        hangs up: it goes on to store what it made (still inside the folder's
        gate), so the next request finds it rather than starting it again.
        """
        done = Deferred.fromCoroutine(work)
        waiter: Deferred[T] = Deferred()

        def land(result: T | Failure) -> None:
            if not waiter.called:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
            elif isinstance(result, Failure) and not result.check(Stopping):
                log.failure("work nobody waits for any more failed", result)

        done.addBoth(land)
        if self._clock is not None and self._processing_timeout is not None:
            waiter.addTimeout(self._processing_timeout, self._clock)
        try:
            return await waiter
        except TimeoutError:
            raise Overloaded(
                f"processing took longer than {self._processing_timeout:g} seconds"
            ) from None

    async def chosen_quality(
        self, image: ImageId, name: str
    ) -> tuple[int, float | None] | None:
        """The quality a byte budget or a level chose for the variant
        ``name`` (its canonical name), and the score it keeps (None where not
        known); None for a variant without either.

        Told in headers, never worth failing or slowing an answer for: a
        record that cannot be read, or not within `SIDECAR_WAIT`, is not
        told; one not found (a variant made before --default_quality named
        a level, or whose record another host's write-behind has not yet
        stored) is not asked of the store again for `SIDECAR_RETRY`."""
        variant = self.rules.canonical(name)
        if variant is None or not (variant.max_bytes or variant.level):
            return None
        key = image.key(name + QUALITY_SUFFIX)
        now = time.monotonic()
        if self._unchosen.get(key, 0.0) > now:
            return None
        read = Deferred.fromCoroutine(self._storage.get(key))
        if self._clock is not None:
            read.addTimeout(SIDECAR_WAIT, self._clock)
        try:
            stored = await read
        except (StorageFailed, StorageUnavailable, TimeoutError) as e:
            log.warn("{key} could not be read ({error}): not told", key=key, error=e)
            return None
        if stored is None:
            self._unchosen[key] = now + SIDECAR_RETRY
            self._unchosen.move_to_end(key)
            while len(self._unchosen) > REMEMBERED:
                self._unchosen.popitem(last=False)
            return None
        self._unchosen.pop(key, None)
        return _chosen_read(stored.data)

    async def _mark(self, digest: str) -> bytes:
        """A watermark's original (checked at start-up; gone since: 404)."""
        known = self._marks.get(digest)
        if known is None:
            stored = await self._storage.get(self._watermarks[digest].key(ORIGINAL))
            if stored is None:
                raise NotFound(
                    f"the watermark {digest} is no longer stored; upload it again"
                )
            known = self._marks[digest] = stored.data
        return known

    async def _ingest(
        self,
        image: ImageId,
        data: bytes,
        variants: Sequence[Variant],
        faces: bool = False,
        refuse_similar: bool = False,
    ) -> bytes:
        """Store a new original with the first uploader's outputs, info.json last.

        info.json is the mark of a complete upload: an original whose upload
        died half-way is stored again by the next upload of the same bytes.
        """
        if self._host_locks is None:
            return await self._ingest_now(image, data, variants, faces, refuse_similar)
        async with self._host_locks.holding([image.key(INFO)]):
            return await self._ingest_now(image, data, variants, faces, refuse_similar)

    async def _ingest_now(
        self,
        image: ImageId,
        data: bytes,
        variants: Sequence[Variant],
        faces: bool = False,
        refuse_similar: bool = False,
    ) -> bytes:
        existing = await self._storage.get(image.key(INFO))
        if existing is not None:
            return existing.data
        info, outputs = await self._render_many(data, variants, True, None, faces)
        phash = likeness.parse(info.phash or "")
        if refuse_similar and phash is not None:
            near = await self._near(
                image.namespace, phash, SIMILAR_DISTANCE, fresh=True
            )
            if near:
                raise Conflict(
                    f"an image like this one is stored: {near[0]['hash']} "
                    f"({near[0]['distance']} of 64 bits apart); upload it "
                    "without similar=refuse to store it all the same"
                )
        info_json = info_json_of(image.hash, info)
        size = len(data) + len(info_json) + sum(len(o[0]) for o in outputs)
        async with self._held(image.namespace, size):
            await self._storage.put(image.key(ORIGINAL), data, info.content_type)
            await self._put_all(
                image, variants, outputs, qualities=info.chosen_qualities
            )
            if phash is not None:  # before info.json, which marks it done
                await self._similar.add(image.namespace, image.hash, phash)
            await self._storage.put(image.key(INFO), info_json, "application/json")
        self._events.original_stored()
        self._lifecycle.stored(
            image,
            [
                image.key(ORIGINAL),
                image.key(INFO),
                *(image.key(v.name) for v in variants),
            ],
        )
        log.info(
            "stored {namespace}/{hash} ({width}x{height} {content_type})",
            namespace=image.namespace,
            hash=image.hash,
            width=info.width,
            height=info.height,
            content_type=info.content_type,
        )
        return info_json

    async def _ensure(
        self,
        image: ImageId,
        variants: Sequence[Variant],
        original: bytes | None = None,
        rated: bool = False,
    ) -> None:
        """Generate those of ``variants`` the image's folder does not hold
        yet; ``rated``: when some are missing, that is one render of the
        namespace's --namespace_render_rate (one decode makes them all), as a
        GET of a variant not made yet is."""
        if variants:
            present = set(await self._storage.list(image.folder))
            missing = [v for v in variants if v.name not in present]
            if missing and rated and self.rates is not None:
                self.rates.render(image.namespace)
            await self._generate(image, missing, original)

    async def _generate(
        self,
        image: ImageId,
        variants: Sequence[Variant],
        original: bytes | None = None,
        durable: bool = True,
    ) -> dict[str, StoredObject]:
        """Render and store ``variants``, decoding the original once for all.

        A variant some other request is already rendering is waited for.
        """
        by_key = {(image.key(v.name), durable): v for v in variants}

        async def render(
            keys: list[tuple[str, bool]],
        ) -> dict[tuple[str, bool], StoredObject]:
            todo = [by_key[k] for k in keys]
            stored = await self._render(image, todo, original, durable)
            return {(key, durable): value for key, value in stored.items()}

        waiting = self._renders.run(list(by_key), render)
        return {by_key[k].name: await d for k, d in waiting.items()}

    async def _render(
        self,
        image: ImageId,
        variants: list[Variant],
        original: bytes | None,
        durable: bool,
    ) -> dict[str, StoredObject]:
        if self._host_locks is None:
            return await self._render_now(image, variants, original, durable)
        # Another worker of this host may be making the same variants: one
        # renders and stores them before letting go (the storage of a host's
        # workers writes through: see assembly.make_images), the others find
        # them stored. Stored, not flushed: a variant can be made again.
        keys = [image.key(v.name) for v in variants]
        async with self._host_locks.holding(keys):
            # Looked for again under the lock, waited for or not: another
            # worker may have stored it between our miss and a free lock.
            done: dict[str, StoredObject] = {}
            for key in keys:
                stored = await self._storage.get(key)
                if stored is not None:
                    done[key] = stored
            todo = [v for k, v in zip(keys, variants, strict=True) if k not in done]
            if todo:
                done.update(await self._render_now(image, todo, original, durable))
            return done

    async def _render_now(
        self,
        image: ImageId,
        variants: list[Variant],
        original: bytes | None,
        durable: bool,
    ) -> dict[str, StoredObject]:
        if original is None:
            stored = await self._storage.get(image.key(ORIGINAL))
            if stored is None:
                raise NotFound("image not found")
            original = stored.data
        known = None
        if any(v.wants_faces for v in variants):
            info_json = await self._storage.get(image.key(INFO))
            if info_json is not None:
                known = parse_faces(_fields(info_json.data).get("faces"))
        info, outputs = await self._render_many(original, variants, False, known)
        # Durable: asked for by a writer (an upload's outputs, a process).
        size = sum(len(o[0]) for o in outputs)
        async with self._held(image.namespace, size, asked=durable):
            made = await self._put_all(
                image, variants, outputs, durable, info.chosen_qualities
            )
        if info.faces is not None:
            await self._record_faces(image, info.faces)
        self._lifecycle.generated(image, list(made))
        return made

    async def _with_faces(
        self, image: ImageId, info_json: bytes, original: bytes | None = None
    ) -> bytes:
        """``info_json`` with the faces in the picture: found (and kept) if
        it has none yet."""
        if parse_faces(_fields(info_json).get("faces")) is not None:
            return info_json
        if original is None:
            stored = await self._storage.get(image.key(ORIGINAL))
            if stored is None:
                raise NotFound("image not found")
            original = stored.data
        info, _ = await self._render_many(original, (), with_faces=True)
        return await self._record_faces(image, info.faces or ()) or info_json

    async def _record_faces(
        self, image: ImageId, faces: Sequence[geometry.Box]
    ) -> bytes | None:
        """Keep ``faces`` in the image's info.json (called inside its
        folder's gate); the new info.json, or None where there is none (an
        upload that died half-way: the next one writes it)."""
        stored = await self._storage.get(image.key(INFO))
        if stored is None:
            return None
        fields = _fields(stored.data)
        if "hash" not in fields:  # damaged: made again on its next read
            return None
        fields["faces"] = [list(box) for box in faces]
        data = json.dumps(fields).encode()
        await self._storage.put(image.key(INFO), data, "application/json")
        return data

    async def _put_all(
        self,
        image: ImageId,
        variants: Sequence[Variant],
        outputs: Sequence[tuple[bytes, str]],
        durable: bool = True,
        qualities: Mapping[str, tuple[int, float | None]] | None = None,
    ) -> dict[str, StoredObject]:
        async def put(
            key: str, data: bytes, content_type: str, etag: str | None = None
        ) -> StoredObject:
            try:
                return await self._storage.put(
                    key, data, content_type, durable=durable, etag=etag
                )
            except Stopping:
                if durable:
                    raise
                # A render that outlived the shutdown's budget, where variants
                # are written through (a host's workers): answered, as it is
                # where they are written behind, and said.
                log.error(
                    "{key} came after the shutdown's writes, and is not "
                    "written; it will be generated again when requested",
                    key=key,
                )
                return StoredObject(data, content_type, time.time(), etag or "")

        # A chosen quality first: whoever finds a variant here finds it too
        # (another host may find the variant first while both are written
        # behind: it answers without the record until it arrives).
        for name, chosen in (qualities or {}).items():
            key = image.key(name + QUALITY_SUFFIX)
            await put(key, _chosen_text(*chosen), "text/plain")
            self._unchosen.pop(key, None)
        keys = [image.key(v.name) for v in variants]
        puts = [
            Deferred.fromCoroutine(put(k, data, v.content_type, etag))
            for k, v, (data, etag) in zip(keys, variants, outputs, strict=True)
        ]
        try:
            stored = await gatherResults(puts, consumeErrors=True)
        except FirstError as e:
            e.subFailure.raiseException()
        return dict(zip(keys, stored, strict=True))

    async def _get_file(self, image: ImageId, name: str) -> StoredObject:
        if name.casefold() == ORIGINAL and not self._serve_originals:
            # The one way a client reaches an original's bytes (a variant,
            # full_size included, is decoded and encoded without metadata);
            # any case, since on a case-insensitive disk that is the file.
            raise NotFound(
                "originals are not served here (--serve_originals off): ask "
                "for a variant, e.g. full_size.jpg, which carries no metadata"
            )
        if name == ORIGINAL:
            original = await self._storage.get(image.key(ORIGINAL))
            info = await self._storage.get(image.key(INFO))
            if original is None or info is None:
                raise NotFound("image not found")
            if not _whole(info.data, image.hash):  # damaged: made again
                info = await self._in_time(self._completed_info(image, info))
            return replace(original, content_type=_fields(info.data)["content_type"])
        if name != INFO and not is_file_name(name):
            raise NotFound("file not found")
        stored = await self._storage.get(image.key(name))
        if stored is None:
            raise NotFound("image not found" if name == INFO else "file not found")
        if name == INFO and not _whole(stored.data, image.hash):
            return await self._in_time(self._completed_info(image, stored))
        return stored

    async def _completed_info(
        self, image: ImageId, stored: StoredObject
    ) -> StoredObject:
        """info.json of an image stored before some of its fields existed
        (frames, placeholders, phash), with them, or one damaged or edited
        by hand, mended: made from the original once, and written back.
        What the original says replaces what it held; faces it found stay."""
        original = await self._storage.get(image.key(ORIGINAL))
        if original is None:
            raise NotFound("image not found")
        info, _ = await self._render_many(original.data, (), True)
        # In the order the server writes (its own fields first), then the
        # faces and whatever else it held.
        held = _fields(stored.data)
        fields = json.loads(info_json_of(image.hash, info))
        fields.update((k, v) for k, v in held.items() if k not in fields)
        if parse_faces(fields.get("faces")) is None:
            fields.pop("faces", None)
        data = json.dumps(fields).encode()
        async with self._gate.storing(image.folder):
            if not await self._storage.exists(image.key(ORIGINAL)):
                raise NotFound("image not found")
            phash = likeness.parse(info.phash or "")
            if phash is not None and _fields(stored.data).get("phash") != info.phash:
                await self._similar.add(image.namespace, image.hash, phash)
            return await self._storage.put(image.key(INFO), data, "application/json")

    async def similar(
        self, namespace: str, to: str | None, distance: str | None
    ) -> dict[str, Any]:
        """The images of ``namespace`` that look like ``to`` (a perceptual
        hash, or the md5 of one of its images): at most ``distance`` bits
        apart, the nearest first, at most `MOST_SIMILAR`."""
        check_namespace(namespace)
        if to is None:
            raise InvalidRequest(
                "give ?to= a perceptual hash (16 hex digits, as info.json's "
                "phash) or the md5 of an image of the namespace"
            )
        most = SIMILAR_DISTANCE
        if distance is not None:
            if not ascii_digits(distance, 2) or int(distance) > MOST_SIMILAR_DISTANCE:
                raise InvalidRequest(
                    f"distance is a number of bits from 0 to {MOST_SIMILAR_DISTANCE} "
                    f"(default {SIMILAR_DISTANCE}), not {distance[:20]!r}"
                )
            most = int(distance)
        phash, excluding = likeness.parse(to), None
        if phash is None:
            if _MD5.fullmatch(to) is None:
                raise InvalidRequest(
                    f"?to= is a perceptual hash (16 hex digits) or an image's "
                    f"md5 (32), not {to[:40]!r}"
                )
            info = _fields((await self.get(ImageId(namespace, to), INFO)).data)
            phash, excluding = likeness.parse(str(info.get("phash", ""))), to
            if phash is None:
                raise NotFound(
                    f"the info.json of {to} holds no phash of 16 lower-case hex "
                    "digits: remove its phash field to have it made again"
                )
        found = await self._near(namespace, phash, most, excluding)
        return {"phash": f"{phash:016x}", "distance": most, "similar": found}

    async def _near(
        self,
        namespace: str,
        phash: int,
        distance: int,
        excluding: str | None = None,
        fresh: bool = False,
    ) -> list[dict[str, Any]]:
        """Images like ``phash`` that are still stored (the index may not
        have read a purge yet), the nearest first; ``fresh``: as the store
        holds them now (an upload deciding), not up to 2 s ago."""
        found = []
        for digest, bits in await self._similar.near(
            namespace, phash, distance, MOST_SIMILAR + 1, fresh
        ):
            if digest != excluding and await self._storage.exists(
                ImageId(namespace, digest).key(INFO)
            ):
                found.append({"hash": digest, "distance": bits})
                if len(found) == MOST_SIMILAR:
                    break
        return found

    async def _forget_likeness(self, image: ImageId) -> None:
        """Tell the index an image is gone; where the store refuses, say so
        and go on (what it finds is checked against the store)."""
        try:
            await self._similar.remove(image.namespace, image.hash)
        except (StorageUnavailable, StorageFailed, StorageFull) as e:
            log.warn(
                "the purge of {namespace}/{hash} is not in the similar index: {error}",
                namespace=image.namespace,
                hash=image.hash,
                error=str(e),
            )


def _rendered(
    original: bytes,
    variants: Sequence[Variant],
    limits: renderer.Limits,
    with_placeholders: bool,
    marks: Mapping[str, bytes],
    known_faces: Sequence[geometry.Box] | None,
    with_faces: bool,
) -> tuple[renderer.ImageInfo, list[tuple[bytes, str]], float]:
    start = time.perf_counter()
    info, outputs = renderer.render_many(
        original,
        variants,
        limits,
        with_placeholders,
        marks,
        tracing.span,
        known_faces,
        with_faces,
    )
    seconds = time.perf_counter() - start
    return info, [(data, etag_of(data)) for data in outputs], seconds


def _fields(info_json: bytes) -> dict[str, Any]:
    """The fields of an info.json; none of one that is not a JSON object
    (edited by hand, or damaged)."""
    try:
        fields = json.loads(info_json)
    except (ValueError, RecursionError):
        return {}
    return fields if isinstance(fields, dict) else {}


def _whole(info_json: bytes, digest: str) -> bool:
    """Whether an info.json has every field as the server writes it (not
    one older than some of them, damaged, or edited out of shape)."""
    fields = _fields(info_json)
    counts = all(
        type(fields.get(name)) is int and fields[name] >= 1
        for name in ("width", "height", "frames")
    )
    content_type = fields.get("content_type")
    return (
        fields.get("hash") == digest
        and counts
        and content_type in formats.INPUT_CONTENT_TYPES
        and all(isinstance(fields.get(name), str) for name in _LATER_FIELDS)
        and likeness.parse(str(fields.get("phash"))) is not None
        and ("faces" not in fields or parse_faces(fields["faces"]) is not None)
    )


def _identified(data: bytes) -> tuple[bytes, str]:
    """The image's bytes (`containers.image_bytes`) and their md5."""
    data = containers.image_bytes(data)
    return data, hashlib.md5(data, usedforsecurity=False).hexdigest()


def _read(body: BinaryIO) -> bytes:
    body.seek(0)
    return body.read()


def info_json_of(digest: str, info: renderer.ImageInfo) -> bytes:
    """The bytes of an original's info.json: the Go image-server's four fields,
    then a document's (pages; a video's frame rate and codec), then the
    placeholders."""
    document = info.document
    drawn: dict[str, Any] = {}
    if document is not None and document.pages is not None:
        drawn["pages"] = document.pages
    if document is not None and document.codec is not None:
        drawn["frame_rate"] = document.frame_rate
        drawn["codec"] = document.codec
    return json.dumps(
        {
            "hash": digest,
            "width": info.width,
            "height": info.height,
            "content_type": info.content_type,
            "frames": info.frames,
            **({} if info.duration_ms is None else {"duration_ms": info.duration_ms}),
            **drawn,
            **(info.placeholders or {}),
            **({} if info.phash is None else {"phash": info.phash}),
            **({} if info.faces is None else {"faces": [list(b) for b in info.faces]}),
        }
    ).encode()


#: What is kept beside a variant whose quality was chosen: the quality,
#: then the score it keeps where known (``62 78.41``).
_CHOSEN = re.compile(rb"(?P<q>[1-9][0-9]{0,2})(?: (?P<score>-?[0-9]{1,3}\.[0-9]{2}))?")


def _chosen_text(quality: int, score: float | None) -> bytes:
    return (f"{quality}" if score is None else f"{quality} {score:.2f}").encode()


def _chosen_read(data: bytes) -> tuple[int, float | None] | None:
    """`_chosen_text`'s quality and score; None for anything else (a file
    damaged, or edited)."""
    m = _CHOSEN.fullmatch(data)
    if m is None or int(m["q"]) > 100:
        return None
    return int(m["q"]), None if m["score"] is None else float(m["score"])
