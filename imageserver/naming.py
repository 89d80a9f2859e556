"""The URL grammar: namespaces, hash paths, variant names and stored file names.

Everything a client can put in a path is checked here, so that no other layer
ever builds a storage key from text that was not validated.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from imageserver import formats
from imageserver.errors import (
    Forbidden,
    ImageServerError,
    InvalidRequest,
    NotCanonical,
    NotFound,
)

#: Extension -> Content-Type for every output format the server can encode.
OUTPUT_FORMATS: dict[str, str] = formats.content_types()

#: The extension that asks for the best format the client accepts.
AUTO = "auto"
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
#: Anything shaped like a variant name: a size, options, a density, an
#: extension. Such names are the server's: never a client file's.
_VARIANT = re.compile(
    r"(?P<size>full_size|w\d+|h\d+|x\d+|\d+x\d+)"
    r"(?P<options>(?:-[A-Za-z0-9_]+)*)"
    r"(?:@(?P<dpr>\d+)x)?\.(?P<ext>[A-Za-z0-9]{1,10})\Z"
)
_SIZE = re.compile(
    r"(?:(?P<full>full_size)|w(?P<w>\d+)|h(?P<h>\d+)|x(?P<s>\d+)"
    r"|(?P<bw>\d+)x(?P<bh>\d+))\Z"
)
_PAD = re.compile(r"pad(?P<hex>[0-9A-Fa-f]{6}(?:[0-9A-Fa-f]{2})?)?\Z")
_FOCUS = re.compile(r"fp(?P<x>\d+)_(?P<y>\d+)\Z")
_BLUR = re.compile(r"blur(?P<sigma>\d+)\Z")
_QUALITY = re.compile(r"q(?P<q>\d+)\Z")
#: Gravity options and the corner or edge they keep, as fractions of the
#: free space left of and above the crop.
GRAVITIES: dict[str, tuple[float, float]] = {
    "gn": (0.5, 0.0),
    "gne": (1.0, 0.0),
    "ge": (1.0, 0.5),
    "gse": (1.0, 1.0),
    "gs": (0.5, 1.0),
    "gsw": (0.0, 1.0),
    "gw": (0.0, 0.5),
    "gnw": (0.0, 0.0),
}
ROTATIONS = {"r90": 90, "r180": 180, "r270": 270}


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
    HEIGHT = "height"  # h200: given height, width keeps the ratio
    FILL = "fill"  # x200, 300x200: cover the box, then crop
    FIT = "fit"  # x200-fit: inside the box, no crop
    PAD = "pad"  # x200-pad: inside the box, on a canvas of the box
    FULL = "full"  # full_size: the original dimensions


#: What each option needs of the size it goes with.
_BOX_FITS = frozenset({Fit.FILL, Fit.FIT, Fit.PAD})


@dataclass(frozen=True, slots=True)
class Variant:
    """A parsed variant name: one typed description of an output.

    ``name`` is the canonical spelling, also its storage name. Pixel numbers
    (``width``, ``height``) are already multiplied by ``dpr``.
    """

    name: str
    fit: Fit
    width: int
    height: int
    #: 1-100, or 0 for the format's own default (formats.OutputFormat.quality).
    quality: int
    format: str
    dpr: int = 1
    #: The pad colour as RGBA, or None for the format's default.
    pad: tuple[int, int, int, int] | None = None
    noup: bool = False
    #: A gravity option (``gn`` ...), or None.
    gravity: str | None = None
    #: A focal point, per cent of the width and of the height, or None.
    focus: tuple[int, int] | None = None
    smart: bool = False
    trim: bool = False
    rotate: int = 0
    flip: bool = False
    flop: bool = False
    blur: int = 0
    sharp: bool = False
    gray: bool = False

    @property
    def content_type(self) -> str:
        return OUTPUT_FORMATS[self.format]

    def pad_colour(self, has_alpha: bool) -> tuple[int, int, int, int]:
        """The canvas colour: the one asked for, else transparent where the
        output keeps alpha and white where it does not."""
        if self.pad is not None:
            return self.pad
        return (0, 0, 0, 0) if has_alpha else (255, 255, 255, 255)

    def as_format(self, fmt: str) -> Variant:
        """This variant in another format (``.auto`` made concrete)."""
        stem = self.name.rpartition(".")[0]
        return replace(self, name=f"{stem}.{fmt}", format=fmt)


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
    #: The quality of names without ``-qN``; 0: each format's own.
    default_quality: int
    maximum_width: int
    #: The formats ``.auto`` prefers, best first (--auto_formats).
    auto_formats: tuple[str, ...] = ("avif", "webp", "jxl")

    def negotiated(
        self, variant: Variant, accepted: frozenset[str], has_alpha: bool
    ) -> Variant:
        """The concrete variant ``.auto`` stands for, for a client that names
        ``accepted`` media types: the first of `auto_formats` it takes, else
        jpg (png for an image with alpha), among the served extensions."""
        for fmt in self.auto_formats:
            if fmt in self.extensions and OUTPUT_FORMATS[fmt] in accepted:
                return variant.as_format(fmt)
        fallbacks = ("png", "webp", "gif") if has_alpha else ("jpg", "jpeg", "png")
        for fmt in (*fallbacks, *self.extensions):
            if fmt in self.extensions:
                return variant.as_format(fmt)
        raise NotFound("no served extension for .auto")  # extensions is never empty

    def parse(self, name: str) -> Variant | None:
        """Parse a variant name; ``None`` when ``name`` is not variant-shaped.

        Raises `InvalidRequest` for a variant-shaped name that is wrong (bad
        numbers, unknown or clashing options, each named), `NotFound` for an
        extension the server does not serve, and `NotCanonical` for a valid
        name spelled otherwise than its one canonical spelling.
        """
        m = _VARIANT.match(name)
        if m is None:
            return None
        fmt = m["ext"]
        if fmt not in self.extensions and fmt != AUTO:
            raise NotFound(f"extension {fmt!r} is not served")
        variant, canonical = _parse(name, m, self.default_quality)
        if max(variant.width, variant.height) > self.maximum_width:
            raise InvalidRequest(
                f"{name!r} is larger than the maximum of {self.maximum_width} pixels"
            )
        if canonical != name:
            raise NotCanonical(name, canonical)
        return variant

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
            except NotCanonical as e:
                raise InvalidRequest(
                    f"output {name!r} is spelled {e.canonical!r}"
                ) from None
            except (NotFound, InvalidRequest, Forbidden) as e:
                raise InvalidRequest(f"output {name!r}: {e}") from None
            if variant is None:
                raise InvalidRequest(f"output {name!r} is not a variant name")
            if variant.format == AUTO:
                raise InvalidRequest(
                    f"output {name!r}: .auto is chosen from a request's Accept "
                    "header; name the format to make ahead"
                )
            variants.append(variant)
        return tuple(variants)


def variant_format(name: str) -> str | None:
    """The format a variant-shaped name asks for (``other`` when it is not one
    the server knows), or None for a name that is not variant-shaped."""
    m = _VARIANT.match(name)
    if m is None:
        return None
    return m["ext"] if m["ext"] in OUTPUT_FORMATS else "other"


def _parse(name: str, m: re.Match[str], default_quality: int) -> tuple[Variant, str]:
    """The variant a variant-shaped name describes, and its canonical name."""
    size = _SIZE.match(m["size"])
    assert size is not None
    if size["full"]:
        fit, width, height = Fit.FULL, 0, 0
    elif size["w"]:
        fit, width, height = Fit.WIDTH, _number(size["w"], "width"), 0
    elif size["h"]:
        fit, width, height = Fit.HEIGHT, 0, _number(size["h"], "height")
    elif size["s"]:
        fit = Fit.FILL
        width = height = _number(size["s"], "size")
    else:
        fit = Fit.FILL
        width, height = _number(size["bw"], "width"), _number(size["bh"], "height")
    dpr = 1
    if m["dpr"] is not None:
        dpr = _number(m["dpr"], "density")
        if dpr > 4:
            raise InvalidRequest(f"{name!r}: the density must be 1x to 4x")
    fmt = m["ext"]
    fields: dict[str, Any] = {}
    #: Canonical tokens by their row in the option table.
    tokens: dict[int, str] = {}
    #: The groups of options already given (each may be given once).
    seen: set[str] = set()
    quality_token = ""
    quality = default_quality

    def once(group: str) -> None:
        if group in seen:
            raise InvalidRequest(f"{name!r}: {group} is given twice")
        seen.add(group)

    for token in m["options"].split("-")[1:]:
        if (q := _QUALITY.match(token)) is not None:
            once("the quality")
            quality = _number(q["q"], "quality")
            if quality > 100:
                raise InvalidRequest("quality must be between 1 and 100")
            quality_token = f"-q{quality}"
        elif token == "fit" or (pad := _PAD.match(token)) is not None:
            if "fit or pad" in seen:
                raise InvalidRequest(f"{name!r}: fit and pad cannot be used together")
            once("fit or pad")
            if fit not in _BOX_FITS:
                raise InvalidRequest(
                    f"{name!r}: {_label(token)} applies only to xN and WxH sizes"
                )
            if token == "fit":
                fit, tokens[0] = Fit.FIT, "fit"
            else:
                assert pad is not None
                fit = Fit.PAD
                colour: tuple[int, int, int, int] | None = _colour(pad["hex"])
                if pad["hex"] is None or colour == _default_pad(fmt):
                    colour = None
                fields["pad"] = colour
                tokens[0] = "pad" + ("" if colour is None else _hex(colour))
        elif token == "noup":
            once("noup")
            fields["noup"], tokens[1] = True, token
        elif token in GRAVITIES or token == "smart" or _FOCUS.match(token):
            if "a gravity, fp or smart" in seen:
                raise InvalidRequest(
                    f"{name!r}: only one of a gravity, fp and smart may be given"
                )
            once("a gravity, fp or smart")
            tokens[2] = token
            if token in GRAVITIES:
                fields["gravity"] = token
            elif token == "smart":
                fields["smart"] = True
            else:
                focus = _FOCUS.match(token)
                assert focus is not None
                x, y = _percent(focus["x"], name), _percent(focus["y"], name)
                fields["focus"] = (x, y)
                tokens[2] = f"fp{x}_{y}"
        elif token == "trim":
            once("trim")
            fields["trim"], tokens[3] = True, token
        elif token in ROTATIONS:
            once("a rotation")
            fields["rotate"], tokens[4] = ROTATIONS[token], token
        elif token in ("flip", "flop"):
            once(token)
            fields[token], tokens[5 if token == "flip" else 6] = True, token
        elif (blur := _BLUR.match(token)) is not None:
            once("blur")
            sigma = _number(blur["sigma"], "blur")
            if sigma > 100:
                raise InvalidRequest(f"{name!r}: blur must be between 1 and 100")
            fields["blur"], tokens[7] = sigma, f"blur{sigma}"
        elif token in ("sharp", "gray"):
            once(token)
            fields[token], tokens[8 if token == "sharp" else 9] = True, token
        else:
            raise InvalidRequest(f"{name!r}: unknown option {token!r}")
    if 2 in tokens and fit is not Fit.FILL:
        raise InvalidRequest(
            f"{name!r}: {tokens[2]} applies only to cover crops (xN or WxH without "
            "fit or pad)"
        )
    if fields.get("focus") == (50, 50):  # the centre: the default, unspelled
        del fields["focus"], tokens[2]
    canonical = (
        m["size"]
        + "".join(f"-{tokens[slot]}" for slot in sorted(tokens))
        + quality_token
        + (f"@{dpr}x" if dpr > 1 else "")
        + f".{fmt}"
    )
    variant = Variant(
        canonical,
        fit,
        width * dpr,
        height * dpr,
        quality,
        fmt,
        dpr=dpr,
        **fields,
    )
    return variant, canonical


def _default_pad(fmt: str) -> tuple[int, int, int, int] | None:
    """The pad colour a format gets unasked (``auto`` has none of its own)."""
    if fmt == "auto":
        return None
    return (0, 0, 0, 0) if formats.has_alpha(fmt) else (255, 255, 255, 255)


def _label(token: str) -> str:
    return "pad" if token.startswith("pad") else token


def _colour(text: str | None) -> tuple[int, int, int, int]:
    if text is None:
        return (0, 0, 0, 0)  # unused: a bare pad is the default colour
    value = bytes.fromhex(text)
    return (value[0], value[1], value[2], value[3] if len(value) == 4 else 255)


def _hex(colour: tuple[int, int, int, int]) -> str:
    r, g, b, a = colour
    return f"{r:02x}{g:02x}{b:02x}" + ("" if a == 255 else f"{a:02x}")


def _percent(text: str, name: str) -> int:
    if len(text) > 1 and text[0] == "0":
        raise InvalidRequest(f"{name!r}: {text!r} is not a plain number")
    value = int(text)
    if value > 100:
        raise InvalidRequest(f"{name!r}: a focal point is 0 to 100 per cent")
    return value


#: A preset's name: never shaped like a variant nor a reserved name.
_PRESET_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")


@dataclass(frozen=True)
class Presets:
    """What an operator named: sizes by name (``--presets``) and variants
    made at every upload (``--outputs``), each global or for one namespace.

    With ``only`` (``--presets_only``) nothing else is served or made.
    """

    #: (namespace, or None for every one; preset name) -> variant without
    #: its extension, e.g. ``x300-smart-q70``.
    named: dict[tuple[str | None, str], str] = field(default_factory=dict)
    #: namespace, or None for every one -> variants made at upload.
    outputs: dict[str | None, tuple[Variant, ...]] = field(default_factory=dict)
    only: bool = False

    @classmethod
    def from_options(
        cls,
        presets: Sequence[str],
        outputs: Sequence[str],
        only: bool,
        rules: VariantRules,
    ) -> Presets:
        """Read ``name=variant`` and ``namespace:name=variant`` presets and
        ``[namespace:]variant`` outputs; ValueError says which entry is wrong."""
        named: dict[tuple[str | None, str], str] = {}
        for entry in presets:
            where, name, spec = _preset_entry(entry)
            if (where, name) in named:
                raise ValueError(f"preset {entry!r} is given twice")
            try:
                variant = rules.parse(f"{spec}.{AUTO}")
            except NotCanonical as e:
                raise ValueError(
                    f"preset {entry!r}: {spec!r} is spelled "
                    f"{e.canonical.removesuffix('.' + AUTO)!r}"
                ) from None
            except ImageServerError as e:
                raise ValueError(f"preset {entry!r}: {e}") from None
            if variant is None:
                raise ValueError(f"preset {entry!r}: {spec!r} is not a variant")
            named[where, name] = spec
        made: dict[str | None, list[Variant]] = {}
        for entry in outputs:
            where, _, name = entry.rpartition(":") if ":" in entry else ("", "", entry)
            namespace = check_namespace_option(where) if where else None
            try:
                (variant,) = rules.parse_outputs(name)
            except ImageServerError as e:
                raise ValueError(str(e)) from None
            made.setdefault(namespace, []).append(variant)
        return cls(named, {ns: tuple(v) for ns, v in made.items()}, only)

    def resolve(self, namespace: str, name: str) -> str | None:
        """The variant name a preset name (``thumb.webp``) stands for, or None."""
        stem, dot, ext = name.rpartition(".")
        if not dot:
            return None
        spec = self.named.get((namespace, stem)) or self.named.get((None, stem))
        return None if spec is None else f"{spec}.{ext}"

    def is_preset(self, namespace: str, name: str) -> bool:
        return self.resolve(namespace, name) is not None

    def outputs_for(self, namespace: str) -> tuple[Variant, ...]:
        """The variants made at every upload into ``namespace``."""
        return self.outputs.get(None, ()) + self.outputs.get(namespace, ())

    def allows(self, namespace: str, name: str) -> bool:
        """Whether ``name`` may be served or made directly (not by a preset)."""
        return not self.only or any(v.name == name for v in self.outputs_for(namespace))


def _preset_entry(entry: str) -> tuple[str | None, str, str]:
    """``[namespace:]name=variant`` -> (namespace or None, name, variant)."""
    key, equals, spec = entry.partition("=")
    if not equals or not spec:
        raise ValueError(f"preset {entry!r} is not name=variant")
    where, colon, name = key.rpartition(":")
    namespace = check_namespace_option(where) if colon else None
    if not _PRESET_NAME.match(name):
        raise ValueError(
            f"preset {entry!r}: a name is a lower-case letter and up to 31 "
            "letters, digits or '_'"
        )
    if _VARIANT.match(f"{name}.jpg") or name in RESERVED_NAMES or name == "batch":
        raise ValueError(f"preset {entry!r}: {name!r} is reserved")
    return namespace, name, spec


def check_namespace_option(namespace: str) -> str:
    """A namespace named in an option; ValueError when it cannot be one."""
    if not _NAMESPACE.match(namespace):
        raise ValueError(f"{namespace!r} is not a namespace")
    return namespace


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
        # In any case: on a case-insensitive disk "Original" is the original.
        and name.lower() not in RESERVED_NAMES
        and _VARIANT.match(name) is None
    )


def check_file_name(name: str) -> str:
    """Validate the name of a client-supplied file, saying what is wrong."""
    if not _FILE_NAME.match(name) or ".." in name:
        raise InvalidRequest(
            "file names are 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name.lower() in RESERVED_NAMES or _VARIANT.match(name):
        raise InvalidRequest(
            f"the name {name!r} is reserved for the server's own files"
        )
    return name
