"""Pillow work: plain blocking functions, no Twisted.

Callers run these in a worker thread. Pillow releases the GIL while it decodes,
resizes and encodes, so a pool of N threads uses N cores.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from io import BytesIO

import pyjpegli
from PIL import (
    Image,
    ImageCms,
    ImageFile,
    ImageOps,
    UnidentifiedImageError,
)

from imageserver import formats
from imageserver.errors import (
    ImageTooLarge,
    InvalidRequest,
    NotAnImage,
    UnsupportedImage,
)
from imageserver.imaging import (
    analysis,
    containers,
    documents,
    effects,
    faces,
    geometry,
    likeness,
    perception,
    placeholders,
    svg,
)
from imageserver.naming import QUALITY_LEVELS, Fit, Variant

#: Input formats we decode (Pillow's names); nothing else reaches a decoder.
INPUT_FORMATS = tuple(formats.INPUTS)

#: How many times the output's pixels (per side) a drafted decode keeps at
#: least, so that the resize has detail to keep. At 1 a JPEG decoded at a
#: reduced scale is soft (SSIMULACRA2 61 for x300 of a 12 MP photo); at 1.5
#: it keeps 86-90, and a w200 JPEG at the default quality scores 7-9 points
#: above thumbor's and libvips' (IPX's), where 2 cost up to 1.7x the CPU on
#: small originals for about +1 point (docs/performance.md).
DRAFT_HEADROOM = 1.5

#: A reduction resamples with BICUBIC after a box reduction to 3x the target:
#: after a drafted decode it scores within half a point of LANCZOS
#: (SSIMULACRA2) for two thirds of the taps, the resize being the largest
#: cost of a small original's variant. Enlarging keeps LANCZOS.
REDUCING_FILTER = Image.Resampling.BICUBIC
ENLARGING_FILTER = Image.Resampling.LANCZOS
_REDUCING_GAP = 3.0

#: What Pillow's decoders raise for a broken file (its AVIF plugin raises
#: RuntimeError, its GIF plugin IndexError for an extension block cut
#: short); caught only around Pillow's own calls.
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    RuntimeError,
    IndexError,
)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112


#: All frames of an animation together may have this many times
#: --max_source_pixels (frames x width x height): decoding them costs about
#: 25 ms of CPU a megapixel, so at the default at most 2.5 s.
ANIMATION_PIXEL_FACTOR = 2

#: Pixels any original may have, however few bytes it takes: the
#: pixels-per-byte limit applies above this.
FREE_PIXELS = 4_000_000
#: Pillow refuses more than this whatever it is told (twice its warning
#: threshold), so --max_source_pixels can be no larger.
DECODER_MAX_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)


@dataclass(frozen=True, slots=True)
class Limits:
    """What decoding one original may cost (docs/security.md lists them)."""

    #: Pixels of an original, read from its header (--max_source_pixels).
    pixels: int
    #: Pixels each byte of the file may stand for, above `FREE_PIXELS`
    #: (--max_pixels_per_byte); 0: no such limit.
    pixels_per_byte: int = 0
    #: The tallest a width-only variant may be (--maximum_width); None: any.
    side: int | None = None
    #: Frames of an animation kept (--max_animation_frames); more, and the
    #: first frame is served alone.
    frames: int = 300
    #: What drawing an SVG, a PDF page or a video frame may cost.
    documents: documents.DocumentLimits = field(
        default_factory=documents.DocumentLimits
    )


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What ``info.json`` reports: the size as displayed (EXIF orientation applied)."""

    width: int
    height: int
    content_type: str
    #: BlurHash, ThumbHash and dominant colour, when asked for.
    placeholders: dict[str, str] | None = None
    #: The perceptual hash (`likeness.phash`), with the placeholders.
    phash: str | None = None
    #: Frames, and for an animation its length; 1 and None for a still.
    frames: int = 1
    duration_ms: int | None = None
    #: Why an animation is served as its first frame alone, or None.
    still_because: str | None = None
    #: The quality a byte budget (``maxbytes``) or a level (``qgood``) chose,
    #: by variant name, with the score it keeps (None where a budget lowered
    #: the quality below a level's choice, or there was no level).
    chosen_qualities: dict[str, tuple[int, float | None]] | None = None
    #: The faces found, when looked for (in the displayed pixels, the
    #: largest first); None when not looked for.
    faces: tuple[geometry.Box, ...] | None = None
    #: What the rasteriser read of a drawn original (pages, a video's
    #: length, frame rate and codec); None for an image.
    document: documents.Probe | None = None


def probe(data: bytes, limits: Limits) -> ImageInfo:
    """Check that ``data`` is a whole, decodable image and describe it, with
    its placeholders.

    The image is fully decoded (at 1/8 scale for JPEG, which still reads every
    byte), so a truncated or corrupt file is refused here, not on first use.
    """
    info, _ = render_many(data, (), limits, with_placeholders=True)
    return info


def render(data: bytes, variant: Variant, limits: Limits) -> bytes:
    """Encode one variant of the original ``data``."""
    return render_many(data, (variant,), limits)[1][0]


#: What names a stage of the work for whoever watches it (tracing):
#: ``stage(name, attributes)`` is a context manager around the stage.
Stage = Callable[..., AbstractContextManager[object]]


def _unwatched(
    name: str, attributes: Mapping[str, str] | None = None
) -> AbstractContextManager[object]:
    return nullcontext()


