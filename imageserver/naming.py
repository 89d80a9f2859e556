"""The URL grammar: namespaces, hash paths, variant names and stored file names.

Everything a client can put in a path is checked here, so that no other layer
ever builds a storage key from text that was not validated.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import enum
import functools
import re
import unicodedata
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
#: An md5 as a folder path below its namespace, partitioned 3/3/3/23.
HASH_PATH_PATTERN = r"[0-9a-f]{3}/[0-9a-f]{3}/[0-9a-f]{3}/[0-9a-f]{23}"
FOLDER_PATTERN = NAMESPACE_PATTERN + "/" + HASH_PATH_PATTERN
_NAMESPACE = re.compile(NAMESPACE_PATTERN + r"\Z")
_FOLDER = re.compile(FOLDER_PATTERN + r"\Z")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
#: A number in a name: ASCII digits only (``\d`` takes every script's digits,
#: so ``w\u0662\u0660\u0660`` would be one more spelling of ``w200``). Lengths
#: are checked after the match (`_number`), so a long number is a 400 that
#: says so rather than a name that is not variant-shaped.
_N = "[0-9]+"
#: Anything shaped like a variant name: a size, options, a density, an
#: extension. Such names are the server's: never a client file's.
_VARIANT = re.compile(
    rf"(?P<size>full_size|w{_N}|h{_N}|x{_N}|{_N}x{_N})"
    r"(?P<options>(?:-[A-Za-z0-9_]+)*)"
    rf"(?:@(?P<dpr>{_N})x)?\.(?P<ext>[A-Za-z0-9]{{1,10}})\Z"
)
_SIZE = re.compile(
    rf"(?:(?P<full>full_size)|w(?P<w>{_N})|h(?P<h>{_N})|x(?P<s>{_N})"
    rf"|(?P<bw>{_N})x(?P<bh>{_N}))\Z"
)
_PAD = re.compile(r"pad(?P<hex>[0-9A-Fa-f]{6}(?:[0-9A-Fa-f]{2})?)?\Z")
_FOCUS = re.compile(rf"fp(?P<x>{_N})_(?P<y>{_N})\Z")
_BLUR = re.compile(rf"blur(?P<sigma>{_N})\Z")
#: Which picture of a PDF (its page, from 1) or of a video (a time in
#: seconds or milliseconds, or per cent of its length) a variant is made of.
_PAGE = re.compile(rf"page(?P<n>{_N})\Z")
_TIME = re.compile(rf"t(?P<n>{_N})(?P<unit>s|ms|pct)\Z")
#: The latest time a name may give, in milliseconds (a day).
MAX_TIME_MS = 86_400_000
_QUALITY = re.compile(rf"q(?P<q>{_N})\Z")
#: The quality levels a name may ask for instead of a number, and the least
#: SSIMULACRA2 score each keeps (imaging.perception; docs/performance.md has
#: the bytes and scores each gives). ``qauto`` is ``qgood``.
QUALITY_LEVELS = {"high": 85.0, "good": 78.0, "eco": 70.0}
_LEVEL_ALIASES = {"auto": "good"}
#: A level, or what a client may have meant as one (``qbest``, ``qGood``,
#: ``q``: a 400 that names the levels).
_LEVEL = re.compile(r"q(?P<level>[A-Za-z]*)\Z")
_CROP = re.compile(
    rf"crop(?P<fraction>f?)(?P<l>{_N})_(?P<t>{_N})_(?P<r>{_N})_(?P<b>{_N})\Z"
)
#: Signed amounts: ``m`` spells minus (``-`` separates options).
_ADJUST = re.compile(rf"(?P<what>brightness|contrast|saturation)(?P<m>m?)(?P<n>{_N})\Z")
_ROUND = re.compile(rf"round(?P<r>{_N})\Z")
_REDACT = re.compile(
    rf"(?P<how>pixelbox|blurbox)(?P<l>{_N})_(?P<t>{_N})_(?P<r>{_N})_(?P<b>{_N})\Z"
)
#: Regions a name may redact at most.
MAX_REDACTIONS = 8
#: A watermark: by its name (--watermarks) or, canonically, the md5 of its
#: image; where (a gravity, the centre or tiles, each with a margin in
#: output pixels), its opacity and its width in per cent of the output's.
WATERMARK_NAME_PATTERN = r"[a-z][a-z0-9]{0,31}"
_WATERMARK = re.compile(
    rf"wm(?P<id>[0-9a-fA-F]{{32}}|{WATERMARK_NAME_PATTERN})"
    rf"(?:_(?P<place>c|n|ne|e|se|s|sw|w|nw|tile)(?P<margin>{_N})?)?"
    rf"(?:_(?P<opacity>{_N}))?(?:_(?P<scale>{_N}))?\Z"
)
_HASH = re.compile(r"[0-9a-f]{32}\Z")
#: Text drawn over the output: its UTF-8 in base32 (lower case, no
#: padding: one safe path segment whatever it says), then where, how large
#: (per cent of the output's height) and what colour.
_TEXT = re.compile(
    r"text(?P<b32>[A-Za-z2-7]{1,1000})"
    rf"(?:_(?P<place>c|n|ne|e|se|s|sw|w|nw)(?P<margin>{_N})?)?"
    rf"(?:_(?P<size>{_N}))?(?:_(?P<colour>[0-9A-Fa-f]{{6}}))?\Z"
)
#: The most characters of a text.
MAX_TEXT = 100
#: Characters that choose a glyph's presentation, or are ignored when
#: drawn (Unicode's default-ignorable code points that Python counts as
#: printable), dropped from a text: they draw nothing.
_VARIATION_SELECTORS = dict.fromkeys(
    [
        *range(0xFE00, 0xFE10),
        *range(0xE0100, 0xE01F0),
        *range(0x180B, 0x1810),
        0x034F,
        0x115F,
        0x1160,
        0x17B4,
        0x17B5,
        0x3164,
        0xFFA0,
        0xFFFC,
    ]
)
#: What a text may not start or end with (nothing is drawn, only moved):
#: spaces and the blank Braille pattern (a space of its own width).
_BLANKS = " \u2800"
_PIXELATE = re.compile(rf"pixelate(?P<n>{_N})\Z")
_MAX_BYTES = re.compile(rf"maxbytes(?P<n>{_N})\Z")
#: The longest canonical variant name, in bytes: a file name on every disk
#: (255), less what is kept beside it (`QUALITY_SUFFIX`).
MAX_NAME_BYTES = 240
#: The most digits of a byte budget (up to 99,999,999 bytes).
MAX_BYTES_DIGITS = 8
_BACKGROUND = re.compile(r"bg(?P<hex>[0-9A-Fa-f]{6})\Z")
#: A crop box in fractions of the original counts ten-thousandths.
CROP_FRACTION = 10_000
#: The largest pixelation block, in output pixels.
MAX_PIXELATE = 1000
#: The most digits of a number in a name (sizes up to 999999).
MAX_DIGITS = 6
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
#: Where a watermark goes: the fractions of the free space left of and
#: above it (`GRAVITIES`' corners and edges, and the centre).
WATERMARK_PLACES: dict[str, tuple[float, float]] = {
    "c": (0.5, 0.5),
    **{g[1:]: xy for g, xy in GRAVITIES.items()},
}
_PLACE_OF_SHARES = {xy: place for place, xy in WATERMARK_PLACES.items()}


def ascii_digits(text: str, most: int = 18) -> bool:
    """Whether ``text`` is 1 to ``most`` digits 0-9: what ``str.isdigit`` is
    not (it takes ``\u00b2``, which ``int`` refuses, and ``\u0662``, which it
    reads as 2), and short enough for ``int`` (over 4,300 digits it raises)."""
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


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
class Watermark:
    """An image laid over the output: one of --watermarks, by its md5."""

    hash: str
    #: One of `WATERMARK_PLACES`, or ``tile`` (repeated across the output).
    place: str = "se"
    #: Output pixels from the edges it is placed by (between tiles).
    margin: int = 0
    #: Per cent of its own opacity kept.
    opacity: int = 100
    #: Its width in per cent of the output's (its height follows).
    scale: int = 25

    def spelled(self, name: str | None = None) -> str:
        """Its option: ``wm`` + its md5 (or ``name``), then the fields up
        to the last that is not its default."""
        place = self.place + (str(self.margin) if self.margin else "")
        return _overlay_option(
            f"wm{name or self.hash}",
            [place, str(self.opacity), str(self.scale)],
            ["se", "100", "25"],
        )


def _overlay_option(head: str, fields: list[str], defaults: list[str]) -> str:
    """``head``, then ``fields`` up to the last that is not its default,
    joined by ``_``: one spelling for a watermark's or a text's option."""
    while fields and fields[-1] == defaults[len(fields) - 1]:
        fields.pop()
    return "_".join([head, *fields])


@dataclass(frozen=True, slots=True)
class Caption:
    """A short text drawn over the output, outlined for legibility."""

    text: str
    #: One of `WATERMARK_PLACES`.
    place: str = "s"
    #: Output pixels from the edges it is placed by.
    margin: int = 0
    #: The text's height in per cent of the output's.
    size: int = 10
    colour: tuple[int, int, int] = (255, 255, 255)

    def spelled(self) -> str:
        """Its option: ``text`` + base32, then the fields up to the last
        that is not its default."""
        encoded = base64.b32encode(self.text.encode()).decode().rstrip("=").lower()
        place = self.place + (str(self.margin) if self.margin else "")
        return _overlay_option(
            f"text{encoded}",
            [place, str(self.size), bytes(self.colour).hex()],
            ["s", "10", "ffffff"],
        )


@dataclass(frozen=True, slots=True)
class Variant:
    """A parsed variant name: one typed description of an output.

    ``name`` is the canonical spelling, also its storage name. Pixel numbers
    (``width``, ``height``) are already multiplied by the name's density.
    """

    name: str
    fit: Fit
    width: int
    height: int
    #: 1-100, or 0 for the format's own default (formats.OutputFormat.quality);
    #: always 0 for a lossless format.
    quality: int
    format: str
    #: The pad colour as RGBA, or None for the format's default.
    pad: tuple[int, int, int, int] | None = None
    noup: bool = False
    #: A gravity option (``gn`` ...), or None.
    gravity: str | None = None
    #: A focal point, per cent of the width and of the height, or None.
    focus: tuple[int, int] | None = None
    smart: bool = False
    #: Crop to the faces (the centre when there are none); ``smart`` prefers
    #: them too, falling back to its attention score.
    faces: bool = False
    trim: bool = False
    rotate: int = 0
    flip: bool = False
    flop: bool = False
    blur: int = 0
    sharp: bool = False
    gray: bool = False
    #: Whether the name gives ``-qN``: without it, ``quality`` is
    #: --default_quality's, which an operator may change, so ``w200.jpg`` and
    #: ``w200-q84.jpg`` are two names even where their pixels agree today.
    named_quality: bool = False
    #: A box of the original (as displayed) kept before anything else, left,
    #: top, right, bottom: pixels, or ten-thousandths of its width and
    #: height with ``crop_fraction``.
    crop: tuple[int, int, int, int] | None = None
    crop_fraction: bool = False
    #: Signed per cent, -100 to 100; 0 leaves the output as it is.
    brightness: int = 0
    contrast: int = 0
    saturation: int = 0
    #: Rounded corners' radius in output pixels, or a ``circle`` (an ellipse
    #: where the output is not square); outside is transparent.
    corner_radius: int = 0
    circle: bool = False
    #: Boxes of the original (as displayed, in its pixels) pixelated or
    #: blurred past recognition, where they land in the output; sorted.
    pixelboxes: tuple[tuple[int, int, int, int], ...] = ()
    blurboxes: tuple[tuple[int, int, int, int], ...] = ()
    #: Blocks of this many output pixels a side (0: none).
    pixelate: int = 0
    #: The colour transparency is flattened on (None: white where the format
    #: has no alpha, kept where it has).
    background: tuple[int, int, int] | None = None
    watermark: Watermark | None = None
    text: Caption | None = None
    #: A byte budget: the highest quality (up to ``quality``) whose output
    #: is at most this many bytes; 0: none. Lossy formats only.
    max_bytes: int = 0
    #: A quality level (`QUALITY_LEVELS`): the lowest quality whose output
    #: keeps its score, chosen per variant (``quality`` is then unused);
    #: empty for a fixed quality. Named (``-qgood``) or --default_quality's.
    level: str = ""
    #: A PDF original's page, from 1.
    page: int = 1
    #: A video original's time, in milliseconds or per cent of its length;
    #: None for both: its poster (a lively frame near the start) for a still
    #: format, its preview for an animated one.
    time_ms: int | None = None
    time_percent: int | None = None

    @property
    def content_type(self) -> str:
        return OUTPUT_FORMATS[self.format]

    @property
    def wants_faces(self) -> bool:
        """Whether its crop is placed by the faces in the picture."""
        return self.smart or self.faces

    def pad_colour(self, has_alpha: bool) -> tuple[int, int, int, int]:
        """The canvas colour: the one asked for, else transparent where the
        output keeps alpha and white where it does not."""
        if self.pad is not None:
            return self.pad
        if self.background is not None:
            return (*self.background, 255)
        return (0, 0, 0, 0) if has_alpha else (255, 255, 255, 255)

    @property
    def adds_transparency(self) -> bool:
        """Whether the output has transparency whatever the original's: a
        mask, or a transparent pad, not flattened on a background."""
        if self.background is not None:
            return False
        return bool(self.corner_radius or self.circle) or (
            self.fit is Fit.PAD and self.pad is not None and self.pad[3] < 255
        )

    def as_format(self, fmt: str) -> Variant:
        """This variant in another format (``.auto`` made concrete), under
        that format's canonical name (a pad colour that is its default, a
        quality it has no use for, are dropped)."""
        return _canonical(replace(self, format=fmt))


def _digits(text: str, what: str, most: int = MAX_DIGITS) -> int:
    """A number as names spell it: ASCII digits (the pattern saw to that), at
    most ``most`` of them, no leading zero. The length is checked before
    ``int`` runs: it refuses more than 4,300 digits with a ValueError."""
    if len(text) > most or (len(text) > 1 and text[0] == "0"):
        raise InvalidRequest(
            f"{what} {text[: most + 1]!r}{'...' if len(text) > most + 1 else ''} "
            f"is not a plain number: 1 to {most} digits 0-9, no leading zero"
        )
    return int(text)


def _number(text: str, what: str) -> int:
    value = _digits(text, what)
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
    #: The watermarks names may use (--watermarks): name and md5.
    watermarks: tuple[tuple[str, str], ...] = ()
    #: The quality level of names without ``-qN`` (--default_quality
    #: auto:LEVEL); empty: ``default_quality``.
    default_level: str = ""

    def watermark_named(self, name: str) -> bool:
        """Whether ``name`` names a watermark by its name (not its md5): the
        meaning of such a name changes when the operator points the
        watermark elsewhere, as a preset's does."""
        names = {n for n, _ in self.watermarks}
        variant = _VARIANT.match(name)
        return variant is not None and any(
            (m := _WATERMARK.match(token)) is not None and m["id"] in names
            for token in variant["options"].split("-")
        )

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

    def canonical(self, name: str) -> Variant | None:
        """The variant ``name`` describes, under its canonical name, however it
        is spelled; ``None`` when ``name`` is not variant-shaped.

        The one canonicalisation: requests (`parse`), presets and the
        start-up check of presets all go through it. Raises `InvalidRequest`
        for a variant-shaped name that is wrong (bad numbers, unknown or
        clashing options, each named) and `NotFound` for an extension the
        server does not serve.
        """
        return _canonical_under(self, name)

    def parse(self, name: str) -> Variant | None:
        """Parse a variant name; ``None`` when ``name`` is not variant-shaped.

        Raises as `canonical` does, and `NotCanonical` for a valid name
        spelled otherwise than its one canonical spelling: every name whose
        output is the same by construction has that one spelling (and is
        stored once, under it). A density is the exception that is served,
        not redirected: ``x100@2x.jpg`` is what a ``srcset`` asks for (and
        what a client that follows no redirect saves), so it answers with
        ``x200.jpg``'s stored bytes, provided the rest of it is canonical.
        """
        variant = self.canonical(name)
        if variant is None or variant.name == name:
            return variant
        m = _VARIANT.match(name)
        assert m is not None  # canonical() matched it
        density = int(m["dpr"] or 1)
        dense = _density_spelling(variant, density)
        if dense == name:
            return variant
        if variant.watermark is not None and self.watermark_named(name):
            # By the watermark's name: served as a preset is, not redirected;
            # other spellings go to that spelling, not to the md5's.
            names = {h: n for n, h in self.watermarks}
            mark = names.get(variant.watermark.hash)
            named = _spelling(variant, mark)
            dense_named = _density_spelling(variant, density, mark)
            if name in (named, dense_named):
                return variant
            raise NotCanonical(name, dense_named or named)
        raise NotCanonical(name, dense or variant.name)

    def parse_outputs(self, value: str | None) -> tuple[Variant, ...]:
        """Parse a comma-separated ``outputs`` list; every item must be a variant."""
        names = dict.fromkeys(n.strip() for n in (value or "").split(","))
        names.pop("", None)
        if len(names) > MAX_OUTPUTS:
            raise InvalidRequest(f"at most {MAX_OUTPUTS} outputs per request")
        return tuple(self.output(name) for name in names)

    def output(self, name: str, preset: str | None = None) -> Variant:
        """One item of ``?outputs=``: a canonical variant name, or a preset's
        (``preset`` its variant, in any spelling: the preset's name is its
        name); `InvalidRequest` says what is wrong."""
        try:
            variant = self.canonical(preset) if preset else self.parse(name)
        except NotCanonical as e:
            raise InvalidRequest(
                f"output {name!r} is spelled {e.canonical!r}"
            ) from None
        except (NotFound, InvalidRequest, Forbidden) as e:
            said = str(e).removeprefix(f"{name!r}: ")  # named once
            raise InvalidRequest(f"output {name!r}: {said}") from None
        if variant is None:
            raise InvalidRequest(f"output {name!r} is not a variant name")
        if variant.format == AUTO:
            raise InvalidRequest(
                f"output {name!r}: .auto is chosen from a request's Accept "
                "header; name the format to make ahead"
            )
        return variant


