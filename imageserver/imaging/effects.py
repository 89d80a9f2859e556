"""What a variant does to its output's own pixels after the resize:
adjustments, masks, pixelation, the background transparency is flattened on.

Plain functions of a Pillow image in sRGB (``RGB``, ``RGBA`` or ``L``), no
Twisted. Each costs a few passes over the output's pixels (never the
original's), so its cost is bounded by the output's size.
"""

from __future__ import annotations

import functools
import math
import os
import unicodedata
from collections.abc import Callable, Sequence

from PIL import (
    Image,
    ImageChops,
    ImageDraw,
    ImageEnhance,
    ImageFilter,
    ImageFont,
    ImageOps,
)

from imageserver.errors import InvalidRequest
from imageserver.imaging.geometry import Box, Size
from imageserver.naming import WATERMARK_PLACES, Caption, Variant, Watermark

#: A mask is drawn up to this many times larger a side, then reduced:
#: antialiased edges (1/16 steps of coverage) ...
MASK_SUPERSAMPLING = 4
#: ... within this many bytes (one a pixel): a large output's mask is drawn
#: at a smaller scale (at 1, its edges are not antialiased), so a mask never
#: holds more than 16 MB whatever the output's size.
MASK_BYTES = 16 * 1024 * 1024


def adjusted(image: Image.Image, variant: Variant) -> Image.Image:
    """Brightness, contrast and saturation, then blur, sharpening and grey,
    as the variant asks. Alpha is left as it is."""
    if variant.brightness or variant.contrast:
        image = _colour_curve(image, variant.brightness, variant.contrast)
    if variant.saturation and image.mode != "L":
        image = _with_alpha_kept(
            image,
            lambda rgb: ImageEnhance.Color(rgb).enhance(1 + variant.saturation / 100),
        )
    if variant.blur:
        image = image.filter(ImageFilter.GaussianBlur(variant.blur))
    if variant.sharp:
        # Light, for thumbnails: a small radius, no halo on flat areas.
        image = image.filter(
            ImageFilter.UnsharpMask(radius=0.8, percent=80, threshold=2)
        )
    if variant.gray and image.mode != "L":
        grey = ImageOps.grayscale(image)
        if image.mode == "RGBA":
            grey = Image.merge("RGBA", (grey, grey, grey, image.getchannel("A")))
        image = grey  # one channel where there is no alpha
    return image


def brightness_table(amount: int) -> list[int]:
    """Each level plus ``amount`` per cent of the full range (255), held
    within 0-255: -100 is black, 100 white."""
    shift = round(255 * amount / 100)
    return [min(255, max(0, level + shift)) for level in range(256)]


def contrast_table(amount: int) -> list[int]:
    """Each level's distance from mid-grey (128) times ((100 + amount) /
    100) squared, held within 0-255: -100 is flat grey, 100 four times the
    contrast."""
    factor = ((100 + amount) / 100) ** 2
    return [
        min(255, max(0, round(128 + (level - 128) * factor))) for level in range(256)
    ]


def _colour_curve(image: Image.Image, brightness: int, contrast: int) -> Image.Image:
    """Brightness, then contrast, as one table per colour channel."""
    shifted = brightness_table(brightness)
    stretched = contrast_table(contrast)
    table = [stretched[shifted[level]] for level in range(256)]
    if image.mode == "RGBA":
        return image.point(table * 3 + list(range(256)))
    return image.point(table * len(image.getbands()))


def _with_alpha_kept(
    image: Image.Image, change: Callable[[Image.Image], Image.Image]
) -> Image.Image:
    """``change`` (of an RGB image) applied to ``image``'s colours alone."""
    if image.mode != "RGBA":
        return change(image)
    rgb = change(image.convert("RGB"))
    rgb.putalpha(image.getchannel("A"))
    return rgb