def render_many(
    data: bytes,
    variants: Sequence[Variant],
    limits: Limits,
    with_placeholders: bool = False,
    marks: Mapping[str, bytes] | None = None,
    stage: Stage | None = None,
    known_faces: Sequence[geometry.Box] | None = None,
    with_faces: bool = False,
) -> tuple[ImageInfo, list[bytes]]:
    """Decode ``data`` once for each picture the variants pick (a PDF's page,
    a video's time: most originals have one) and encode every variant from
    it, in order; see `_render_picked`. The info, placeholders and faces are
    the default picture's (a PDF's first page, a video's poster)."""
    resized = [i for i, v in enumerate(variants) if formats.output(v.format).markup]
    if resized:  # an SVG's own markup: kept apart, no pixels drawn
        kept = dict(zip(resized, _markup(data, [variants[i] for i in resized], limits),
                        strict=True))  # fmt: skip
        rest = [i for i in range(len(variants)) if i not in kept]
        whole, drawn = render_many(data, [variants[i] for i in rest], limits,
                                   with_placeholders, marks, stage, known_faces,
                                   with_faces)  # fmt: skip
        kept.update(zip(rest, drawn, strict=True))
        return whole, [kept[index] for index in range(len(variants))]
    default = documents.Pick()
    groups: dict[documents.Pick, list[int]] = {}
    for index, variant in enumerate(variants):
        groups.setdefault(documents.Pick.of(variant), []).append(index)
    if set(groups) <= {default}:
        return _render_picked(data, variants, limits, with_placeholders, marks,
                              stage, known_faces, with_faces)  # fmt: skip
    outputs: dict[int, bytes] = {}
    info: ImageInfo | None = None
    chosen: dict[str, tuple[int, float | None]] = {}
    if default in groups or with_placeholders or with_faces:
        indices = groups.pop(default, [])
        picked = [variants[i] for i in indices]
        info, made = _render_picked(data, picked, limits, with_placeholders,
                                    marks, stage, known_faces, with_faces)  # fmt: skip
        outputs.update(zip(indices, made, strict=True))
        chosen.update(info.chosen_qualities or {})
    for pick, indices in groups.items():
        picked = [variants[i] for i in indices]
        other, made = _render_picked(data, picked, limits, False, marks, stage,
                                     None, False, pick)  # fmt: skip
        # Faces found on another picture are not the original's.
        info = info or replace(other, faces=None)
        outputs.update(zip(indices, made, strict=True))
        chosen.update(other.chosen_qualities or {})
    assert info is not None
    info = replace(info, chosen_qualities=chosen or None)
    return info, [outputs[index] for index in range(len(variants))]


#: What an svg variant may ask of its SVG: where it shows and how large,
#: nothing that needs pixels (the fields of `Variant` set to anything but
#: their defaults, named as in a message).
_MARKUP_REFUSED = {
    "smart": "smart", "faces": "faces", "trim": "trim", "rotate": "r90, r180, r270",
    "flip": "flip", "flop": "flop", "blur": "blur", "sharp": "sharp", "gray": "gray",
    "brightness": "brightness", "contrast": "contrast", "saturation": "saturation",
    "corner_radius": "round", "circle": "circle", "pixelboxes": "pixelbox",
    "blurboxes": "blurbox", "pixelate": "pixelate", "background": "bg",
    "watermark": "wm", "text": "text", "page": "page", "time_ms": "t",
    "time_percent": "t",
}  # fmt: skip
#: The most bytes an svg variant's SVG may have: each name is a copy of it.
MAX_SVG_VARIANT_BYTES = 2 * 1024 * 1024


def _markup(data: bytes, variants: Sequence[Variant], limits: Limits) -> list[bytes]:
    """svg variants: the SVG original, sanitised, showing what each variant's
    plan keeps at its size (`svg.resized`)."""
    rows = _candidates(data)
    needed = formats.output(variants[0].format).markup  # the format table's
    if not rows or rows[0].pillow != needed:
        kind = rows[0].pillow if rows else "not an image"
        raise InvalidRequest(
            f"an {variants[0].format} variant is made of an {needed} original; "
            f"this original is {kind}: ask for png, webp or avif"
        )
    document = _open(data, limits)
    assert isinstance(document, documents.Document)
    width, height = document.size
    cleaned = documents.cleaned_svg(data, limits.documents)
    if len(cleaned) > MAX_SVG_VARIANT_BYTES:
        raise ImageTooLarge(
            f"svg variants are made of SVGs of at most {MAX_SVG_VARIANT_BYTES} "
            f"bytes, and this one is {len(cleaned)} once sanitised: ask for png, "
            "webp or avif"
        )
    blank = Variant("", Fit.FULL, 0, 0, 0, "svg")
    made = []
    for variant in variants:
        asked = [word for field, word in _MARKUP_REFUSED.items()
                 if getattr(variant, field) != getattr(blank, field)]  # fmt: skip
        if asked:
            raise InvalidRequest(
                f"{variant.name!r}: an svg variant is the SVG resized: sizes, fit, "
                "pad, noup, crops, gravities and fp apply, "
                f"not {', '.join(asked)} (ask for png, webp or avif)"
            )
        plan = geometry.plan(variant, width, height)
        _check_output(variant, plan.output_size, width, height, limits)
        left, top = plan.region[:2]
        box = plan.box
        source_box = (left + box[0], top + box[1], left + box[2], top + box[3])
        made.append(
            svg.resized(
                cleaned,
                (document.probe.width, document.probe.height),
                (width, height),
                source_box,
                plan.size,
                plan.canvas,
                plan.offset,
                variant.pad_colour(True) if plan.canvas is not None else None,
            )
        )
    return made