def variant_format(name: str) -> str | None:
    """The format a variant-shaped name asks for (``other`` when it is not one
    the server knows), or None for a name that is not variant-shaped."""
    m = _VARIANT.match(name)
    if m is None:
        return None
    return m["ext"] if m["ext"] in OUTPUT_FORMATS else "other"


def _parse(
    name: str,
    m: re.Match[str],
    default_quality: int,
    watermarks: tuple[tuple[str, str], ...] = (),
    default_level: str = "",
) -> Variant:
    """The variant a variant-shaped name describes, as spelled (no name yet:
    see `_canonical`)."""
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
    #: The groups of options already given (each may be given once).
    seen: set[str] = set()
    #: The option of the gravity group as given, for messages.
    placed = ""
    quality = default_quality
    fields["level"] = default_level

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
            fields["named_quality"] = True
            fields["level"] = ""
        elif (level := _LEVEL.match(token)) is not None:
            spelled = _LEVEL_ALIASES.get(level["level"], level["level"])
            if spelled not in QUALITY_LEVELS:
                raise InvalidRequest(
                    f"{name!r}: unknown quality {token!r}: a quality is qN "
                    f"(1-100) or a level, {', '.join('q' + q for q in QUALITY_LEVELS)}"
                    " (qauto is qgood), in lower case"
                )
            once("the quality")
            fields["level"] = spelled
            fields["named_quality"] = True
        elif token == "fit" or (pad := _PAD.match(token)) is not None:
            if "fit or pad" in seen:
                raise InvalidRequest(f"{name!r}: fit and pad cannot be used together")
            once("fit or pad")
            if fit not in _BOX_FITS:
                raise InvalidRequest(
                    f"{name!r}: {_label(token)} applies only to xN and WxH sizes"
                )
            if token == "fit":
                fit = Fit.FIT
            else:
                assert pad is not None
                fit = Fit.PAD
                fields["pad"] = None if pad["hex"] is None else _colour(pad["hex"])
        elif token == "noup":
            once("noup")
            fields["noup"] = True
        elif token in GRAVITIES or token in _FINDERS or _FOCUS.match(token):
            if "a gravity, fp, smart or faces" in seen:
                raise InvalidRequest(
                    f"{name!r}: only one of a gravity, fp, smart and faces may be given"
                )
            once("a gravity, fp, smart or faces")
            placed = token
            if token in GRAVITIES:
                fields["gravity"] = token
            elif token in _FINDERS:
                fields[token] = True
            else:
                focus = _FOCUS.match(token)
                assert focus is not None
                x, y = _percent(focus["x"], name), _percent(focus["y"], name)
                fields["focus"] = (x, y)
        elif token == "trim":
            once("trim")
            fields["trim"] = True
        elif token in ROTATIONS:
            once("a rotation")
            fields["rotate"] = ROTATIONS[token]
        elif token in ("flip", "flop"):
            once(token)
            fields[token] = True
        elif (blur := _BLUR.match(token)) is not None:
            once("blur")
            sigma = _number(blur["sigma"], "blur")
            if sigma > 100:
                raise InvalidRequest(f"{name!r}: blur must be between 1 and 100")
            fields["blur"] = sigma
        elif token in ("sharp", "gray"):
            once(token)
            fields[token] = True
        elif (mark := _WATERMARK.match(token)) is not None:
            once("a watermark")
            fields["watermark"] = _watermark(mark, name, watermarks)
        elif (caption := _TEXT.match(token)) is not None:
            once("text")
            fields["text"] = _caption(caption, name)
        elif (redact := _REDACT.match(token)) is not None:
            boxes = fields.setdefault(redact["how"] + "es", [])
            redactions = len(fields.get("pixelboxes", ())) + len(
                fields.get("blurboxes", ())
            )
            if redactions >= MAX_REDACTIONS:
                raise InvalidRequest(
                    f"{name!r}: at most {MAX_REDACTIONS} pixelbox and blurbox regions"
                )
            box = tuple(_digits(redact[e], "a box's edge") for e in "ltrb")
            if box[2] <= box[0] or box[3] <= box[1]:
                raise InvalidRequest(
                    f"{name!r}: a {redact['how']} is left_top_right_bottom, with "
                    "right above left and bottom above top"
                )
            if box in boxes:
                raise InvalidRequest(f"{name!r}: {token} is given twice")
            boxes.append(box)
        elif (crop := _CROP.match(token)) is not None:
            once("a crop box")
            fields.update(_crop(crop, name))
        elif (adjust := _ADJUST.match(token)) is not None:
            what = adjust["what"]
            once(what)
            amount = _digits(adjust["n"], what)
            if amount > 100:
                raise InvalidRequest(f"{name!r}: {what} must be between m100 and 100")
            fields[what] = -amount if adjust["m"] else amount
        elif (corners := _ROUND.match(token)) is not None or token == "circle":
            if "round or circle" in seen:
                raise InvalidRequest(
                    f"{name!r}: only one of round and circle may be given"
                )
            once("round or circle")
            if corners is None:
                fields["circle"] = True
            else:
                fields["corner_radius"] = _number(corners["r"], "round")
        elif (pixelate := _PIXELATE.match(token)) is not None:
            once("pixelate")
            block = _digits(pixelate["n"], "pixelate")
            if not 2 <= block <= MAX_PIXELATE:
                raise InvalidRequest(
                    f"{name!r}: pixelate must be between 2 and {MAX_PIXELATE}"
                )
            fields["pixelate"] = block
        elif (budget := _MAX_BYTES.match(token)) is not None:
            once("maxbytes")
            fields["max_bytes"] = _digits(budget["n"], "maxbytes", MAX_BYTES_DIGITS)
            if fields["max_bytes"] < 1:
                raise InvalidRequest(f"{name!r}: maxbytes must be at least 1")
        elif (page := _PAGE.match(token)) is not None:
            once("page")
            fields["page"] = _number(page["n"], "page")
        elif (time := _TIME.match(token)) is not None:
            once("a time")
            fields.update(_time(time, name))
        elif (background := _BACKGROUND.match(token)) is not None:
            once("bg")
            fields["background"] = _colour(background["hex"])[:3]
        else:
            raise InvalidRequest(f"{name!r}: unknown option {token!r}{_nearest(token)}")
    if placed and fit is not Fit.FILL:
        raise InvalidRequest(
            f"{name!r}: {placed} applies only to cover crops (xN or WxH without "
            "fit or pad)"
        )
    for boxes in ("pixelboxes", "blurboxes"):
        if boxes in fields:
            fields[boxes] = tuple(fields[boxes])
    # Numbers of output pixels are the density's multiple, as the size is
    # (a budget of bytes is not); their bounds hold for the product, which
    # is what is spelled and stored, once folded (`_within_density`).
    for scaled in ("corner_radius", "pixelate", "blur"):
        if scaled in fields:
            fields[scaled] *= dpr
    for placed in ("watermark", "text"):
        if placed in fields:
            fields[placed] = replace(fields[placed], margin=fields[placed].margin * dpr)
    return Variant("", fit, width * dpr, height * dpr, quality, fmt, **fields)


