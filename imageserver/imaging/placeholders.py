"""What a page shows while an image loads: BlurHash, ThumbHash, a colour.

Computed from the decode an upload makes anyway (a copy of at most
`SIDE` pixels a side), so they cost well under a millisecond each.
"""

from __future__ import annotations

import base64

import thumbhash  # type: ignore[import-untyped]
from blurhash_rs import blurhash_encode
from PIL import Image

from imageserver.imaging import colour

#: The longest side of the copy the placeholders are computed from
#: (ThumbHash takes at most 100; 32 costs a quarter of 64 and looks the same
#: once blurred).
SIDE = 32
#: BlurHash components across and down.
BLURHASH_COMPONENTS = (4, 3)


def placeholders(image: Image.Image) -> dict[str, str]:
    """``blurhash``, ``thumbhash`` (base64) and ``dominant_color`` (``#rrggbb``)
    of an sRGB image (RGB, or RGBA with transparency).

    Each pixel counts as much as it is seen: a transparent one not at all
    (its colour, often black, is invisible), a half-transparent one half.
    ThumbHash encodes alpha itself; BlurHash has no alpha and sees the
    picture with its transparent parts filled by the visible average.
    """
    small = image.convert("RGBA")
    small.thumbnail((SIDE, SIDE), Image.Resampling.BOX)
    thumb = thumbhash.rgba_to_thumb_hash(small.width, small.height, small.tobytes())
    return {
        "blurhash": blurhash_encode(filled(small), *BLURHASH_COMPONENTS),
        "thumbhash": base64.b64encode(bytes(thumb)).decode(),
        "dominant_color": dominant_colour(small),
    }


def dominant_colour(image: Image.Image) -> str:
    """The centre of the largest of eight colour clusters, as ``#rrggbb``;
    in an RGBA image, of the visible pixels, each weighted by its alpha
    (cluster sizes and centres both)."""
    if image.mode == "RGBA" and not _opaque(image):
        pixels = [p for p in _pixels(image) if p[3]]
        if pixels:
            return _weighted_dominant_colour(pixels)
    palette = image.convert("RGB").quantize(8, method=Image.Quantize.MEDIANCUT)
    counts: list[tuple[int, int]] = palette.getcolors() or [(1, 0)]  # type: ignore[assignment]
    _, index = max(counts)
    colours = palette.getpalette() or [0, 0, 0]
    r, g, b = colours[3 * index : 3 * index + 3]
    return f"#{r:02x}{g:02x}{b:02x}"


def _weighted_dominant_colour(pixels: list[tuple[int, ...]]) -> str:
    visible = Image.new("RGB", (len(pixels), 1))
    visible.frombytes(bytes(c for p in pixels for c in p[:3]))
    indices = visible.quantize(8, method=Image.Quantize.MEDIANCUT).tobytes()
    weights: dict[int, int] = {}
    for index, pixel in zip(indices, pixels, strict=True):
        weights[index] = weights.get(index, 0) + pixel[3]
    _, largest = max((weight, index) for index, weight in weights.items())
    members = [p for i, p in zip(indices, pixels, strict=True) if i == largest]
    total = weights[largest]
    r, g, b = (round(sum(p[c] * p[3] for p in members) / total) for c in range(3))
    return f"#{r:02x}{g:02x}{b:02x}"


def _pixels(image: Image.Image) -> list[tuple[int, ...]]:
    """An RGBA image's pixels as (r, g, b, a) tuples."""
    data = image.tobytes()
    return [tuple(data[i : i + 4]) for i in range(0, len(data), 4)]


def filled(image: Image.Image) -> Image.Image:
    """``image`` as RGB, each pixel blended (in linear light) with the
    alpha-weighted mean colour as far as it is transparent: the mean of the
    result, BlurHash's DC component, is the mean of what is seen."""
    if image.mode != "RGBA" or _opaque(image):
        return image.convert("RGB")
    pixels = _pixels(image)
    seen = sum(p[3] for p in pixels)
    if not seen:
        return image.convert("RGB")
    mean = [sum(_LINEAR[p[c]] * p[3] for p in pixels if p[3]) / seen for c in range(3)]
    hidden = tuple(_srgb(m) for m in mean)
    out = []
    for pixel in pixels:
        a = pixel[3]
        if a == 255:
            out.append(pixel[:3])
        elif a == 0:
            out.append(hidden)
        else:
            t = a / 255
            out.append(
                tuple(
                    _srgb(_LINEAR[pixel[c]] * t + mean[c] * (1 - t)) for c in range(3)
                )
            )
    rgb = Image.new("RGB", image.size)
    rgb.putdata(out)
    return rgb


def _opaque(image: Image.Image) -> bool:
    return image.getchannel("A").getextrema() == (255, 255)


#: sRGB byte -> linear light, 0-1.
_LINEAR: list[float] = colour.LINEAR.tolist()


def _srgb(linear: float) -> int:
    """Linear light, 0-1 -> the nearest sRGB byte."""
    c = min(max(linear, 0.0), 1.0)
    c = c * 12.92 if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055
    return round(c * 255)