def _render_picked(
    data: bytes,
    variants: Sequence[Variant],
    limits: Limits,
    with_placeholders: bool = False,
    marks: Mapping[str, bytes] | None = None,
    stage: Stage | None = None,
    known_faces: Sequence[geometry.Box] | None = None,
    with_faces: bool = False,
    pick: documents.Pick | None = None,
) -> tuple[ImageInfo, list[bytes]]:
    """Decode ``data`` once and encode every variant from it, in order; with
    ``with_placeholders``, the info carries them and the perceptual hash, made
    from the same decode.
    ``marks``: the originals of the variants' watermarks, by md5. ``stage``
    wraps the decode, each variant's resize and each encode (tracing).

    ``known_faces``: the original's faces, found before (info.json keeps
    them). Without them, they are looked for when asked (``with_faces``) or
    when a ``smart`` or ``faces`` crop needs them, and the info carries what
    was found."""
    stage = stage or _unwatched
    for variant in variants:  # a text the font cannot draw: before decoding
        if variant.text is not None:
            try:
                effects.check_text(variant.text.text)
            except InvalidRequest as e:
                raise InvalidRequest(f"{variant.name[:100]!r}: {e}") from None
    decoded_marks = {
        v.watermark.hash: _mark(marks or {}, v.watermark.hash, limits)
        for v in variants
        if v.watermark is not None
    }
    with stage("decode"):
        image = _open(data, limits, pick)
        orientation = _orientation(image)
        width, height = image.size
        if orientation in _SWAPPING_ORIENTATIONS:
            width, height = height, width
        info = ImageInfo(
            width,
            height,
            formats.content_type_of(image.format or "", data),
            document=image.probe if isinstance(image, documents.Document) else None,
        )
        # Plans before looking at the pixels (trim and smart refine them later):
        # the limits, and how far a decoder may shrink while it decodes.
        plans = [geometry.plan(v, width, height) for v in variants]
        for variant, plan in zip(variants, plans, strict=True):
            _check_output(variant, plan.output_size, width, height, limits)
        finds_faces = known_faces is None and (
            with_faces
            or any(
                v.wants_faces and (p.crops or v.trim)
                for v, p in zip(variants, plans, strict=True)
            )
        )

        # Decode only as many pixels as the largest variant needs: JPEG can decode
        # straight to 1/2, 1/4 or 1/8 scale, which is most of the speed. What trim
        # keeps is not known yet: it gets twice the pixels. A drawn original
        # comes at the size itself: a vector loses no detail, and a video's
        # frame is scaled by FFmpeg's area filter, which keeps what it can.
        drawn = isinstance(image, documents.Document)
        headroom = 1.0 if drawn else DRAFT_HEADROOM
        needs = [
            _times(p.decode_size(width, height), headroom * (2 if v.trim else 1))
            for v, p in zip(variants, plans, strict=True)
        ] or [(8, 8)]
        if finds_faces:  # the copy faces are looked for in, at least
            needs.append(faces.copy_size((width, height)))
        if with_placeholders:  # the decode the hash is made of, at least
            needs.append(_plain_need(width, height))
        need = (max(w for w, _ in needs), max(h for _, h in needs))
        if orientation in _SWAPPING_ORIENTATIONS:
            need = (need[1], need[0])
        if drawn and plans:
            _check_drawing(image, need, variants, plans)
        icc = image.info.get("icc_profile")
        opened, opened_size = image, image.size
        with _decode_errors():
            animation, still_because = None, None
            if with_placeholders or any(
                formats.output(v.format).animation for v in variants
            ):
                animation, still_because = _animation(
                    image, data, width, height, limits
                )
            image.draft(image.mode, need)
            drafted = image.size
            image.load()
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
            base, has_alpha = _normalise_mode(image)
            plain = base
            if with_placeholders:
                plain_need = _plain_need(width, height)
                if orientation in _SWAPPING_ORIENTATIONS:
                    plain_need = (plain_need[1], plain_need[0])
                plain = (
                    _plain_decode(data, limits, drafted, plain_need, orientation)
                    or base
                )
    if animation is not None:
        info = replace(
            info, frames=len(animation.durations), duration_ms=animation.duration
        )
        for variant, plan in zip(variants, plans, strict=True):
            if formats.output(variant.format).animation:
                _check_animated_output(
                    variant, plan.output_size, len(animation.durations), limits
                )
                _check_budget(
                    variant, plan.output_size, len(animation.durations), limits
                )
        has_alpha = True  # frames may uncover the background
    if info.document is not None and info.document.seconds is not None:
        # A video's own length and frames, not its preview's.
        info = replace(
            info,
            frames=info.document.frames or 1,
            duration_ms=round(info.document.seconds * 1000),
        )
    info = replace(info, still_because=still_because)
    source = _Source(base, width, height, has_alpha, icc)
    source.marks = decoded_marks
    source.faces = list(known_faces or ())
    if finds_faces:
        with stage("faces"):
            source.faces = faces.detect(base, (width, height))
        info = replace(info, faces=tuple(source.faces))
    if with_placeholders:
        small = plain.copy()
        small.thumbnail((placeholders.SIDE, placeholders.SIDE), Image.Resampling.BOX)
        small = _to_srgb(small, icc, "RGBA" if has_alpha else "RGB")
        info = replace(
            info,
            placeholders=placeholders.placeholders(small),
            phash=likeness.phash(plain),
        )
    outputs = []
    chosen: dict[str, tuple[int, float | None]] = {}
    for variant in variants:
        encode: Callable[[Variant], bytes]
        named = {"imageserver.variant": variant.name}
        if animation is not None and formats.output(variant.format).animation:
            with _decode_errors(), stage("resize", named):
                frames = _frames(
                    opened, opened_size, source, variant, orientation, animation
                )
                if variant.max_bytes:  # encoded more than once: kept
                    made = list(frames)
                    work = len(made) * made[0].width * made[0].height
                    encode = partial(_encode_frames, made, animation)
                    first, animated = made[0], True
                else:  # frames made as they are encoded: one stage
                    if variant.level:  # its quality chosen on the first
                        frames = iter(frames)
                        first = next(frames)
                        with stage("quality", named):
                            choice, _ = _by_look(first, variant, animated=True)
                        chosen[variant.name] = _told(choice, variant)
                        variant = replace(variant, quality=chosen[variant.name][0])
                        frames = itertools.chain([first], frames)
                    outputs.append(_encode_animation(frames, variant, animation))
                    continue
        else:
            with stage("resize", named):
                pixels = source.render(variant)
            work = pixels.width * pixels.height
            encode = partial(_encode, pixels, small=_small_level(variant, pixels.size))
            first, animated = pixels, False
        found: perception.Choice | None = None
        if variant.level:
            with stage("quality", named):
                judged, whole = _by_look(first, variant, animated)
            quality, score = _told(judged, variant)
            # Its encodes were the output's own only when it searched it all.
            data = judged.data if judged is not None and whole and not animated else b""
            found = perception.Choice(quality, score, data)
        with stage("encode", named):
            outputs.append(_encoded(encode, variant, work, found, limits, chosen))
    if chosen:
        info = replace(info, chosen_qualities=chosen)
    return info, outputs