def _within_density(variant: Variant, name: str, dpr: int, maximum: int) -> None:
    """`InvalidRequest` for a canonical ``variant`` whose numbers, multiplied
    by the density ``dpr`` of its ``name`` and folded, pass their bounds:
    saying what the product is and the most to give."""
    most = 10**MAX_DIGITS - 1
    margins = [o.margin for o in (variant.watermark, variant.text) if o is not None]
    for value, what, bound in (
        (max(variant.width, variant.height), "the size", maximum),
        (variant.corner_radius, "round", most),
        (variant.pixelate, "pixelate", MAX_PIXELATE),
        (variant.blur, "blur", 100),
        (max(margins, default=0), "a margin", most),
    ):
        if value > bound:
            raise InvalidRequest(
                f"{name!r}: {what} is at most {bound} output pixels"
                + (" (--maximum_width)" if what == "the size" else "")
                + f", and @{dpr}x makes it {value}: give at most {bound // dpr}"
            )


def _watermark(
    m: re.Match[str], name: str, watermarks: tuple[tuple[str, str], ...]
) -> Watermark:
    """A watermark option's fields; `InvalidRequest` for a watermark this
    server does not have, or a number out of its range."""
    known = dict(watermarks)
    mark = m["id"]
    if len(mark) == 32 and _HASH.match(mark.lower()):
        mark = mark.lower()  # upper-case hex is the same md5: a 301
    if _HASH.match(mark):
        if mark not in known.values():
            raise InvalidRequest(
                f"{name!r}: no watermark of this server has md5 {mark}"
            )
    elif mark in known:
        mark = known[mark]
    else:
        have = ", ".join(sorted(known)) or "none"
        raise InvalidRequest(
            f"{name!r}: unknown watermark {mark!r} (--watermarks names: {have})"
        )
    place = m["place"] or "se"
    margin = 0 if m["margin"] is None else _digits(m["margin"], "a watermark's margin")
    opacity = 100 if m["opacity"] is None else _number(m["opacity"], "opacity")
    scale = 25 if m["scale"] is None else _number(m["scale"], "a watermark's scale")
    if opacity > 100 or scale > 100:
        raise InvalidRequest(
            f"{name!r}: a watermark's opacity and scale are 1 to 100 (per cent)"
        )
    if place == "c":
        margin = 0  # the centre is no edge to keep a margin from
    return Watermark(mark, place, margin, opacity, scale)


