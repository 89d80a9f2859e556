"""Looking at the pixels: the border ``trim`` removes, the part ``smart`` keeps.

Plain Pillow, no Twisted. Both work on the decoded (often drafted) image and
answer in fractions or boxes the geometry turns into exact pixels; ``smart``
looks at a copy of at most `ATTENTION_SIDE` pixels a side, never the full
image.
"""

from __future__ import annotations

from functools import reduce

from PIL import Image, ImageChops, ImageFilter

#: How far a pixel may be from the corner's colour and still be border.
TRIM_TOLERANCE = 16
#: The longest side of the copy ``smart`` scores.
ATTENTION_SIDE = 96


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