def _encoded(
    encode: Callable[[Variant], bytes],
    variant: Variant,
    work: int,
    choice: perception.Choice | None,
    limits: Limits,
    chosen: dict[str, tuple[int, float | None]],
) -> bytes:
    """The variant's bytes, by ``encode``: at its quality, or its level's
    ``choice`` (whose encoding is the output's where it has one); within its
    byte budget. What a level or a budget chose goes into ``chosen``, with
    the score where known."""
    score: float | None = None
    if choice is not None:
        variant = replace(variant, quality=choice.quality)
        score = choice.score
    if variant.max_bytes:
        encodes = min(MAX_BUDGET_ENCODES, limits.pixels // work)
        data, quality = _encode_within(encode, variant, encodes)
        chosen[variant.name] = (quality, score if quality == variant.quality else None)
        return data
    if choice is None:
        return encode(variant)
    chosen[variant.name] = (choice.quality, score)
    return choice.data or encode(variant)


def _by_look(
    image: Image.Image, variant: Variant, animated: bool = False
) -> tuple[perception.Choice | None, bool]:
    """The level's search (imaging.perception) on what the encoder is given,
    or a sample of it; and whether it searched the whole picture. None for
    a picture (or a sample) under `perception.SMALLEST` pixels a side, which
    SSIMULACRA2 cannot judge: it takes the format's default quality."""
    output = formats.output(variant.format)
    if variant.background is not None or not output.alpha:
        image = effects.flattened(image, variant.background or (255, 255, 255))
    sample = perception.probe(image)
    if min(sample.size) < perception.SMALLEST:
        return None, False
    target = QUALITY_LEVELS[variant.level]
    if sample is not image:
        target += perception.SAMPLE_MARGIN
    small = _small_level(variant, image.size)

    def encode(quality: int) -> bytes:
        return _encode(sample, replace(variant, quality=quality), small, animated)

    choice = perception.choose(sample, encode, _decoded, target, output.quality)
    return choice, sample is image


def _told(
    choice: perception.Choice | None, variant: Variant
) -> tuple[int, float | None]:
    """The quality a level chose and its score; the format's default and no
    score where the picture was too small to judge."""
    if choice is None:
        return formats.output(variant.format).quality, None
    return choice.quality, choice.score


def _decoded(data: bytes) -> Image.Image:
    """An encoding the server just made, decoded to be judged."""
    image = Image.open(BytesIO(data))
    image.load()
    return image


#: The box a decode for the upload's own fields covers at least (a JPEG
#: decoded at a reduced scale is no smaller): the hash of a smaller decode
#: strayed from that of the whole picture.
PLAIN_SIDE = 256


def _plain_need(width: int, height: int) -> geometry.Size:
    """What the upload's own fields ask of a decoder that shrinks while it
    decodes: the picture scaled to fit `PLAIN_SIDE` square, ratio kept."""
    scale = min(1.0, PLAIN_SIDE / max(width, height))
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def _plain_decode(
    data: bytes,
    limits: Limits,
    drafted: geometry.Size,
    need: geometry.Size,
    orientation: int,
) -> Image.Image | None:
    """The picture as an upload without outputs decodes it (a JPEG at the
    smallest scale that covers ``need``), when this decode was larger
    (outputs or faces asked for more); None when it is the same. The
    placeholders and the perceptual hash are made of it, so the same bytes
    get the same ones whatever else their upload asked for (a hash from a
    larger decode moved 12-20 bits on some pictures)."""
    again = _open(data, limits)
    again.draft(again.mode, need)
    if again.size == drafted:
        return None
    again.load()
    if orientation != 1:
        again = ImageOps.exif_transpose(again)
    return _normalise_mode(again)[0]


def cover_box(
    image: Image.Image, variant: Variant, known_faces: Sequence[geometry.Box]
) -> geometry.Box:
    """The box of ``image`` (an original as displayed, decoded whole) a
    cover crop of ``variant`` keeps, placed as a render places it with
    ``known_faces``: what tests and benchmarks check ``smart`` and ``faces``
    by."""
    source = _Source(image, image.width, image.height, False, None)
    source.faces = list(known_faces)
    content = source.content(variant)
    focus = source.focus(variant)
    return geometry.plan(variant, image.width, image.height, content, focus).box


@dataclass(frozen=True, slots=True)
class _Animation:
    durations: list[int]
    loop: int

    @property
    def duration(self) -> int:
        return sum(self.durations)


def _animation(
    image: Image.Image, data: bytes, width: int, height: int, limits: Limits
) -> tuple[_Animation | None, str | None]:
    """The animation's frames and timing, when it is kept; else why not.

    Frames and durations are read from the file's structure (GIF graphic
    controls, WebP and APNG frame chunks), reading one frame past the limit
    and no further, so a file of 100,000 frames costs no more than the limit;
    AVIF declares its frame count, and each frame's duration comes with it.
    """
    row = formats.INPUTS.get(image.format or "")
    if row is None or not row.animated or not getattr(image, "is_animated", False):
        return None, None
    if isinstance(image, documents.Document):  # a video's preview
        count = image.n_frames
        return _Animation([documents.PREVIEW_FRAME_MS] * count, 0), None
    pixels, why = _animation_pixels(len(data), limits)
    budget = min(limits.frames, pixels // (width * height))
    durations = containers.frame_durations(data, budget)
    count = len(durations) if durations is not None else int(image.n_frames)  # type: ignore[attr-defined]
    if count > budget:
        limit = (
            f"at most {limits.frames} frames"
            if budget == limits.frames
            else f"at most {pixels} pixels in all frames: {why}"
        )
        frames = f"{budget} frame{'' if budget == 1 else 's'}"
        return None, f"more than {frames} of {width}x{height} ({limit})"
    if durations is None:
        durations = []
        for index in range(count):
            _seek(image, index, (width, height))
            image.load()  # an AVIF frame's duration comes with its pixels
            durations.append(int(image.info.get("duration") or 0))
        image.seek(0)
    loop = int(image.info.get("loop", 0) or 0)
    # A zero delay is shown as 100 ms by browsers.
    return _Animation([d or 100 for d in durations], loop), None


def _animation_pixels(size: int, limits: Limits) -> tuple[int, str]:
    """The pixels all decoded frames of a ``size``-byte animation may have
    together, and what sets that: the pixel limit, or (as for a still,
    `_check_pixels`) what its bytes can stand for, so a few KB cannot ask
    for seconds of decoding."""
    most = limits.pixels * ANIMATION_PIXEL_FACTOR
    if limits.pixels_per_byte:
        justified = max(FREE_PIXELS, size * limits.pixels_per_byte)
        if justified < most:
            return justified, (
                f"{limits.pixels_per_byte} pixels per byte of its {size} bytes"
            )
    return most, f"{ANIMATION_PIXEL_FACTOR} x {limits.pixels}"


def _seek(image: Image.Image, index: int, size: geometry.Size) -> None:
    """Go to frame ``index``, refusing one larger than the checked size before
    its pixels are decoded (Pillow grows a GIF's canvas to a later frame's
    extent)."""
    image.seek(index)
    width, height = image.size
    if width * height > size[0] * size[1]:
        raise UnsupportedImage(
            f"frame {index + 1} of the animation is {width}x{height}, larger "
            f"than the image's {size[0]}x{size[1]}"
        )


def _frames(
    image: Image.Image,
    size: geometry.Size,
    first: _Source,
    variant: Variant,
    orientation: int,
    animation: _Animation,
) -> Iterator[Image.Image]:
    """The variant of every frame, one decoded frame at a time, all with the
    first frame's trim box and smart crop, so the picture does not jump.
    ``size`` is the one checked from the header."""
    focus = first.focus(variant)
    drawn = image.preview() if isinstance(image, documents.Document) else None
    for index in range(len(animation.durations)):
        if drawn is not None:
            frame = drawn[index].convert("RGBA")
        else:
            _seek(image, index, size)
            frame = image.convert("RGBA")
        if orientation != 1:
            frame = _oriented(frame, orientation)
        source = _Source(frame, first.width, first.height, True, first.icc)
        source.adopt(first)
        yield source.render(variant, focus)
    image.seek(0)


_ORIENTATIONS = {
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_270],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_90],
}