def _blanks_in_order(text: str) -> str:
    """One spelling of a text's blanks: none at either end, and each run of
    them in one order (a space then U+2800 draws what U+2800 then a space
    does). A blank that carries a combining mark is drawn: it stays where
    it is, also at the start."""
    out: list[str] = []
    end = 0
    for run in re.split(f"([{_BLANKS}]+)", text):
        start, end = end, end + len(run)
        if not run or run[0] not in _BLANKS:
            out.append(run)
            continue
        following = text[end : end + 1]
        carries = following and unicodedata.category(following).startswith("M")
        carrier = run[-1] if carries else ""
        loose = "" if start == 0 or end == len(text) else run[: len(run) - len(carrier)]
        out.append("".join(sorted(loose)) + carrier)
    return "".join(out)


def _caption(m: re.Match[str], name: str) -> Caption:
    """A text option's fields; `InvalidRequest` for base32 that is not UTF-8
    text of at most `MAX_TEXT` printable characters, or a size out of range.
    (Whether the font draws each character is the renderer's to say.)"""
    encoded = m["b32"].upper()
    try:
        text = base64.b32decode(encoded + "=" * (-len(encoded) % 8)).decode()
    except (ValueError, binascii.Error):
        raise InvalidRequest(
            f"{name!r}: text is its UTF-8 in base32 (RFC 4648, without "
            "padding), e.g. textknauyri for SALE"
        ) from None
    # One spelling of what is drawn: NFC; no variation selector (the font
    # has one presentation of each character), no space at either end
    # (nothing to draw, only to move: a space before SALE is not a margin).
    text = _blanks_in_order(
        unicodedata.normalize("NFC", text).translate(_VARIATION_SELECTORS)
    )
    unprintable = next((c for c in text if not c.isprintable()), None)
    if unprintable is not None:
        raise InvalidRequest(
            f"{name!r}: a text is printable characters on one line, and "
            f"U+{ord(unprintable):04X} ({unicodedata.name(unprintable, 'unnamed')}) "
            "is not one (a space is U+0020)"
        )
    if not text or len(text) > MAX_TEXT:
        raise InvalidRequest(
            f"{name!r}: a text is 1 to {MAX_TEXT} printable characters on one "
            "line, not only spaces"
        )
    margin = 0 if m["margin"] is None else _digits(m["margin"], "a text's margin")
    size = 10 if m["size"] is None else _number(m["size"], "a text's size")
    if size > 100:
        raise InvalidRequest(f"{name!r}: a text's size is 1 to 100 (per cent)")
    place = m["place"] or "s"
    colour = (255, 255, 255) if m["colour"] is None else _colour(m["colour"])[:3]
    return Caption(text, place, margin, size, colour)