#: A pixelated region has at most this many blocks across its shorter
#: side...
REDACTION_BLOCKS = 6
#: ... and at most this many along its longer side (a line of text in a
#: tight box stays unreadable), of 4 pixels or more.
REDACTION_BLOCKS_ALONG = 16
#: A blurred region's sigma is its shorter side over this.
REDACTION_BLUR = 4


def redacted(
    image: Image.Image,
    pixel_boxes: Sequence[tuple[Box, Size]],
    blur_boxes: Sequence[tuple[Box, Size]],
) -> Image.Image:
    """Each box (in the output's pixels, with the size the whole box has
    there, parts cropped away included) pixelated or blurred past
    recognition: square blocks of at least a sixth of its shorter side and a
    sixteenth of its longer, and of 4 pixels or more (the whole box one block
    under 8), or a Gaussian blur of sigma a quarter of its shorter side,
    made from the box's own pixels alone (nothing of the picture around it
    bleeds in or out). What a crop leaves of a box is redacted as strongly
    as the whole box would be."""
    image = image.copy()  # it may be the decoded original, used again
    for box, (width, height) in pixel_boxes:
        part = image.crop(box)
        # Blocks of equal share, none a remnant of a pixel or two that would
        # keep its own colour (one block, for a box under 8).
        block = max(
            4,
            -(-min(width, height) // REDACTION_BLOCKS),
            -(-max(width, height) // REDACTION_BLOCKS_ALONG),
        )
        cells = (max(1, part.width // block), max(1, part.height // block))
        coarse = part.resize(cells, Image.Resampling.BOX)
        image.paste(coarse.resize(part.size, Image.Resampling.NEAREST), box[:2])
    for box, (width, height) in blur_boxes:
        part = image.crop(box)
        sigma = max(2.0, min(width, height) / REDACTION_BLUR)
        image.paste(_blurred(part, sigma), box[:2])
    return image


#: A redaction's blur of a larger sigma than this many pixels is made on a
#: copy reduced so that its sigma is about this, then enlarged back.
REDACTION_BLUR_SAMPLE = 4


def _blurred(part: Image.Image, sigma: float) -> Image.Image:
    """``part`` under a Gaussian blur of ``sigma``; a wide one made at a
    reduced scale (as smooth, and a few passes over the part's pixels
    whatever its size: a blur of a whole 12 MP picture took 0.5 s, eight of
    them 4.6 s)."""
    factor = int(sigma // REDACTION_BLUR_SAMPLE)
    if factor < 2:
        return part.filter(ImageFilter.GaussianBlur(sigma))
    small = part.reduce(factor)
    small = small.filter(ImageFilter.GaussianBlur(sigma / factor))
    return small.resize(part.size, Image.Resampling.BILINEAR)


def masked(image: Image.Image, variant: Variant) -> Image.Image:
    """The output with its corners rounded (``round``) or cut to the
    ellipse it holds (``circle``, a circle when square): outside is
    transparent (flattened on the background where the format has no
    alpha)."""
    if not variant.corner_radius and not variant.circle:
        return image
    width, height = image.size
    scale = max(1, min(MASK_SUPERSAMPLING, math.isqrt(MASK_BYTES // (width * height))))
    mask = Image.new("L", (width * scale, height * scale), 0)
    draw = ImageDraw.Draw(mask)
    box = (0, 0, width * scale - 1, height * scale - 1)
    if variant.circle:
        draw.ellipse(box, fill=255)
    else:
        radius = min(variant.corner_radius, width // 2, height // 2) * scale
        draw.rounded_rectangle(box, radius=radius, fill=255)
    mask = mask.reduce(scale)
    # A copy: it may be the decoded original, used again for other outputs.
    image = image.convert("RGBA") if image.mode != "RGBA" else image.copy()
    # The picture's own transparency, times the mask's coverage.
    image.putalpha(ImageChops.multiply(image.getchannel("A"), mask))
    return image


def watermarked(image: Image.Image, mark: Image.Image, how: Watermark) -> Image.Image:
    """``mark`` (RGBA) laid over ``image``: ``how.scale`` per cent of its
    width (and no larger than it), ``how.opacity`` per cent as opaque, at
    ``how.place`` ``how.margin`` pixels in from the edges, or tiled with
    that gap. The output keeps the mode's alpha or its lack."""
    width, height = image.size
    mark_w = max(1, round(width * how.scale / 100))
    mark_h = max(1, round(mark.height * mark_w / mark.width))
    if mark_h > height:  # a tall mark fits the height instead
        mark_w, mark_h = max(1, round(mark.width * height / mark.height)), height
    sized = mark.resize((mark_w, mark_h), Image.Resampling.LANCZOS)
    if how.opacity < 100:
        alpha = sized.getchannel("A").point(
            [round(level * how.opacity / 100) for level in range(256)]
        )
        sized.putalpha(alpha)
    if how.place == "tile":
        layer = Image.new("RGBA", image.size)
        _tile(layer, sized, how.margin)
        return _laid(image, layer, (0, 0))
    return _laid(image, sized, _position(image.size, sized.size, how.place, how.margin))


def _position(
    outer: tuple[int, int], inner: tuple[int, int], place: str, margin: int
) -> tuple[int, int]:
    """Where ``inner`` goes in ``outer`` at ``place`` (`WATERMARK_PLACES`),
    ``margin`` pixels in from the edges it is placed by (less where there
    is no room)."""
    ax, ay = WATERMARK_PLACES[place]
    corner = []
    for side, size, share in ((outer[0], inner[0], ax), (outer[1], inner[1], ay)):
        room = max(0, side - size)
        # A margin wider than the room shrinks alike on both sides: a mark
        # placed east stays nearer the east edge; one of half the room or
        # more centres it (as the centred place would: the name folds so).
        if 2 * margin >= room:
            share = 0.5
        kept = min(margin, room // 2)
        # Half up, not to even: the centre of an odd space is the same side
        # whatever the margin.
        corner.append(kept + math.floor((room - 2 * kept) * share + 0.5))
    return corner[0], corner[1]


def _laid(image: Image.Image, layer: Image.Image, at: tuple[int, int]) -> Image.Image:
    """``layer`` (RGBA) composited over ``image`` at ``at``: only the part
    it covers is converted and blended (a small mark on a large output
    costs the mark's pixels). The output keeps the mode's alpha or its lack."""
    box = (at[0], at[1], at[0] + layer.width, at[1] + layer.height)
    under = image.crop(box).convert("RGBA")
    blended = Image.alpha_composite(under, layer.crop((0, 0, *under.size)))
    # A copy (it may be the decoded original, used again); a grey picture
    # takes colours from now on.
    out = image.copy() if image.mode in ("RGB", "RGBA") else image.convert("RGB")
    out.paste(blended if out.mode == "RGBA" else blended.convert("RGB"), box[:2])
    return out


def _tile(layer: Image.Image, tile: Image.Image, gap: int) -> None:
    """``tile`` repeated over ``layer`` from its top-left corner, ``gap``
    pixels apart: one row made by doubling, then the rows by doubling, so
    the pastes are logarithmic in the count of tiles."""
    step_w, step_h = tile.width + gap, tile.height + gap
    row = Image.new("RGBA", (layer.width, tile.height))
    row.paste(tile, (0, 0))
    filled = step_w
    while filled < layer.width:
        row.paste(row.crop((0, 0, filled, tile.height)), (filled, 0))
        filled *= 2
    layer.paste(row, (0, 0))
    filled = step_h
    while filled < layer.height:
        layer.paste(layer.crop((0, 0, layer.width, filled)), (0, filled))
        filled *= 2


#: The font text is drawn with: DejaVu Sans Bold, shipped with the project
#: (its licence beside it: Bitstream Vera's, changes in the public domain).
FONT = os.path.join(os.path.dirname(__file__), "fonts", "DejaVuSans-Bold.ttf")
#: Bidirectional classes of right-to-left scripts: such text is refused,
#: as its shaping and order depend on libraries a host may lack.
_RIGHT_TO_LEFT = frozenset({"R", "AL", "AN"})


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(FONT, size)


@functools.lru_cache(maxsize=4096)
def _drawn(character: str) -> bool:
    """Whether the font has a glyph for ``character`` (not its .notdef box)."""
    if character == " ":
        return True
    return _glyph(character) != _glyph("\ue000")  # a private use: no glyph


@functools.lru_cache(maxsize=4096)
def _glyph(character: str) -> bytes:
    picture = Image.new("L", (40, 40))
    ImageDraw.Draw(picture).text((4, 4), character, font=_font(24), fill=255)
    return picture.tobytes()


def check_text(text: str) -> None:
    """`InvalidRequest` naming the first character the font cannot draw,
    or a right-to-left one."""
    for character in text:
        if unicodedata.bidirectional(character) in _RIGHT_TO_LEFT:
            raise InvalidRequest(
                f"right-to-left text ({character!r}, U+{ord(character):04X}) is "
                "not drawn here; give left-to-right text"
            )
        if not _drawn(character):
            raise InvalidRequest(
                f"the font (DejaVu Sans) has no glyph for {character!r} "
                f"(U+{ord(character):04X}): Latin, Greek, Cyrillic and many "
                "symbols are drawn, CJK text is not"
            )


def _bbox(font: ImageFont.FreeTypeFont, text: str, stroke: int) -> Box:
    """The box ``text`` covers when drawn at the origin, in whole pixels."""
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    return (math.floor(left), math.floor(top), math.ceil(right), math.ceil(bottom))


def captioned(image: Image.Image, caption: Caption) -> Image.Image:
    """``caption`` drawn over ``image``: ``size`` per cent of its height, at
    ``place`` ``margin`` pixels in from the edges (shrunk to fit the width),
    in its colour with an outline of black or white (whichever stands out)
    a fifteenth of the size wide."""
    check_text(caption.text)
    width, height = image.size
    size = max(1, round(height * caption.size / 100))
    font = _font(size)
    stroke = max(1, round(size / 15))
    left, top, right, bottom = _bbox(font, caption.text, stroke)
    if right - left > width - 2 * caption.margin and right > left:
        size = max(1, size * max(1, width - 2 * caption.margin) // (right - left))
        font = _font(size)
        stroke = max(1, round(size / 15))
        left, top, right, bottom = _bbox(font, caption.text, stroke)
    text_w, text_h = right - left, bottom - top
    x, y = _position(image.size, (text_w, text_h), caption.place, caption.margin)
    r, g, b = caption.colour
    light = r * 299 + g * 587 + b * 114 >= 128_000
    # Drawn on a layer of the text's own box, laid where it goes.
    layer = Image.new("RGBA", (max(1, text_w), max(1, text_h)))
    ImageDraw.Draw(layer).text(
        (-left, -top),
        caption.text,
        font=font,
        fill=(r, g, b, 255),
        stroke_width=stroke,
        stroke_fill=(0, 0, 0, 255) if light else (255, 255, 255, 255),
    )
    return _laid(image, layer, (x, y))


def pixelated(image: Image.Image, block: int) -> Image.Image:
    """Blocks of ``block`` x ``block`` output pixels, each its average colour
    (the last row and column of blocks may be smaller)."""
    if block < 2:
        return image
    width, height = image.size
    small = image.reduce(block)  # each block's mean, partial ones included
    return small.resize(
        (small.width * block, small.height * block), Image.Resampling.NEAREST
    ).crop((0, 0, width, height))


def flattened(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """``image`` composited over an opaque ``colour``: no transparency left."""
    if image.mode != "RGBA":
        return image
    flat = Image.new("RGB", image.size, colour)
    flat.paste(image, mask=image.getchannel("A"))
    return flat