def _oriented(frame: Image.Image, orientation: int) -> Image.Image:
    for step in _ORIENTATIONS.get(orientation, []):
        frame = frame.transpose(step)
    return frame


def _encode_frames(
    frames: list[Image.Image], animation: _Animation, variant: Variant
) -> bytes:
    return _encode_animation(iter(frames), variant, animation)


def _encode_animation(
    frames: Iterator[Image.Image], variant: Variant, animation: _Animation
) -> bytes:
    output = formats.output(variant.format)
    if variant.background is not None:  # every frame flattened, as a still
        frames = (effects.flattened(f, variant.background) for f in frames)
    first = next(frames)
    # Frames are made as the encoder takes them, so the decoded frames are
    # never all in memory; Pillow's APNG encoder alone wants a list.
    rest: Iterable[Image.Image] = list(frames) if output.pillow == "PNG" else frames
    out = BytesIO()
    first.save(
        out,
        output.pillow,
        save_all=True,
        append_images=rest,
        duration=animation.durations,
        loop=animation.loop,
        **output.save_options(variant.quality, animated=True),
    )
    return out.getvalue()


class _Source:
    """The decoded original, and what each variant needs of it.

    ``width`` x ``height`` is the original's (oriented) size, which plans are
    made for; the decoded image may be smaller (drafted).
    """

    def __init__(
        self,
        image: Image.Image,
        width: int,
        height: int,
        has_alpha: bool,
        icc: bytes | None,
    ) -> None:
        self.image = image
        self.width = width
        self.height = height
        self.has_alpha = has_alpha
        self.icc = icc
        #: What trim keeps of each region (found once a region).
        self._contents: dict[geometry.Box, geometry.Box | None] = {}
        #: The watermarks' pictures (RGBA), by md5.
        self.marks: dict[str, Image.Image] = {}
        #: The faces in the original (in its pixels), the largest first.
        self.faces: list[geometry.Box] = []

    def content(self, variant: Variant) -> geometry.Box | None:
        """What trim keeps of the variant's region (its crop box, or all),
        in the original's pixels; None without trim."""
        if not variant.trim:
            return None
        region = geometry.crop_region(variant, self.width, self.height)
        if region not in self._contents:
            box = analysis.content_box(self._region(region))
            if box is not None:
                decoded = self._region(region).size
                left, top, right, bottom = _outward(
                    box, decoded, (region[2] - region[0], region[3] - region[1])
                )
                box = (
                    region[0] + left,
                    region[1] + top,
                    region[0] + right,
                    region[1] + bottom,
                )
            self._contents[region] = box
        return self._contents[region]

    def adopt(self, other: _Source) -> None:
        """Use ``other``'s trim boxes, watermarks and faces (a later frame
        of the same animation)."""
        self._contents = other._contents
        self.marks = other.marks
        self.faces = other.faces

    def focus(self, variant: Variant) -> tuple[float, float] | None:
        """Where ``smart`` or ``faces`` centres the crop (None for other
        variants): on the faces, else (``smart``) where the attention score
        is highest, or (``faces``) in the middle."""
        if not variant.wants_faces:
            return None
        content = self.content(variant)
        region = content or geometry.crop_region(variant, self.width, self.height)
        # The crop's size does not depend on where it goes.
        left, top, right, bottom = geometry.plan(
            variant, self.width, self.height, content
        ).box
        region_w, region_h = _turned_size(region, variant)
        if right - left < region_w:
            axis, length, window = 0, region_w, right - left
        elif bottom - top < region_h:
            axis, length, window = 1, region_h, bottom - top
        else:
            return 0.5, 0.5  # the crop is all of it
        spans = []
        for face in self.faces:
            box = geometry.in_turned_region(variant, region, face)
            if box is not None:
                area = (box[2] - box[0]) * (box[3] - box[1])
                spans.append((box[axis], box[axis + 2], area))
        along = analysis.around_faces(spans, length, window)
        if along is not None:
            return (along, 0.5) if axis == 0 else (0.5, along)
        if variant.faces:
            return 0.5, 0.5
        crop = ((right - left) / region_w, (bottom - top) / region_h)
        return analysis.attention(_turn(self._region(region), variant), crop)

    def render(
        self, variant: Variant, focus: tuple[float, float] | None = None
    ) -> Image.Image:
        """The variant's pixels: geometry, then canvas and effects, in sRGB.

        ``focus`` is smart's point when already found (an animation's frames
        share the first frame's).
        """
        content = self.content(variant)
        region = content or geometry.crop_region(variant, self.width, self.height)
        turned = _turn(self._region(region), variant)
        if variant.wants_faces and focus is None:
            focus = self.focus(variant)
        plan = geometry.plan(variant, self.width, self.height, content, focus)
        image = _execute(turned, plan)
        has_alpha = self.has_alpha
        grey = self.image.mode == "L" and not has_alpha
        if plan.canvas is not None:
            colour = variant.pad_colour(formats.output(variant.format).alpha)
            has_alpha = has_alpha or colour[3] < 255
            # A grey picture stays grey on a grey canvas only.
            grey = grey and colour[3] == 255 and colour[0] == colour[1] == colour[2]
            image = _to_srgb(image, self.icc, _mode(has_alpha, grey))
            fill = colour[:1] if grey else colour[: len(image.mode)]
            canvas = Image.new(image.mode, plan.canvas, fill)
            if image.mode == "RGBA":
                # Composited over the canvas (a masked paste would blend the
                # picture's alpha into itself: half-transparent red on a
                # transparent canvas came out quarter-transparent dark red).
                layer = Image.new("RGBA", plan.canvas)
                layer.paste(image, plan.offset)
                image = Image.alpha_composite(canvas, layer)
            else:
                canvas.paste(image, plan.offset)
                image = canvas
        else:
            image = _to_srgb(image, self.icc, _mode(has_alpha, grey))
        # The order of docs/api.md: adjust, redact, mask, pixelate (then
        # flatten on the background, as the encoder is given it).
        image = effects.adjusted(image, variant)
        if variant.pixelboxes or variant.blurboxes:
            image = effects.redacted(
                image,
                _placed(plan, variant.pixelboxes),
                _placed(plan, variant.blurboxes),
            )
        image = effects.masked(image, variant)
        if variant.watermark is not None:
            image = effects.watermarked(
                image, self.marks[variant.watermark.hash], variant.watermark
            )
        if variant.text is not None:
            image = effects.captioned(image, variant.text)
        return effects.pixelated(image, variant.pixelate)

    def _region(self, region: geometry.Box) -> Image.Image:
        """``region`` (in the original's pixels) of the decoded image."""
        if region == (0, 0, self.width, self.height):
            return self.image
        box = _outward(region, (self.width, self.height), self.image.size)
        return self.image.crop(box)