def _time(m: re.Match[str], name: str) -> dict[str, Any]:
    """A time option's fields: ``t5s`` and ``t5000ms`` are 5,000 ms,
    ``t50pct`` half the video's length."""
    amount = _digits(m["n"], "a time", most=8)
    if m["unit"] == "pct":
        if amount > 100:
            raise InvalidRequest(f"{name!r}: tNpct is 0 to 100 per cent of the video")
        return {"time_percent": amount}
    ms = amount * 1000 if m["unit"] == "s" else amount
    if ms > MAX_TIME_MS:
        raise InvalidRequest(f"{name!r}: a time is at most {MAX_TIME_MS // 1000} s")
    return {"time_ms": ms}


def _spelled_time(v: Variant) -> str:
    """``t5s``, ``t2500ms``, ``t50pct``, or nothing for the default."""
    if v.time_percent is not None:
        return f"t{v.time_percent}pct"
    if v.time_ms is None:
        return ""
    return f"t{v.time_ms // 1000}s" if v.time_ms % 1000 == 0 else f"t{v.time_ms}ms"


def _crop(m: re.Match[str], name: str) -> dict[str, Any]:
    """A crop box's fields; `InvalidRequest` for a box with no pixels, or a
    fraction over the whole."""
    fraction = bool(m["fraction"])
    left, top, right, bottom = (
        _digits(m[side], "a crop box's edge") for side in ("l", "t", "r", "b")
    )
    if right <= left or bottom <= top:
        raise InvalidRequest(
            f"{name!r}: a crop box is left_top_right_bottom, with right above "
            "left and bottom above top"
        )
    if fraction and max(right, bottom) > CROP_FRACTION:
        raise InvalidRequest(
            f"{name!r}: cropf's edges are ten-thousandths of the original, "
            f"0 to {CROP_FRACTION}"
        )
    return {"crop": (left, top, right, bottom), "crop_fraction": fraction}


#: The options that place a cover crop by what is in the picture.
_FINDERS = ("smart", "faces")

#: The option words (docs/api.md's table must name each), and what a
#: misspelt one is matched against for a suggestion.
OPTION_WORDS = ("fit", "pad", "noup", "smart", "faces", "trim", "flip", "flop",
                 "sharp", "gray", "blur", "q", "fp", "crop", "cropf", "brightness",
                 "contrast", "saturation", "round", "circle", "pixelate", "bg",
                 "pixelbox", "blurbox", "wm", "text", "maxbytes", "page", "t",
                 *GRAVITIES, *ROTATIONS)  # fmt: skip


#: How the options with parts are spelled, for a token that begins as one
#: but is not one.
_GRAMMARS = {
    "text": "text + its UTF-8 in base32 [_PLACE [_SIZE [_RRGGBB]]], PLACE one "
    "of c, n, ne, e, se, s, sw, w, nw with an optional margin (no tile)",
    "wm": "wm + a watermark's name [_PLACE [_OPACITY [_SCALE]]], PLACE one of "
    "c, n, ne, e, se, s, sw, w, nw or tile with an optional margin",
}


