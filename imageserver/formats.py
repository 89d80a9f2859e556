"""Every fact about an image format, in one table: adding a format is a row.

Naming (extensions, content types, alpha), imaging (Pillow's names, side
limits, encoder options, the whole-file check) and negotiation (the media
type a client's ``Accept`` names) all read it; no other module spells a
format. Plain data and small functions on bytes; no Pillow import.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from imageserver import headers


def _jpeg_whole(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9"


def _png_whole(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n" and data[-8:] == b"IEND\xaeB`\x82"


def _gif_whole(data: bytes) -> bool:
    return data[:4] == b"GIF8" and data[-1:] == b";"


def _webp_whole(data: bytes) -> bool:
    return (
        data[:4] == b"RIFF"
        and data[8:12] == b"WEBP"
        and int.from_bytes(data[4:8], "little") + 8 == len(data)
    )


def _boxes_fill(data: bytes) -> bool:
    """ISO BMFF (AVIF, HEIF, JPEG XL's container): the top-level boxes' sizes
    add up to the file's."""
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        if size == 1:
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        # Size 0 ("to the end of the file") is never written by the encoders,
        # and is what zeros would read as.
        if size < 8:
            return False
        offset += size
    return offset == len(data)


def _bmff_whole(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and _boxes_fill(data)


#: JPEG XL's two forms: a bare codestream, or boxes in a container.
_JXL_CODESTREAM = b"\xff\x0a"
_JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"


def _jxl_whole(data: bytes) -> bool:
    """A JPEG XL file in its container form, checked like ISO BMFF (what the
    server writes); a bare codestream has no end marker, so only its start is
    checked."""
    if data.startswith(_JXL_CONTAINER):
        return _boxes_fill(data)
    return data.startswith(_JXL_CODESTREAM) and len(data) > 16


@dataclass(frozen=True)
class OutputFormat:
    """A format variants can be encoded in."""

    #: The extension in variant names (``jpg``).
    extension: str
    content_type: str
    #: Pillow's name for it.
    pillow: str
    #: Whether it keeps transparency (else it is flattened onto white).
    alpha: bool
    #: The largest width or height its encoder can write.
    max_side: int
    #: Whether a stored file is whole, from its ends alone (see imaging).
    whole: Callable[[bytes], bool]
    #: Whether ``-qN`` applies.
    lossy: bool = True
    #: Whether an animated source stays animated in this format.
    animation: bool = False
    #: The quality when a name has no ``-qN`` (and ``--default_quality`` is
    #: unset): set per format by bytes at equal fidelity against the peers
    #: (benchmarks/peers.py, docs/performance.md).
    quality: int = 0
    #: Encoder options besides the quality.
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: Who encodes still images: ``pillow``, or ``jpegli`` (RGB JPEG only;
    #: greyscale still goes through Pillow).
    encoder: str = "pillow"
    #: Options an animation's encoder takes instead of ``options``'.
    animation_options: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({})
    )
    #: What ``-q100`` asks of an encoder that refuses 100 as a quality
    #: (libjxl takes it as distance 0, which only its lossless mode encodes).
    full_quality: Mapping[str, Any] | None = None
    #: Pillow's options, besides ``options``, for a quality level's output
    #: of at most `SMALL_LEVEL_PIXELS` (None: as any other).
    small_level_options: Mapping[str, Any] | None = None
    #: Options a still with transparency takes instead of ``options``'.
    alpha_options: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({})
    )
    #: The input format whose own markup this output is, resized (svg: an
    #: SVG original, sanitised), rather than pixels encoded by Pillow; empty
    #: for a raster format.
    markup: str = ""

    def save_options(
        self, quality: int | None, animated: bool = False, alpha: bool = False
    ) -> dict[str, Any]:
        """Pillow's save options for a variant's quality (None: the default),
        for a still or an animation, with transparency or without."""
        options = {
            **self.options,
            **(self.animation_options if animated else {}),
            **(self.alpha_options if alpha and not animated else {}),
        }
        if not self.lossy:
            return options
        quality = quality or self.quality
        if quality == 100 and self.full_quality is not None:
            return {**options, **self.full_quality}
        return {**options, "quality": quality}


_JPEG = OutputFormat(
    "jpg",
    "image/jpeg",
    "JPEG",
    False,
    65500,
    _jpeg_whole,
    quality=84,
    # jpegli encodes RGB; Pillow (greyscale) writes optimised Huffman tables:
    # 5 % smaller at 200 px for 0.2 ms (every peer writes them).
    options=MappingProxyType({"optimize": True}),
    encoder="jpegli",
    # A thumbnail's colour edges are a pixel or two wide: halved chroma
    # (jpegli's 4:2:0) keeps many photographs from any level at 100 pixels
    # wide (astronaut: 60 at q95, 82 in 4:4:4), and costs no fewer bytes
    # at equal score up to about 400x400 (benchmarks/quality.py).
    small_level_options=MappingProxyType({"subsampling": 0}),
)
OUTPUTS: dict[str, OutputFormat] = {
    "jpg": _JPEG,
    "jpeg": replace(_JPEG, extension="jpeg"),
    "png": OutputFormat(
        "png",
        "image/png",
        "PNG",
        True,
        2**31 - 1,
        _png_whole,
        lossy=False,
        animation=True,
    ),
    "gif": OutputFormat(
        "gif", "image/gif", "GIF", True, 65535, _gif_whole, lossy=False, animation=True
    ),
    "webp": OutputFormat(
        "webp",
        "image/webp",
        "WEBP",
        True,
        16383,
        _webp_whole,
        animation=True,
        quality=81,
        # method 6: 3 % fewer bytes at equal fidelity, which puts WebP 6-8 %
        # under the peers'; for 1.0x (w200) to 1.65x (w800) the CPU of a
        # render from a 12 MP JPEG (docs/performance.md).
        options=MappingProxyType({"method": 6}),
        # libwebp's animation encoder at method 6 costs 30 times method 4 on
        # a GIF's flat frames (3.7 s against 0.12 s of CPU for 20 frames of
        # 300x200), for 0.3 % fewer bytes.
        animation_options=MappingProxyType({"method": 4}),
        # At method 6 libwebp compresses the alpha plane losslessly with its
        # most exhaustive search: 11 s of CPU for 384x384 of noisy alpha,
        # 0.03 s at method 4 (the same bytes).
        alpha_options=MappingProxyType({"method": 4}),
    ),
    # libavif's limit.
    "avif": OutputFormat(
        "avif",
        "image/avif",
        "AVIF",
        True,
        65536,
        _bmff_whole,
        animation=True,
        quality=63,
        # 4:4:4 keeps colour edges: 2 % fewer bytes at equal fidelity for
        # about the same encode time (benchmarks/encoders.py).
        options=MappingProxyType({"subsampling": "4:4:4"}),
    ),
    # libjxl's limit is 2**30 a side; the pixel limit binds long before. The
    # container form (a few dozen bytes) lets a cut file be told from a whole.
    "jxl": OutputFormat(
        "jxl",
        "image/jxl",
        "JXL",
        True,
        2**30,
        _jxl_whole,
        quality=81,
        options=MappingProxyType({"use_container": True, "num_threads": 0}),
        full_quality=MappingProxyType({"lossless": True}),
    ),
}


def _svg_whole(data: bytes) -> bool:
    """An SVG the server wrote: its declaration, and its end as written (the
    root's end tag and a line end)."""
    return data.startswith(b"<?xml") and data.endswith(b"</svg>\n")


OUTPUTS["svg"] = OutputFormat(
    "svg",
    "image/svg+xml",
    "SVG",
    True,
    2**31 - 1,
    _svg_whole,
    lossy=False,
    markup="SVG",
)

#: The most pixels of an output `OutputFormat.small_level_options` apply to.
SMALL_LEVEL_PIXELS = 384 * 384


def _drawn_size(data: bytes) -> tuple[int, int] | None:
    """No header reader: a drawn format's size is the rasteriser's probe's."""
    return None


@dataclass(frozen=True)
class InputFormat:
    """A format originals may come in.

    A format whose width and height cannot be read from its header, cheaply
    and without its decoder, is not accepted: some of Pillow's plug-ins
    decode every pixel when the file is opened (JPEG XL's does), so the
    limits must be applied before that (docs/security.md).
    """

    #: Pillow's name for it.
    pillow: str
    #: What info.json reports.
    content_type: str
    #: Width and height from the header, by a bounded walk in plain Python
    #: (`headers`); None when it cannot be read.
    size: Callable[[bytes], tuple[int, int] | None]
    #: Whether its frames are an animation. Otherwise only the first (or the
    #: primary) image is read: a TIFF's other pages, a HEIF's other top-level
    #: images and an MPO's other pictures are never decoded.
    animated: bool = False
    #: For a format drawn by the rasteriser process (SVG, PDF, video) rather
    #: than decoded by Pillow: how its bytes are recognised (Pillow has no
    #: plug-in to ask). Its size comes from the rasteriser's probe, which
    #: reads the document's structure without drawing (docs/security.md).
    sniff: Callable[[bytes], bool] | None = None

    @property
    def drawn(self) -> bool:
        return self.sniff is not None


_SVG_START = re.compile(
    rb"(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]*\?>\s*)?"
    rb"(?:(?:<!--.*?-->|<\?.*?\?>|<!DOCTYPE[^>\[]*(?:\[.*?\])?\s*>)\s*)*"
    rb"<(?:[A-Za-z_][A-Za-z0-9_.-]*:)?svg[\s>/]",
    re.DOTALL,
)


def _svg_sniff(data: bytes) -> bool:
    """An XML document whose root element is ``svg`` (maybe prefixed),
    within its first 64 KB (a declaration, processing instructions, comments
    and a doctype may come first)."""
    return _SVG_START.match(data[:65536]) is not None


def _pdf_sniff(data: bytes) -> bool:
    return data.startswith(b"%PDF-")


#: Major brands of MP4 and of QuickTime.
_MP4_BRANDS = frozenset({b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41",
                         b"mp42", b"avc1", b"M4V ", b"M4VP", b"dash", b"mmp4",
                         b"3gp4", b"3gp5", b"3gp6", b"3g2a", b"f4v "})  # fmt: skip


def _mp4_sniff(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in _MP4_BRANDS


def _mov_sniff(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] == b"qt  "


def _webm_sniff(data: bytes) -> bool:
    """Matroska's EBML header, whose DocType (in its first bytes) is webm."""
    return data[:4] == b"\x1a\x45\xdf\xa3" and b"\x42\x82\x84webm" in data[:64]


#: Input formats decoded, by Pillow's name, in the order Pillow tries them,
#: then those the rasteriser draws. Everything else (EPS, which runs
#: Ghostscript; PSD; ...) is refused before a decoder runs.
INPUTS: dict[str, InputFormat] = {
    row.pillow: row
    for row in (
        InputFormat("JPEG", "image/jpeg", headers.jpeg),
        InputFormat("PNG", "image/png", headers.png, animated=True),
        InputFormat("GIF", "image/gif", headers.gif, animated=True),
        InputFormat("WEBP", "image/webp", headers.webp, animated=True),
        InputFormat("AVIF", "image/avif", headers.bmff, animated=True),
        InputFormat("TIFF", "image/tiff", headers.tiff),
        InputFormat("BMP", "image/bmp", headers.bmp),
        InputFormat("HEIF", "image/heif", headers.bmff),
        InputFormat("JXL", "image/jxl", headers.jxl),
        InputFormat("SVG", "image/svg+xml", _drawn_size, sniff=_svg_sniff),
        InputFormat("PDF", "application/pdf", _drawn_size, sniff=_pdf_sniff),
        InputFormat("MP4", "video/mp4", _drawn_size, animated=True, sniff=_mp4_sniff),
        InputFormat(
            "MOV", "video/quicktime", _drawn_size, animated=True, sniff=_mov_sniff
        ),
        InputFormat(
            "WEBM", "video/webm", _drawn_size, animated=True, sniff=_webm_sniff
        ),
    )
}
#: Formats whose decoder applies the file's own orientation (HEIF's irot and
#: imir, JPEG XL's codestream field, a video's display matrix, a PDF page's
#: rotation): EXIF's is not applied again.
ORIENTED_BY_DECODER = frozenset(
    {"HEIF", "JXL", *(name for name, row in INPUTS.items() if row.drawn)}
)
#: Formats whose EXIF is read without decoding the pixels (and that draft):
#: JPEG, and MPO (JPEG with more pictures appended).
EXIF_FIRST = frozenset({"JPEG", "MPO"})
#: HEIF files whose brand says HEVC (the iPhone's) are reported as HEIC.
HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"})


#: Every Content-Type info.json may report for an original.
INPUT_CONTENT_TYPES = frozenset(
    {"image/heic", *(row.content_type for row in INPUTS.values())}
)


def content_type_of(pillow: str, data: bytes) -> str:
    """What info.json reports for an original Pillow opened as ``pillow``."""
    if pillow == "HEIF" and data[8:12] in HEIC_BRANDS:
        return "image/heic"
    row = INPUTS.get(pillow)
    return "application/octet-stream" if row is None else row.content_type


def output(extension: str) -> OutputFormat:
    """The row for a variant's extension; KeyError for one there is not."""
    return OUTPUTS[extension]


def content_types() -> dict[str, str]:
    """Extension -> Content-Type of every output format."""
    return {ext: f.content_type for ext, f in OUTPUTS.items()}


def has_alpha(extension: str) -> bool:
    return OUTPUTS[extension].alpha


_plugins_registered = False


def register_plugins() -> None:
    """Teach Pillow HEIF and JPEG XL, and have every codec work on one
    thread at a time (libheif decodes on one of its own while its caller
    waits); idempotent, called before decoding.

    A job is one thread of a pool with one per core: a codec's own threads
    (libavif, libheif and libjxl start one a core) would let one request
    keep every core busy, past the CPU docs/security.md states for a job."""
    global _plugins_registered
    if _plugins_registered:
        return
    import pillow_heif  # type: ignore[import-untyped]
    import pillow_jxl  # type: ignore[import-untyped]  # noqa: F401 (registers JXL)
    from PIL import AvifImagePlugin
    from pillow_jxl import JpegXLImagePlugin  # type: ignore[import-untyped]

    pillow_heif.register_heif_opener()
    pillow_heif.options.DECODE_THREADS = 1
    AvifImagePlugin.DEFAULT_MAX_THREADS = 1  # decoding and encoding
    JpegXLImagePlugin.DECODE_THREADS = 0  # none of its own (1 is one more)
    _plugins_registered = True