#: The most pixels a watermark's picture may have (it is decoded for each
#: render that lays it): checked at start-up, refused here too.
MAX_WATERMARK_PIXELS = 4_000_000


def _mark(marks: Mapping[str, bytes], digest: str, limits: Limits) -> Image.Image:
    """A watermark's picture, decoded (oriented, RGBA); `ImageTooLarge` past
    `MAX_WATERMARK_PIXELS`."""
    data = marks[digest]
    with _decode_errors():
        image = _open(data, limits)
        if image.width * image.height > MAX_WATERMARK_PIXELS:
            raise ImageTooLarge(
                f"a watermark has at most {MAX_WATERMARK_PIXELS} pixels"
            )
        image = ImageOps.exif_transpose(image)
        return image.convert("RGBA")


def _placed(
    plan: geometry.Plan, boxes: Sequence[geometry.Box]
) -> list[tuple[geometry.Box, geometry.Size]]:
    """Where ``boxes`` of the original land in the output, with their whole
    sizes there (those cropped away are gone)."""
    placed = (geometry.output_box(plan, box) for box in boxes)
    return [box for box in placed if box is not None]


def _mode(has_alpha: bool, grey: bool) -> str:
    """The mode an output is encoded from."""
    if has_alpha:
        return "RGBA"
    return "L" if grey else "RGB"