def _nearest(token: str) -> str:
    """``" (did you mean 'gray'?)"`` for ``grey``; how an option with parts
    is spelled for one that begins like it; empty when nothing is near."""
    for prefix, grammar in _GRAMMARS.items():
        if token.startswith(prefix) and "_" in token:
            return f" (a {prefix} option is {grammar})"
    stem = token.rstrip("0123456789_")
    near = difflib.get_close_matches(stem or token, OPTION_WORDS, n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near and near[0] != stem else ""


#: Focal points that are a gravity's edge or corner: the crop they give is
#: the gravity's, by the arithmetic of geometry's cover box.
_FOCUS_GRAVITIES: dict[tuple[int, int], str] = {
    (round(x * 100), round(y * 100)): g for g, (x, y) in GRAVITIES.items()
}
_CENTRE = (50, 50)


def _canonical(v: Variant, most: int = 0) -> Variant:
    """The one variant of all those whose output is the same by construction,
    under its one name (``most``: the longest side an output may have, where
    the name gives one side only; 0 for unbounded).

    What cannot change the output goes: a density (its pixels are the
    multiplied size's: ``x100@2x`` is ``x200``), ``noup`` where nothing is
    ever enlarged (``full_size``, ``w1``), a quality for a lossless format, a
    pad colour that is the format's own.
    What has two spellings gets one: ``200x200`` is ``x200``; ``flip-flop``
    is ``r180`` (of the 16 turns and mirrors, 8 differ); a focal point on an
    edge or a corner is that gravity, and the centre is no option.
    """
    pad = v.pad if v.fit is Fit.PAD and v.pad != _default_pad(v.format) else None
    if pad is not None and pad[3] == 0 and not _keeps_alpha(v.format):
        # A transparent canvas in a format without alpha is flattened on
        # white: the default canvas.
        pad = None
    quality, named, max_bytes = v.quality, v.named_quality, v.max_bytes
    level = v.level
    if v.format != AUTO and not formats.output(v.format).lossy:
        # No quality to lower (a lossless format .auto chose).
        quality, named, max_bytes, level = 0, False, 0, ""
    if level:
        quality = 0  # chosen per output
    gravity, focus = v.gravity, v.focus
    if focus is not None and focus in _FOCUS_GRAVITIES:
        gravity, focus = _FOCUS_GRAVITIES[focus], None
    elif focus == _CENTRE:
        focus = None
    crop, crop_fraction = v.crop, v.crop_fraction
    if crop_fraction and crop == (0, 0, CROP_FRACTION, CROP_FRACTION):
        crop, crop_fraction = None, False  # the whole original
    time_ms, time_percent = v.time_ms, v.time_percent
    if time_percent == 0:  # the start, whatever the length
        time_ms, time_percent = 0, None
    background = v.background
    if background == (255, 255, 255) and not _keeps_alpha(v.format):
        background = None  # what a format without alpha is flattened on
    corner_radius, pixelate, watermark, text = _within_output(v, most)
    noup = v.noup and _can_enlarge(v)
    circle = v.circle
    square = v.width == v.height and (
        v.fit is Fit.PAD or (v.fit is Fit.FILL and not noup)
    )
    if square and corner_radius * 2 == v.width:
        # Corners rounded by half of an even square's side: its circle.
        corner_radius, circle = 0, True
    rotate, flip, flop = v.rotate, v.flip, v.flop
    if flip and flop:  # mirrored both ways: turned half a turn
        rotate, flip, flop = (rotate + 180) % 360, False, False
    if (flip or flop) and rotate >= 180:  # half a turn and a mirror: the other mirror
        rotate, flip, flop = rotate - 180, flop, flip
    variant = replace(
        v,
        quality=quality,
        named_quality=named,
        max_bytes=max_bytes,
        level=level,
        pad=pad,
        noup=noup,
        gravity=gravity,
        focus=focus,
        rotate=rotate,
        flip=flip,
        flop=flop,
        crop=crop,
        crop_fraction=crop_fraction,
        background=background,
        time_ms=time_ms,
        time_percent=time_percent,
        pixelboxes=tuple(sorted(v.pixelboxes)),
        blurboxes=tuple(sorted(v.blurboxes)),
        corner_radius=corner_radius,
        circle=circle,
        pixelate=pixelate,
        watermark=watermark,
        text=text,
    )
    return replace(variant, name=_spelling(variant))


def _within_output(
    v: Variant, most: int = 0
) -> tuple[int, int, Watermark | None, Caption | None]:
    """The round radius, pixelate block and overlay places of ``v``, each
    no larger than the largest output its name allows can tell apart: a
    radius is at most half the shorter side (``x100-round80`` is
    ``x100-round50``), a block at most the longer side (one block, the
    average colour), a tiling gap at most the longer side (one tile), and an
    overlay centred on each side its margin is half of or more (there is no
    more room: ``w100-wmlogo_se50`` is ``w100-wmlogo_s50``, and
    ``100x80-wmlogo_n50`` is ``100x80-wmlogo_c``). An output is never larger
    than its name's sides (a width or height alone bounds that side and, for
    the radius, the shorter; the other side is at most ``most``); a name
    without sides is left as it is."""
    sides = [n for n in (v.width, v.height) if n and v.fit is not Fit.FULL]
    both = v.fit in _BOX_FITS
    bounds = (
        v.width if both or v.fit is Fit.WIDTH else most * (v.fit is Fit.HEIGHT),
        v.height if both or v.fit is Fit.HEIGHT else most * (v.fit is Fit.WIDTH),
    )
    radius, block = v.corner_radius, v.pixelate
    watermark, text = v.watermark, v.text
    if sides and radius > min(sides) // 2 >= 1:
        radius = min(sides) // 2
    if both:
        block = min(block, max(sides))
    if watermark is not None and watermark.place == "tile":
        if all(bounds):  # a gap of the longer side or more: one tile
            watermark = replace(watermark, margin=min(watermark.margin, max(bounds)))
    elif watermark is not None:
        place = _centred_within(watermark.place, watermark.margin, bounds)
        margin = 0 if place == "c" else watermark.margin
        watermark = replace(watermark, place=place, margin=margin)
    if text is not None:
        place = _centred_within(text.place, text.margin, bounds)
        margin = text.margin
        # A text's margin narrows the width it is shrunk to fit, whatever
        # its place: past half the width, to one pixel (the smallest text).
        if bounds[0] and WATERMARK_PLACES[place][1] == 0.5:
            margin = min(margin, bounds[0] // 2)
        text = replace(text, place=place, margin=margin)
    return radius, block, watermark, text


def _centred_within(place: str, margin: int, bounds: tuple[int, int]) -> str:
    """An overlay's place in an output whose sides are at most ``bounds``
    (0: unbounded): on a side where the margin is half of it or more, the
    overlay is centred whatever the place says (the margin shrinks alike on
    both sides to the room there is), so the place is the centred one on
    that side."""
    (x, y), (width, height) = WATERMARK_PLACES[place], bounds
    x = 0.5 if width and margin >= width // 2 else x
    y = 0.5 if height and margin >= height // 2 else y
    return _PLACE_OF_SHARES[x, y]


def _can_enlarge(v: Variant) -> bool:
    """Whether some source comes out larger than it is (what ``noup``
    prevents): never at full size, nor where a side of 1 pixel decides (a
    source has at least one)."""
    if v.fit is Fit.FULL:
        return False
    if v.fit is Fit.WIDTH:
        return v.width > 1
    if v.fit is Fit.HEIGHT:
        return v.height > 1
    if v.fit is Fit.FILL:
        return max(v.width, v.height) > 1
    return min(v.width, v.height) > 1  # fit or pad: the smaller scale decides


def _density_spelling(v: Variant, density: int, mark: str | None = None) -> str | None:
    """The canonical variant ``v`` spelled at ``density`` (``x100@2x.jpg`` for
    ``x200.jpg`` at 2), or None where no such spelling says more than ``v``'s
    own name: a density of 1, full size (which a density cannot change), or a
    size the density does not divide."""
    margins = [m.margin for m in (v.watermark, v.text) if m is not None]
    scaled = (v.width, v.height, v.corner_radius, v.pixelate, v.blur, *margins)
    if density <= 1 or v.fit is Fit.FULL or any(n % density for n in scaled):
        return None
    base = _spelling(
        replace(
            v,
            width=v.width // density,
            height=v.height // density,
            corner_radius=v.corner_radius // density,
            pixelate=v.pixelate // density,
            blur=v.blur // density,
            watermark=v.watermark
            and replace(v.watermark, margin=v.watermark.margin // density),
            text=v.text and replace(v.text, margin=v.text.margin // density),
        ),
        mark,
    )
    stem, _, fmt = base.rpartition(".")
    return f"{stem}@{density}x.{fmt}"


def _spelling(v: Variant, mark: str | None = None) -> str:
    """The name of a canonical variant: its options in the order of the table
    in docs/api.md (``mark``: its watermark by that name, not its md5)."""
    if v.fit is Fit.FULL:
        size = "full_size"
    elif v.fit is Fit.WIDTH:
        size = f"w{v.width}"
    elif v.fit is Fit.HEIGHT:
        size = f"h{v.height}"
    else:
        size = f"x{v.width}" if v.width == v.height else f"{v.width}x{v.height}"
    crop = ""
    if v.crop is not None:
        crop = ("cropf" if v.crop_fraction else "crop") + "_".join(map(str, v.crop))
    tokens = [
        f"page{v.page}" if v.page != 1 else "",
        _spelled_time(v),
        crop,
        "fit" if v.fit is Fit.FIT else "",
        "pad" + ("" if v.pad is None else _hex(v.pad)) if v.fit is Fit.PAD else "",
        "noup" if v.noup else "",
        v.gravity or "",
        "" if v.focus is None else f"fp{v.focus[0]}_{v.focus[1]}",
        "smart" if v.smart else "",
        "faces" if v.faces else "",
        "trim" if v.trim else "",
        f"r{v.rotate}" if v.rotate else "",
        "flip" if v.flip else "",
        "flop" if v.flop else "",
        _signed("brightness", v.brightness),
        _signed("contrast", v.contrast),
        _signed("saturation", v.saturation),
        f"blur{v.blur}" if v.blur else "",
        "sharp" if v.sharp else "",
        "gray" if v.gray else "",
        *(f"pixelbox{'_'.join(map(str, box))}" for box in v.pixelboxes),
        *(f"blurbox{'_'.join(map(str, box))}" for box in v.blurboxes),
        f"round{v.corner_radius}" if v.corner_radius else "",
        "circle" if v.circle else "",
        "" if v.watermark is None else v.watermark.spelled(mark),
        "" if v.text is None else v.text.spelled(),
        f"pixelate{v.pixelate}" if v.pixelate else "",
        "" if v.background is None else "bg" + bytes(v.background).hex(),
        f"maxbytes{v.max_bytes}" if v.max_bytes else "",
        _quality(v) if v.named_quality else "",
    ]
    return size + "".join(f"-{t}" for t in tokens if t) + f".{v.format}"


def _quality(v: Variant) -> str:
    """``q84``, or ``qgood`` for a level."""
    return f"q{v.level}" if v.level else f"q{v.quality}"


def _signed(word: str, amount: int) -> str:
    """``brightness20``, ``brightnessm20`` (minus), or nothing for 0."""
    if not amount:
        return ""
    return f"{word}{'m' if amount < 0 else ''}{abs(amount)}"


def _keeps_alpha(fmt: str) -> bool:
    """Whether ``fmt``'s output keeps transparency (``auto`` may)."""
    return fmt == AUTO or formats.has_alpha(fmt)


def _default_pad(fmt: str) -> tuple[int, int, int, int] | None:
    """The pad colour a format gets unasked (``auto`` has none of its own)."""
    if fmt == "auto":
        return None
    return (0, 0, 0, 0) if formats.has_alpha(fmt) else (255, 255, 255, 255)


def _label(token: str) -> str:
    return "pad" if token.startswith("pad") else token


def _colour(text: str) -> tuple[int, int, int, int]:
    value = bytes.fromhex(text)
    return (value[0], value[1], value[2], value[3] if len(value) == 4 else 255)


def _hex(colour: tuple[int, int, int, int]) -> str:
    r, g, b, a = colour
    return f"{r:02x}{g:02x}{b:02x}" + ("" if a == 255 else f"{a:02x}")


def _percent(text: str, name: str) -> int:
    value = _digits(text, "a focal point", most=3)
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
    #: (namespace or None, preset name) -> seconds its answers may be kept,
    #: where the operator said (--preset_max_age).
    max_ages: dict[tuple[str | None, str], int] = field(default_factory=dict)

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
                # What requests do with it (Images.resolve): one function.
                variant = rules.canonical(f"{spec}.{AUTO}")
                for ext in rules.extensions:
                    rules.canonical(f"{spec}.{ext}")
            except ImageServerError as e:
                # Checked as a name; the error names what the operator wrote.
                said = str(e).replace(repr(f"{spec}.{AUTO}"), repr(spec))
                raise ValueError(f"preset {entry!r}: {said}") from None
            if variant is None:
                raise ValueError(f"preset {entry!r}: {spec!r} is not a variant")
            try:
                # Canonical, or by a watermark's name (served as it is).
                named_mark = rules.watermark_named(f"{spec}.{AUTO}") and "@" not in spec
                if variant.name != f"{spec}.{AUTO}" and not named_mark:
                    raise NotCanonical(spec, variant.name)
                rules.parse(f"{spec}.{AUTO}")
            except NotCanonical:
                raise ValueError(
                    f"preset {entry!r}: {spec!r} is spelled "
                    f"{variant.name.removesuffix('.' + AUTO)!r}"
                ) from None
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

    def lifetimes(self, entries: Sequence[str]) -> dict[tuple[str | None, str], int]:
        """Read ``[namespace:]name=seconds`` entries, each of a preset;
        ValueError says which entry is wrong."""
        found: dict[tuple[str | None, str], int] = {}
        for entry in entries:
            key, equals, seconds = entry.partition("=")
            where, colon, name = key.rpartition(":")
            namespace = check_namespace_option(where) if colon else None
            if not equals or not ascii_digits(seconds.strip(), 10):
                raise ValueError(f"{entry!r} is not name=seconds")
            if (namespace, name) not in self.named:
                raise ValueError(f"{entry!r}: there is no such preset in --presets")
            if (namespace, name) in found:
                raise ValueError(f"{entry!r}: the preset is given twice")
            found[namespace, name] = int(seconds)
        return found

    def with_lifetimes(self, entries: Sequence[str]) -> Presets:
        return replace(self, max_ages=self.lifetimes(entries))

    def _named(self, namespace: str, name: str) -> tuple[str | None, str] | None:
        """The key of the preset a name (``thumb.webp``) is, or None: the
        namespace's own preset first, then the one of every namespace."""
        stem, dot, _ = name.rpartition(".")
        if not dot:
            return None
        for key in ((namespace, stem), (None, stem)):
            if key in self.named:
                return key
        return None

    def resolve(self, namespace: str, name: str) -> str | None:
        """The variant name a preset name (``thumb.webp``) stands for, or None."""
        key = self._named(namespace, name)
        return None if key is None else f"{self.named[key]}.{name.rpartition('.')[2]}"

    def max_age(self, namespace: str, name: str) -> int | None:
        """The seconds --preset_max_age gives the preset ``name`` is, or None."""
        key = self._named(namespace, name)
        return None if key is None else self.max_ages.get(key)

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


_WATERMARK_NAME = re.compile(WATERMARK_NAME_PATTERN + r"\Z")


def parse_watermarks(entries: Sequence[str]) -> dict[str, ImageId]:
    """``--watermarks NAME=FOLDER``: each name and the uploaded original it
    stands for; ValueError saying what is wrong."""
    found: dict[str, ImageId] = {}
    for entry in entries:
        name, sep, folder = entry.partition("=")
        if not sep or not _WATERMARK_NAME.match(name) or _HASH.match(name):
            raise ValueError(
                f"--watermarks {entry!r}: give NAME=FOLDER, a name of 1 to 32 "
                "of a-z and 0-9 starting with a letter (not 32 hex digits), "
                "e.g. logo=p/6e0/072/682/e66287b662827da75b244a3"
            )
        try:
            image = ImageId.from_folder(folder.strip("/"))
        except NotFound:
            raise ValueError(
                f"--watermarks {entry!r}: {folder!r} is not an image's folder "
                "({ns}/{h[0:3]}/{h[3:6]}/{h[6:9]}/{h[9:32]} of an uploaded "
                "original, as its upload answered)"
            ) from None
        if name in found:
            raise ValueError(f"--watermarks: {name!r} is given twice")
        found[name] = image
    return found


def check_namespace_option(namespace: str) -> str:
    """A namespace named in an option; ValueError when it cannot be one."""
    if not _NAMESPACE.match(namespace):
        raise ValueError(
            f"{namespace!r} is not a namespace: 1 to 128 of a-z, 0-9, _ and -"
        )
    return namespace


#: Beside a variant made within a byte budget (``maxbytes``), the quality
#: its encoder was given, as text: ``w200-maxbytes9000.jpg.quality``.
QUALITY_SUFFIX = ".quality"


def _server_name(name: str) -> bool:
    """Whether ``name`` is a variant's (whatever its extension: a read of
    it is asked of the variants, ``w200-qgood.quality`` too), or a
    variant's chosen quality's."""
    return any(
        _VARIANT.match(spelled) is not None
        for spelled in (name, name.removesuffix(QUALITY_SUFFIX))
    )


#: The option of a name whose width and density the client's hints choose
#: (``w400-ch.auto``): always the last option.
HINTS = "ch"
#: The steps a hinted width is rounded up to: a page's layout may ask for
#: any width, and each one answered is a variant made and stored.
HINT_WIDTH_STEP = 50
#: The hints that may choose a name's output, by what they choose: the
#: current names and the legacy ones (Chromium sent those first).
DPR_HINTS = ("Sec-CH-DPR", "DPR")
WIDTH_HINTS = ("Sec-CH-Width", "Width")


@dataclass(frozen=True)
class Hinted:
    """A name that asks for client hints, read: the name without the option,
    and the hints that choose its output (for ``Vary``)."""

    base: str
    headers: tuple[str, ...]


def hinted(name: str) -> Hinted | None:
    """``name`` read as a name that asks for client hints, or None for any
    other name. `NotCanonical` when the option is not last; `InvalidRequest`
    for a density spelt in it (the client's DPR chooses it)."""
    m = _VARIANT.match(name)
    if m is None:
        return None
    tokens = m["options"].split("-")[1:]
    if HINTS not in tokens:
        return None
    others = [t for t in tokens if t != HINTS]
    size, ext = m["size"], m["ext"]
    if m["dpr"] is not None:
        raise InvalidRequest(
            f"{name!r}: a name with -{HINTS} takes no density: the client's "
            "DPR hint chooses it"
        )
    base = "-".join([size, *others]) + f".{ext}"
    if size == "full_size":
        raise InvalidRequest(
            f"{name!r}: full_size takes no -{HINTS}: its size is the original's"
        )
    if tokens[-1] != HINTS or tokens.count(HINTS) > 1:
        raise NotCanonical(name, "-".join([size, *others, HINTS]) + f".{ext}")
    width_too = size.startswith("w")
    return Hinted(base, DPR_HINTS + WIDTH_HINTS if width_too else DPR_HINTS)


def with_hints(
    hinted: Hinted, dpr: float | None, width: int | None, maximum: int
) -> list[str]:
    """The names a hinted name may stand for, given a client's hints, best
    first, ending with the name itself: a width hint (physical pixels)
    replaces the width of a ``wN`` name, rounded up to `HINT_WIDTH_STEP` and
    at most ``maximum``; otherwise a DPR hint is its density, rounded half
    up to a whole 1 to 4, lowered until the named size fits within
    ``maximum``, then each lower density (what else the density multiplies
    may still pass a bound)."""
    m = _VARIANT.match(hinted.base)
    assert m is not None
    size = m["size"]
    names: list[str] = []
    if width is not None and WIDTH_HINTS[0] in hinted.headers:
        step = -(-width // HINT_WIDTH_STEP) * HINT_WIDTH_STEP
        names.append(at_width(hinted.base, min(step, maximum)))
    elif dpr is not None:
        sides = [int(n) for n in re.findall(r"[0-9]+", size)] or [0]
        density = max(1, min(4, int(dpr + 0.5)))
        while density > 1 and max(sides) * density > maximum:
            density -= 1
        stem, _, ext = hinted.base.rpartition(".")
        names += [f"{stem}@{d}x.{ext}" for d in range(density, 1, -1)]
    return [*names, hinted.base]


def at_width(name: str, width: int | None, like: str | None = None) -> str:
    """A ``wN`` variant name spelt with the width ``width`` (None: the
    width of the name ``like``); any other name as it is."""
    m = _VARIANT.match(name)
    if m is None or not m["size"].startswith("w"):
        return name
    if width is None:
        source = _VARIANT.match(like or "")
        assert source is not None
        return source["size"] + name[len(m["size"]) :]
    return f"w{width}" + name[len(m["size"]) :]


def is_generated(key: str) -> bool:
    """Whether the object at ``key`` is the server's own, never rewritten once stored.

    Variants, originals and info.json live at content-addressed paths; files
    clients store by name may be replaced.
    """
    name = key.rpartition("/")[2]
    return name in (ORIGINAL, INFO) or _server_name(name)


def is_immutable(key: str) -> bool:
    """Whether the object at ``key`` never changes once stored: originals and
    variants, not info.json (the faces are added to it once found, and an
    older image's missing fields) nor a client's file."""
    return is_generated(key) and key.rpartition("/")[2] != INFO


def is_file_name(name: str) -> bool:
    """Whether ``name`` may name a client-supplied file kept beside an image."""
    return (
        _FILE_NAME.match(name) is not None
        and ".." not in name
        # In any case: on a case-insensitive disk "Original" is the original.
        and name.lower() not in RESERVED_NAMES
        and not _server_name(name)
    )


def check_file_name(name: str) -> str:
    """Validate the name of a client-supplied file, saying what is wrong."""
    if not _FILE_NAME.match(name) or ".." in name:
        raise InvalidRequest(
            "file names are 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name.lower() in RESERVED_NAMES or _server_name(name):
        raise InvalidRequest(
            f"the name {name!r} is reserved for the server's own files"
        )
    return name


@functools.lru_cache(maxsize=4096)
def _canonical_under(rules: VariantRules, name: str) -> Variant | None:
    """`VariantRules.canonical`, remembered for the names asked for lately (a
    request parses its name twice, to resolve and to get); names that raise
    are parsed each time."""
    m = _VARIANT.match(name)
    if m is None:
        return None
    fmt = m["ext"]
    if fmt not in rules.extensions and fmt != AUTO:
        raise NotFound(f"extension {fmt!r} is not served")
    try:
        parsed = _parse(
            name, m, rules.default_quality, rules.watermarks, rules.default_level
        )
    except InvalidRequest as e:
        # Every message says which name it is about (a page asks for many).
        if name in str(e):
            raise
        shown = name if len(name) <= 100 else name[:100] + "..."
        raise InvalidRequest(f"{shown!r}: {e}") from None
    variant = _canonical(parsed, rules.maximum_width)
    if m["dpr"] is not None and int(m["dpr"]) > 1:
        _within_density(variant, name, int(m["dpr"]), rules.maximum_width)
    if len(variant.name.encode()) > MAX_NAME_BYTES:
        raise InvalidRequest(
            f"{name[:100]!r}...: its canonical spelling has "
            f"{len(variant.name.encode())} bytes, over the {MAX_NAME_BYTES} a "
            "stored name may have; give fewer options or a shorter text"
        )
    if max(variant.width, variant.height) > rules.maximum_width:
        raise InvalidRequest(
            f"{name!r} is larger than the maximum of {rules.maximum_width} "
            "pixels (--maximum_width)"
        )
    return variant
