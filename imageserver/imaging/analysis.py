"""Looking at the pixels: the border ``trim`` removes, the part ``smart`` keeps.

Plain Pillow, no Twisted. Both work on the decoded (often drafted) image and
answer in fractions or boxes the geometry turns into exact pixels; ``smart``
looks at a copy of at most `ATTENTION_SIDE` pixels a side, never the full
image.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

from PIL import Image, ImageChops, ImageFilter

#: How far a pixel may be from the corner's colour and still be border.
TRIM_TOLERANCE = 16
#: The longest side of the copy ``smart`` scores.
ATTENTION_SIDE = 96


def flattened(image: Image.Image) -> Image.Image:
    """``image`` as it is seen: transparency flattened on white (what hides
    behind it is not looked at)."""
    if image.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and not (
        image.mode == "P" and "transparency" in image.info
    ):
        return image
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def content_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """The box inside a uniform border of the top-left corner's colour.

    None when there is no such border, or when the whole image is that colour
    (nothing would be left).
    """
    corner = image.getpixel((0, 0))
    difference = ImageChops.difference(image, Image.new(image.mode, image.size, corner))
    bands = difference.split()
    strongest = reduce(ImageChops.lighter, bands[1:], bands[0])
    mask = strongest.point(lambda v: 255 if v > TRIM_TOLERANCE else 0)
    box = mask.getbbox()
    if box is None or box == (0, 0, *image.size):
        return None
    return box


def attention(image: Image.Image, crop: tuple[float, float]) -> tuple[float, float]:
    """Where a crop covering ``crop`` of the width and height should be centred.

    Each pixel of a small copy is scored by its detail (edges), its colour
    saturation and whether it looks like skin; the crop window with the most
    score wins. A cover crop spans the whole of one side, so the window only
    slides along the other: a one-dimensional search over the copy's columns
    (or rows). Ties go to the window nearest the centre, so a featureless
    picture is cropped in the middle. The answer is the window's centre, as
    fractions of the width and height.
    """
    small = image.convert("RGB")
    small.thumbnail((ATTENTION_SIDE, ATTENTION_SIDE), Image.Resampling.BOX)
    score = _score(small)
    crop_w, crop_h = crop
    if crop_w < 1:
        columns = list(score.resize((score.width, 1), Image.Resampling.BOX).tobytes())
        return _best_window(columns, crop_w), 0.5
    if crop_h < 1:
        rows = list(score.resize((1, score.height), Image.Resampling.BOX).tobytes())
        return 0.5, _best_window(rows, crop_h)
    return 0.5, 0.5


def _score(image: Image.Image) -> Image.Image:
    """Detail + saturation + skin, each 0-255, averaged into one band."""
    grey = image.convert("L")
    detail = grey.filter(ImageFilter.FIND_EDGES)
    saturation = image.convert("HSV").getchannel("S")
    _, cb, cr = image.convert("YCbCr").split()
    skin = ImageChops.multiply(
        cb.point(lambda v: 255 if 77 <= v <= 127 else 0),
        cr.point(lambda v: 255 if 133 <= v <= 173 else 0),
    )
    return Image.merge("RGB", (detail, saturation, skin)).convert(
        "L", matrix=(0.5, 0.3, 0.2, 0)
    )


def _best_window(values: list[int], fraction: float) -> float:
    """The centre (a fraction of the length) of the best window of ``fraction``."""
    length = len(values)
    window = max(1, min(length, round(fraction * length)))
    total = best = sum(values[:window])
    starts = [0]
    for start in range(1, length - window + 1):
        total += values[start + window - 1] - values[start - 1]
        if total > best:
            best, starts = total, [start]
        elif total == best:
            starts.append(start)
    middle = (length - window) / 2
    start = min(starts, key=lambda s: (abs(s - middle), s))
    return (start + window / 2) / length


#: A face along the axis a crop slides on: where it starts and ends (pixels)
#: and how much it counts (its area).
Span = tuple[int, int, int]


def around_faces(faces: Sequence[Span], length: int, window: int) -> float | None:
    """Where a crop ``window`` pixels long, sliding along ``length``, should
    be centred (a fraction of ``length``) to keep the faces: the most of
    them whole, by area (every face when they fit, else the largest), then
    the fewest cut, then the kept ones as central as the crop allows. A crop
    narrower than every face is centred on the largest. None without faces.

    The counts change only where a window edge meets a face edge, so the
    starts next to those points, the ends and the centring start are all
    that need looking at: exact in whole pixels, for any number of faces.
    """
    if not faces:
        return None
    free = length - window
    if free <= 0:
        return 0.5
    largest = max(faces, key=lambda f: (f[2], -f[0]))
    if all(end - start > window for start, end, _ in faces):
        middle = (largest[0] + largest[1]) / 2
        return _centre(_clamp(round(middle - window / 2), 0, free), window, length)

    def counts(start: int) -> tuple[int, int]:
        kept = cut = 0
        for a, b, weight in faces:
            if start <= a and b <= start + window:
                kept += weight
            elif a < start + window and start < b:
                cut += weight
        return kept, -cut

    edges = {0, free}
    for a, b, _ in faces:
        for point in (a - window, a, b - window, b):
            edges.update((point - 1, point, point + 1))
    starts = {_clamp(s, 0, free) for s in edges}
    best = max(counts(s) for s in starts)
    # Centre what the best crop keeps (the faces whole in it).
    first = min(s for s in starts if counts(s) == best)
    kept = [f for f in faces if first <= f[0] and f[1] <= first + window]
    target = round((min(f[0] for f in kept) + max(f[1] for f in kept) - window) / 2)
    starts.add(_clamp(target, 0, free))
    start = min(
        (s for s in starts if counts(s) == best),
        key=lambda s: (abs(s - target), abs(2 * s - free), s),
    )
    return _centre(start, window, length)


def _centre(start: int, window: int, length: int) -> float:
    return (start + window / 2) / length


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))