def _outward(
    box: geometry.Box, scale: geometry.Size, to: geometry.Size
) -> geometry.Box:
    """``box`` in an image of size ``scale``, taken to one of size ``to``:
    edges rounded outward, never empty."""
    (left, top, right, bottom), (from_w, from_h), (to_w, to_h) = box, scale, to
    new_left, new_top = left * to_w // from_w, top * to_h // from_h
    return (
        new_left,
        new_top,
        max(new_left + 1, -(-right * to_w // from_w)),
        max(new_top + 1, -(-bottom * to_h // from_h)),
    )


def _times(size: geometry.Size, factor: float) -> geometry.Size:
    return math.ceil(size[0] * factor), math.ceil(size[1] * factor)


def _turned_size(region: geometry.Box, variant: Variant) -> geometry.Size:
    width, height = region[2] - region[0], region[3] - region[1]
    return (height, width) if variant.rotate in (90, 270) else (width, height)


_ROTATIONS = {
    90: Image.Transpose.ROTATE_270,  # Pillow turns counter-clockwise
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}


def _turn(image: Image.Image, variant: Variant) -> Image.Image:
    """Rotate clockwise, then mirror: top-bottom (flip), left-right (flop)."""
    if variant.rotate:
        image = image.transpose(_ROTATIONS[variant.rotate])
    if variant.flip:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if variant.flop:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


@contextmanager
def _decode_errors() -> Iterator[None]:
    """Turn a decoder's failure into the error a client is told about."""
    try:
        yield
    except Image.DecompressionBombError:
        # Pillow's message names its own limit, not the server's.
        raise ImageTooLarge("the image has more pixels than can be decoded") from None
    except _DECODE_ERRORS as e:
        raise UnsupportedImage(f"the image could not be decoded: {e}") from None


def has_alpha(data: bytes, limits: Limits) -> bool:
    """Whether the original ``data`` has transparency, from its header."""
    image = _open(data, limits)
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def is_whole(fmt: str, data: bytes) -> bool:
    """Whether ``data`` looks like a complete ``fmt`` file, from its ends alone.

    Variants are written without fsync (they can be made again); after a power
    loss such a file may be empty, zero-filled or cut short. Each format's
    signature and end marker (or declared sizes) catch that for the cost of a
    few byte comparisons; the check is the format table's.
    """
    return formats.output(fmt).whole(data)


#: A vector is drawn whole, at the scale its outputs need: a drawing may
#: have this many times the largest output's pixels (or `FREE_PIXELS`), so
#: a small crop of a vast canvas (x1000 of an SVG 50,000,000 wide) does not
#: draw megapixels to keep a few.
DRAWING_FACTOR = 16


def _check_drawing(
    image: Image.Image,
    need: geometry.Size,
    variants: Sequence[Variant],
    plans: Sequence[geometry.Plan],
) -> None:
    assert isinstance(image, documents.Document)
    if image.probe.kind not in documents.VECTORS:
        return
    width, height = image.drawing(need)
    kept = max(p.output_size[0] * p.output_size[1] for p in plans)
    if width * height > max(DRAWING_FACTOR * kept, FREE_PIXELS):
        names = ", ".join(v.name for v in variants)[:200]
        raise ImageTooLarge(
            f"{names}: keeping {kept} pixels of this {image.probe.kind} would draw "
            f"{width}x{height} of it (at most {DRAWING_FACTOR} times the output, "
            f"or {FREE_PIXELS} pixels): ask for a larger part of it (fit, or a "
            "wider crop)"
        )


def _check_animated_output(
    variant: Variant, size: geometry.Size, frames: int, limits: Limits
) -> None:
    """Refuse, before any frame is made, an animated variant whose frames
    together have more pixels than --max_source_pixels: Pillow's animation
    encoders (GIF, APNG, WebP, AVIF) are handed every frame at once and hold
    them all, so an animation costs what a still of all its frames would."""
    out_w, out_h = size
    if frames * out_w * out_h > limits.pixels:
        raise ImageTooLarge(
            f"{variant.name} would be {frames} frames of {out_w}x{out_h}, over "
            f"the limit of {limits.pixels} pixels for all frames together: ask "
            "for a smaller size, or a still format (jpg)"
        )


def _check_budget(
    variant: Variant, size: geometry.Size, frames: int, limits: Limits
) -> None:
    """Refuse, before any decoding, a byte budget whose search could not
    afford `MIN_BUDGET_ENCODES` encodes: all its encodes together cover at
    most --max_source_pixels, so a search costs no more than the largest
    output the server makes at all."""
    out_w, out_h = size
    if (
        variant.max_bytes
        and frames * out_w * out_h * MIN_BUDGET_ENCODES > limits.pixels
    ):
        what = (
            f"{frames} frames of {out_w}x{out_h}" if frames > 1 else f"{out_w}x{out_h}"
        )
        raise ImageTooLarge(
            f"{variant.name!r}: would search {what} for its byte budget: its "
            f"{MIN_BUDGET_ENCODES} encodes at least would cover more than the "
            f"limit of {limits.pixels} pixels (--max_source_pixels); ask for a "
            "smaller size"
        )


def _check_output(
    variant: Variant, size: geometry.Size, width: int, height: int, limits: Limits
) -> None:
    """Refuse, before any decoding, outputs too big to make or to encode."""
    out_w, out_h = size
    what = f"{variant.name} of this {width}x{height} image would be {out_w}x{out_h}"
    if limits.side is not None:
        # A name bounds the side it names; the other follows the source.
        if variant.fit is Fit.WIDTH and out_h > limits.side:
            raise InvalidRequest(f"{what}, taller than the maximum of {limits.side}")
        if variant.fit is Fit.HEIGHT and out_w > limits.side:
            raise InvalidRequest(f"{what}, wider than the maximum of {limits.side}")
    if out_w * out_h > limits.pixels:
        raise ImageTooLarge(f"{what}, over the limit of {limits.pixels} pixels")
    output = formats.output(variant.format)
    if max(out_w, out_h) > output.max_side:
        raise ImageTooLarge(
            f"{what}; {output.pillow} holds at most {output.max_side} a side"
        )
    _check_budget(variant, size, 1, limits)


def _open(
    data: bytes, limits: Limits, pick: documents.Pick | None = None
) -> Image.Image:
    """Read the header, and refuse what would cost more than the limits allow.

    Nothing is decoded before the limits are checked: the structure is walked
    (`containers`), the size is read from the header by the format table's
    own reader (`headers`; some plug-ins decode in ``Image.open``), and only
    then is Pillow given the file, with its size held to the header's.
    Decoders that run in Python (Pillow's BMP RLE: seconds per megapixel)
    are refused.
    """
    layout = containers.layout(data)
    rows = _candidates(data)
    if not rows:
        raise NotAnImage(INPUT_FORMATS)
    pick = pick or documents.Pick()
    if rows[0].drawn:
        document = documents.opened(
            data, rows[0].pillow, limits.documents, pick, limits.pixels
        )
        width, height = document.size
        # Drawn at the size a variant needs: a vector's bytes may stand for
        # any number of pixels, so only the pixel limit applies.
        unbound = replace(limits, pixels_per_byte=0)
        _check_pixels(width, height, len(data), unbound, None)
        return document
    if pick != documents.Pick():
        raise InvalidRequest(
            "the page and t options pick a PDF's page or a video's time; this "
            f"original is {rows[0].pillow}"
        )
    sizes = [size for row in rows if (size := row.size(data)) is not None]
    if not sizes:
        raise UnsupportedImage(
            "the image header could not be read (as "
            f"{', '.join(r.pillow for r in rows)})"
        )
    width, height = max(sizes, key=lambda s: s[0] * s[1])
    if width < 1 or height < 1:
        raise UnsupportedImage("the image has no pixels")
    _check_pixels(width, height, len(data), limits, layout.too_short)
    try:
        image = Image.open(BytesIO(data), formats=[row.pillow for row in rows])
    except Image.DecompressionBombError:
        raise ImageTooLarge(_too_many_pixels("the image is", limits)) from None
    except UnidentifiedImageError:
        raise UnsupportedImage(
            f"the image could not be read as {' or '.join(row.pillow for row in rows)}"
        ) from None
    except _DECODE_ERRORS as e:
        raise UnsupportedImage(f"the image header could not be read: {e}") from None
    opened_w, opened_h = image.size
    if opened_w < 1 or opened_h < 1:
        raise UnsupportedImage("the image has no pixels")
    if opened_w * opened_h > width * height:
        raise UnsupportedImage(
            f"the image's header declares {width}x{height} but its decoder "
            f"reads {opened_w}x{opened_h}"
        )
    slow = {codec for codec, *_ in image.tile if codec in Image.DECODERS}
    if slow:
        raise UnsupportedImage(
            f"{image.format} images encoded as {', '.join(sorted(slow))} are not "
            "accepted (their decoder is too slow)"
        )
    return image


def _candidates(data: bytes) -> list[formats.InputFormat]:
    """The accepted formats whose Pillow plug-in takes ``data`` (by its own
    test of the first bytes, which reads nothing more), in Pillow's order."""
    formats.register_plugins()
    Image.init()
    prefix = data[:16]
    rows = []
    for name, row in formats.INPUTS.items():
        if row.sniff is not None:
            if row.sniff(data):
                rows.append(row)
            continue
        accept = Image.OPEN[name][1]
        result = True if accept is None else accept(prefix)
        if result and not isinstance(result, str):  # a str: a reason not to
            rows.append(row)
    return rows


def _check_pixels(
    width: int, height: int, size: int, limits: Limits, too_short: str | None
) -> None:
    """The limits on an original's pixels, and on what its bytes can hold."""
    pixels = width * height
    if pixels > limits.pixels:
        raise ImageTooLarge(_too_many_pixels(f"the image is {width}x{height},", limits))
    if too_short is not None:
        raise UnsupportedImage(too_short)
    if (
        limits.pixels_per_byte
        and pixels > FREE_PIXELS
        and pixels > size * limits.pixels_per_byte
    ):
        raise ImageTooLarge(
            f"a {width}x{height} image in {size} bytes is more than "
            f"{limits.pixels_per_byte} pixels per byte: no real image of that "
            "size is so small"
        )


def _too_many_pixels(what: str, limits: Limits) -> str:
    return f"{what} over the limit of {limits.pixels} pixels"


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation, 1 (as stored) when absent or unreadable.

    Only JPEG (and MPO, JPEG with more pictures appended) keeps its EXIF
    ahead of the pixels; other formats (PNG's eXIf chunk may follow the image
    data) decode their pixels to read it, so they are decoded here, where a
    failure is an error, not a missing EXIF.
    """
    if image.format in formats.ORIENTED_BY_DECODER:
        return 1
    if image.format not in formats.EXIF_FIRST:
        with _decode_errors():
            image.load()
    # EXIF is optional metadata from untrusted files, parsed by code that
    # raises many kinds of errors: whatever makes it unreadable, the image is
    # shown as stored. The pixels are not read here (see above).
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:
        return 1
    return value if value in range(1, 9) else 1


def _normalise_mode(image: Image.Image) -> tuple[Image.Image, bool]:
    """Bring any decoded mode to RGB, RGBA or L (greyscale stays one channel:
    a third of the pixels to resize, and smaller files); CMYK stays for its
    ICC profile."""
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # Scale 16-bit samples down; a plain convert would clip them at 255.
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if image.mode == "CMYK" and not has_alpha:
        return image, False
    if image.mode in ("L", "1") and not has_alpha:
        return image.convert("L") if image.mode == "1" else image, False
    target = "RGBA" if has_alpha else "RGB"
    if image.mode != target:
        image = image.convert(target)
    return image, has_alpha


def _execute(image: Image.Image, plan: geometry.Plan) -> Image.Image:
    """Scale ``plan.box`` of the turned region (``image``) to ``plan.size``.

    A drafted decode is smaller than the source: the box is scaled to it.
    Each coordinate is multiplied before it is divided, so a box edge on the
    region's edge lands exactly on the image's edge.
    """
    image_w, image_h = image.size
    region_w, region_h = (
        plan.region[2] - plan.region[0],
        plan.region[3] - plan.region[1],
    )
    if plan.turned:
        region_w, region_h = region_h, region_w
    left, top, right, bottom = plan.box
    if plan.box == (0, 0, region_w, region_h) and plan.size == image.size:
        return image
    box = (
        left * image_w / region_w,
        top * image_h / region_h,
        right * image_w / region_w,
        bottom * image_h / region_h,
    )
    reducing = plan.size[0] < box[2] - box[0] and plan.size[1] < box[3] - box[1]
    return image.resize(
        plan.size,
        REDUCING_FILTER if reducing else ENLARGING_FILTER,
        box=box,
        reducing_gap=_REDUCING_GAP,
    )


def _encode(
    image: Image.Image, variant: Variant, small: bool = False, animated: bool = False
) -> bytes:
    """Encode sRGB pixels (RGB, or RGBA with alpha) in the variant's format;
    ``small``: a quality level's small output (`_small_level`); ``animated``:
    with the options of the format's animations (an animation's first frame,
    judged for a level)."""
    output = formats.output(variant.format)
    if isinstance(image, ImageFile.ImageFile):
        # A still is one frame. Given the opened file itself (full size, no
        # change needed), an encoder may walk its other pages: Pillow's AVIF
        # encoder does, even without save_all, decoding every TIFF page.
        image = image.copy()
    if variant.background is not None or not output.alpha:
        image = effects.flattened(image, variant.background or (255, 255, 255))
    alpha = image.mode in ("RGBA", "LA", "PA")
    options = output.save_options(variant.quality, animated, alpha)
    if small and output.small_level_options is not None:
        options.update(output.small_level_options)
    elif output.encoder == "jpegli" and image.mode == "RGB":
        quality = options["quality"]
        return pyjpegli.encode(image.tobytes(), *image.size, quality=quality)
    # Nothing from the source's metadata reaches the output.
    image.info = {}
    out = BytesIO()
    try:
        image.save(out, output.pillow, **options)
    except OSError:
        if not options.get("optimize") or output.pillow != "JPEG":
            raise
        # Optimised Huffman tables need the whole JPEG in one buffer, which
        # Pillow sizes at a byte a pixel: noise at 4:4:4 takes more.
        out = BytesIO()
        image.save(out, output.pillow, **{**options, "optimize": False})
    return out.getvalue()


def _small_level(variant: Variant, size: tuple[int, int]) -> bool:
    """Whether an output of ``size`` is a quality level's small one, which
    its format may encode otherwise (`formats.SMALL_LEVEL_PIXELS`): decided
    on the output, so that a sample of a large one is encoded as it is."""
    return bool(variant.level) and size[0] * size[1] <= formats.SMALL_LEVEL_PIXELS


#: Encodes a byte budget may cost at most; the search stops sooner once
#: the best quality is known to within `BUDGET_PRECISION`, and makes fewer
#: of a large output (all together at most --max_source_pixels), never
#: fewer than `MIN_BUDGET_ENCODES` (`_check_budget`).
MAX_BUDGET_ENCODES = 8
MIN_BUDGET_ENCODES = 3
BUDGET_PRECISION = 2


def _encode_within(
    encode: Callable[[Variant], bytes], variant: Variant, encodes: int
) -> tuple[bytes, int]:
    """The highest quality, up to the variant's, whose encoding (by
    ``encode``) has at most ``variant.max_bytes`` bytes (to within
    `BUDGET_PRECISION`, given ``encodes`` tries), and that quality; when none
    has, quality 1 (the smallest the format makes).

    A false-position search: bytes grow about exponentially with quality,
    so the next quality tried is interpolated on the logarithm of the sizes
    of the two nearest tried (one that fits, one that does not), after a
    first try at the top and one at half of it; where that creeps from one
    side, the bracket is halved instead. 4 to 8 encodes, 6 on average
    (benchmarks/effects.py), where a bisection takes 7.
    """
    budget = variant.max_bytes
    top = variant.quality or formats.output(variant.format).quality
    tried: dict[int, bytes] = {}

    def size_at(quality: int) -> int:
        tried[quality] = encode(replace(variant, quality=quality))
        return len(tried[quality])

    over_q, over_size = top, size_at(top)
    if over_size <= budget:
        return tried[top], top
    fit_q: int | None = None
    fit_size = 0
    guess = max(1, top // 2)
    moved = ""  # the side of the bracket the last try moved
    while len(tried) < encodes and guess < over_q:
        size = size_at(guess)
        side = "fit" if size <= budget else "over"
        if side == "fit":
            fit_q, fit_size = guess, size
        else:
            over_q, over_size = guess, size
        if fit_q is None:
            if over_q == 1:
                break  # nothing fits
            # The last try, when nothing has fitted yet: the smallest.
            guess = 1 if len(tried) == encodes - 1 else max(1, over_q // 2)
            continue
        if over_q - fit_q <= BUDGET_PRECISION:
            break
        if side == moved:
            # Interpolation creeping from one side: halve the bracket
            # instead, so it shrinks by half at least every other try.
            guess = (fit_q + over_q) // 2
        else:
            share = math.log(budget / fit_size) / math.log(over_size / fit_size)
            guess = min(
                over_q - 1, max(fit_q + 1, fit_q + int(share * (over_q - fit_q)))
            )
        moved = side
    if fit_q is None:
        fit_q = 1
        if 1 not in tried:
            size_at(1)
    return tried[fit_q], fit_q


def _to_srgb(image: Image.Image, icc: bytes | None, mode: str) -> Image.Image:
    """Convert colours to sRGB, so stripping the profile does not shift them.

    Greyscale stays greyscale (a grey profile's tone curve is left as is).
    """
    if mode == "L":
        return image if image.mode == "L" else image.convert("L")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(BytesIO(icc))
            converted = ImageCms.profileToProfile(
                image, source, ImageCms.createProfile("sRGB"), outputMode=mode
            )
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # an unusable profile: keep the pixel values as they are
        else:
            if converted is not None:
                return converted
    return image if image.mode == mode else image.convert(mode)
