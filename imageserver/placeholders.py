"""What a page shows while an image loads: BlurHash, ThumbHash, a colour.

Computed from the decode an upload makes anyway (a copy of at most
`SIDE` pixels a side), so they cost well under a millisecond each.
"""

from __future__ import annotations

import base64

import thumbhash  # type: ignore[import-untyped]
from blurhash_rs import blurhash_encode
from PIL import Image

#: The longest side of the copy the placeholders are computed from
#: (ThumbHash takes at most 100; 32 costs a quarter of 64 and looks the same
#: once blurred).
SIDE = 32
#: BlurHash components across and down.
BLURHASH_COMPONENTS = (4, 3)


def placeholders(image: Image.Image) -> dict[str, str]:
    """``blurhash``, ``thumbhash`` (base64) and ``dominant_color`` (``#rrggbb``)
    of an sRGB image (RGB, or RGBA with transparency)."""
    small = image.convert("RGBA")
    small.thumbnail((SIDE, SIDE), Image.Resampling.BOX)
    rgb = small.convert("RGB")
    thumb = thumbhash.rgba_to_thumb_hash(small.width, small.height, small.tobytes())
    return {
        "blurhash": blurhash_encode(rgb, *BLURHASH_COMPONENTS),
        "thumbhash": base64.b64encode(bytes(thumb)).decode(),
        "dominant_color": dominant_colour(rgb),
    }


def dominant_colour(image: Image.Image) -> str:
    """The centre of the largest of eight colour clusters, as ``#rrggbb``."""
    palette = image.quantize(8, method=Image.Quantize.MEDIANCUT)
    counts: list[tuple[int, int]] = palette.getcolors() or [(1, 0)]  # type: ignore[assignment]
    _, index = max(counts)
    colours = palette.getpalette() or [0, 0, 0]
    r, g, b = colours[3 * index : 3 * index + 3]
    return f"#{r:02x}{g:02x}{b:02x}"
