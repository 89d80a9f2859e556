"""thumbor's URLs, answered with the variants of the origins' images.

A thumbor URL names an image of an origin (thumbor's loader) and what to do
with it: the image is fetched and stored once as an origin path is, the URL
becomes one canonical variant name (`imageserver.thumbor.plan`), and that
variant is rendered once, stored, and served to the thumbor URL and to the
native URL alike (docs/thumbor.md).
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from imageserver.errors import InvalidRequest, NotFound
from imageserver.images import Images, Resolved
from imageserver.naming import INFO, ImageId, VariantRules
from imageserver.origin_paths import OriginPaths
from imageserver.storage import StoredObject
from imageserver.thumbor import plan as plans
from imageserver.thumbor import urls


@dataclass(frozen=True, slots=True)
class ThumborAnswer:
    """A variant to serve (``image``, ``resolved``, ``stored``), or thumbor's
    /meta/ JSON (``meta``)."""

    image: ImageId
    resolved: Resolved | None = None
    stored: StoredObject | None = None
    meta: dict[str, Any] | None = None
    vary_accept: bool = False


#: thumbor URLs whose meaning is remembered (the most lately used): a URL
#: asked again is served without parsing, planning or reading the image's
#: info.json again, while its origin path still stands for the same image.
REMEMBERED_URLS = 10_000


@dataclass(frozen=True, slots=True)
class _Known:
    namespace: str
    path: str
    image: ImageId
    resolved: Resolved
    vary_accept: bool


class ThumborPaths:
    """thumbor's URLs on the origins ``origin_paths`` serves."""

    def __init__(
        self,
        images: Images,
        origin_paths: OriginPaths,
        rules: VariantRules,
        *,
        origins: Mapping[str, str],
        keys: tuple[bytes, ...],
        allow_unsafe: bool,
        loader: str = "",
        settings: plans.Settings = plans.Settings(),  # noqa: B008 (frozen)
    ) -> None:
        self._images = images
        self._paths = origin_paths
        self._rules = rules
        self._keys = keys
        self._allow_unsafe = allow_unsafe
        self._loader = loader
        self._settings = settings
        self._known: OrderedDict[tuple[str, bool, bool], _Known] = OrderedDict()
        #: The web origins' URLs without their scheme (thumbor's HTTP loader
        #: reads ``host/path`` as ``http://host/path``).
        self._web = {
            namespace: _without_scheme(url)
            for namespace, url in origins.items()
            if urlsplit(url).scheme in ("http", "https")
        }

    async def answer(self, path: str, accept: str | None) -> ThumborAnswer:
        """The answer to the thumbor URL whose path (as it arrived, without
        the query) is ``path``."""
        key = self._key(path, accept or "")
        known = self._known.get(key)
        if known is not None:
            self._known.move_to_end(key)
            image = await self._paths.image(known.namespace, known.path)
            if image == known.image:
                with contextlib.suppress(NotFound):  # purged: found again below
                    stored = await self._images.get(image, known.resolved.name)
                    return ThumborAnswer(
                        image, known.resolved, stored, vary_accept=known.vary_accept
                    )
            self._known.pop(key, None)  # another request may have dropped it
        url = urls.parse(path)
        urls.check_signature(url, self._keys, self._allow_unsafe)
        namespace, object_path = self._locate(url.image)
        image = await self._paths.image(namespace, object_path)
        try:
            info = await self._images.get(image, INFO)
        except NotFound:
            if await self._images.stored(image):
                raise
            # Purged by its hash since the path was recorded: fetched again.
            image = await self._paths.image(namespace, object_path, gone=image)
            info = await self._images.get(image, INFO)
        fields = json.loads(info.data)
        source = plans.Source(
            fields["width"],
            fields["height"],
            fields["content_type"],
            fields.get("frames", 1),
        )
        planned = plans.plan(url, source, self._settings, accept or "")
        if url.meta:
            return ThumborAnswer(image, meta=plans.meta(url, source, planned))
        largest = self._rules.maximum_width
        if not planned.name.startswith("full_size") and (
            max(planned.width, planned.height) > largest
        ):
            raise InvalidRequest(
                f"this thumbor URL makes a {planned.width}x{planned.height} "
                f"picture, larger than --maximum_width ({largest}) allows: raise "
                "--maximum_width to serve it (thumbor's MAX_WIDTH is unlimited)"
            )
        variant = self._rules.canonical(planned.name)
        assert variant is not None  # a plan is always variant-shaped
        resolved = await self._images.resolve(image, variant.name, accept)
        stored = await self._images.get(image, resolved.name)
        self._known[key] = _Known(
            namespace, object_path, image, resolved, planned.vary_accept
        )
        while len(self._known) > REMEMBERED_URLS:
            self._known.popitem(last=False)
        return ThumborAnswer(image, resolved, stored, vary_accept=planned.vary_accept)

    def _key(self, path: str, accept: str) -> tuple[str, bool, bool]:
        """What an answer depends on: the URL, and what Accept says of the
        formats the settings may choose."""
        return (
            path,
            self._settings.auto_webp and "image/webp" in accept,
            self._settings.auto_avif and "image/avif" in accept,
        )

    def _locate(self, image: str) -> tuple[str, str]:
        """The origin namespace and the path in it of a thumbor URL's image."""
        if self._loader:
            web = self._web.get(self._loader)
            path = image
            if web is not None and _without_scheme(image).startswith(web):
                path = _without_scheme(image)[len(web) :]
            return self._loader, path.lstrip("/")
        bare = _without_scheme(image)
        for namespace, web in self._web.items():
            if bare.startswith(web) and len(bare) > len(web):
                return namespace, bare[len(web) :]
        raise InvalidRequest(
            "the image's URL is under none of this server's web origins "
            "(thumbor's ALLOWED_SOURCES): give an https://host/path/ of an "
            "--origin"
        )


def _without_scheme(url: str) -> str:
    for scheme in ("https://", "http://"):
        if url.startswith(scheme):
            return url[len(scheme) :]
    return url
