"""The URL grammar: namespaces, hash paths, variant names and stored file names.

Everything a client can put in a path is checked here, so that no other layer
ever builds a storage key from text that was not validated.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from imageserver.errors import Forbidden, InvalidRequest, NotFound

#: Extension -> Content-Type for every output format the server can encode.
OUTPUT_FORMATS: dict[str, str] = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "avif": "image/avif",
}

ORIGINAL = "original"
INFO = "info.json"
#: Names under an image folder that clients may not overwrite with a file.
RESERVED_NAMES = frozenset({ORIGINAL, INFO, "process"})
MAX_OUTPUTS = 32

NAMESPACE_PATTERN = r"[a-z0-9_-]{1,128}"
#: An image folder in a URL: ``{ns}/{h[0:3]}/{h[3:6]}/{h[6:9]}/{h[9:32]}``.
FOLDER_PATTERN = (
    NAMESPACE_PATTERN + r"/[0-9a-f]{3}/[0-9a-f]{3}/[0-9a-f]{3}/[0-9a-f]{23}"
)
_NAMESPACE = re.compile(NAMESPACE_PATTERN + r"\Z")
_FOLDER = re.compile(FOLDER_PATTERN + r"\Z")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_VARIANT = re.compile(
    r"(?:(?P<full>full_size)|w(?P<w>\d+)|x(?P<s>\d+)|(?P<fw>\d+)x(?P<fh>\d+))"
    r"(?:-q(?P<q>\d+))?\.(?P<ext>[A-Za-z0-9]{1,10})\Z"
)


def check_namespace(namespace: str) -> str:
    if not _NAMESPACE.match(namespace):
        raise NotFound(f"unknown namespace {namespace[:128]!r}")
    return namespace


@dataclass(frozen=True, slots=True)
class ImageId:
    """One original: a namespace and the md5 of the original's bytes."""

    namespace: str
    hash: str

    @classmethod
    def from_folder(cls, folder: str) -> ImageId:
        """Rebuild the id from its folder, ``p/6e0/072/682/e66287b662827da75b244a3``."""
        if not _FOLDER.match(folder):
            raise NotFound("unknown image path")
        namespace, *parts = folder.split("/")
        return cls(namespace, "".join(parts))

    @property
    def folder(self) -> str:
        """The storage prefix of everything kept for this image."""
        h = self.hash
        return f"{self.namespace}/{h[0:3]}/{h[3:6]}/{h[6:9]}/{h[9:32]}"

    def key(self, name: str) -> str:
        """The storage key of ``name`` in this image's folder."""
        return f"{self.folder}/{name}"


def original_digest(key: str) -> str | None:
    """The md5 an original's storage key spells, or ``None`` for other keys."""
    folder, _, name = key.rpartition("/")
    if name != ORIGINAL or not _FOLDER.match(folder):
        return None
    return "".join(folder.split("/")[1:])


class Fit(enum.Enum):
    WIDTH = "width"  # w200: given width, height keeps the ratio
    FILL = "fill"  # x200, 300x200: cover the box, then centre crop
    FULL = "full"  # full_size: the original dimensions


@dataclass(frozen=True, slots=True)
class Variant:
    """A parsed variant name; ``name`` is also its storage name."""

    name: str
    fit: Fit
    width: int
    height: int
    quality: int
    format: str

    @property
    def content_type(self) -> str:
        return OUTPUT_FORMATS[self.format]


def _number(text: str, what: str) -> int:
    if len(text) > 6 or (len(text) > 1 and text[0] == "0"):
        raise InvalidRequest(f"{what} {text!r} is not a plain positive number")
    value = int(text)
    if value < 1:
        raise InvalidRequest(f"{what} must be at least 1")
    return value


@dataclass(frozen=True, slots=True)
class VariantRules:
    """What variant names this server accepts, from its configuration."""

    extensions: frozenset[str]
    default_quality: int
    maximum_width: int
    #: When set, the only variant names served or generated (--presets_only).
    presets: frozenset[str] | None = None

    def parse(self, name: str) -> Variant | None:
        """Parse a variant name; ``None`` when ``name`` is not variant-shaped.

        Raises `InvalidRequest` for a variant-shaped name with bad numbers and
        `NotFound` for an extension the server does not serve.
        """
        m = _VARIANT.match(name)
        if m is None:
            return None
        if self.presets is not None and name not in self.presets:
            raise Forbidden(f"{name!r} is not one of this server's presets")
        fmt = m["ext"]
        if fmt not in self.extensions:
            raise NotFound(f"extension {fmt!r} is not served")
        quality = self.default_quality
        if m["q"] is not None:
            quality = _number(m["q"], "quality")
            if quality > 100:
                raise InvalidRequest("quality must be between 1 and 100")
        if m["full"]:
            return Variant(name, Fit.FULL, 0, 0, quality, fmt)
        if m["w"]:
            width, height, fit = _number(m["w"], "width"), 0, Fit.WIDTH
        elif m["s"]:
            width = height = _number(m["s"], "size")
            fit = Fit.FILL
        else:
            width = _number(m["fw"], "width")
            height = _number(m["fh"], "height")
            fit = Fit.FILL
        if max(width, height) > self.maximum_width:
            raise InvalidRequest(
                f"{name!r} is larger than the maximum of {self.maximum_width} pixels"
            )
        return Variant(name, fit, width, height, quality, fmt)

    def parse_outputs(self, value: str | None) -> tuple[Variant, ...]:
        """Parse a comma-separated ``outputs`` list; every item must be a variant."""
        names = dict.fromkeys(n.strip() for n in (value or "").split(","))
        names.pop("", None)
        if len(names) > MAX_OUTPUTS:
            raise InvalidRequest(f"at most {MAX_OUTPUTS} outputs per request")
        variants = []
        for name in names:
            try:
                variant = self.parse(name)
            except (NotFound, InvalidRequest, Forbidden) as e:
                raise InvalidRequest(f"output {name!r}: {e}") from None
            if variant is None:
                raise InvalidRequest(f"output {name!r} is not a variant name")
            variants.append(variant)
        return tuple(variants)


def variant_format(name: str) -> str | None:
    """The format a variant-shaped name asks for (``other`` when it is not one
    the server knows), or None for a name that is not variant-shaped."""
    m = _VARIANT.match(name)
    if m is None:
        return None
    return m["ext"] if m["ext"] in OUTPUT_FORMATS else "other"


def is_generated(key: str) -> bool:
    """Whether the object at ``key`` is the server's own, never rewritten once stored.

    Variants, originals and info.json live at content-addressed paths; files
    clients store by name may be replaced.
    """
    name = key.rpartition("/")[2]
    return name in (ORIGINAL, INFO) or _VARIANT.match(name) is not None


def is_file_name(name: str) -> bool:
    """Whether ``name`` may name a client-supplied file kept beside an image."""
    return (
        _FILE_NAME.match(name) is not None
        and ".." not in name
        and name not in RESERVED_NAMES
        and _VARIANT.match(name) is None
    )


def check_file_name(name: str) -> str:
    """Validate the name of a client-supplied file, saying what is wrong."""
    if not _FILE_NAME.match(name) or ".." in name:
        raise InvalidRequest(
            "file names are 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name in RESERVED_NAMES or _VARIANT.match(name):
        raise InvalidRequest(
            f"the name {name!r} is reserved for the server's own files"
        )
    return name
