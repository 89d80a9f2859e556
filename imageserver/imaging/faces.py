"""Finding faces: OpenCV's frontal-face cascade on a small grey copy.

The model is the Haar cascade ``haarcascade_frontalface_alt2.xml`` that the
``opencv-python-headless`` 4.x wheels carry (Apache 2.0; the 5.x wheels
carry no cascades), so nothing is downloaded at run time. It looks at a copy
of at most `FACE_PIXELS` pixels (256x256 for a square picture, 443x148 for
a 3:1 panorama), whatever the original's size: a face narrower than
`SMALLEST_FACE` pixels there (a thirteenth of a square picture's side) is
not looked for. docs/performance.md has its precision and recall and what it
costs.

OpenCV is imported on first use (`opencv`), so a server that never asks
for faces does not load it.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from PIL import Image

from imageserver.imaging import analysis, opencv

#: The most pixels of the copy faces are looked for in: its cost is about
#: proportional to them.
FACE_PIXELS = 256 * 256
#: The smallest face looked for, in pixels of that copy (the cascade's own
#: window is 20 pixels).
SMALLEST_FACE = 20
#: Each size looked at is this much larger than the one before.
SCALE_STEP = 1.2
#: Detections that must agree on a face: fewer find more faces and more
#: things that are not (docs/performance.md).
NEIGHBOURS = 2
#: The most faces kept, the largest first: a picture of a crowd (or a
#: hostile tiling of faces) costs no more to crop than this many.
MOST_FACES = 32

#: The cascade's file in the OpenCV wheel.
CASCADE = "haarcascade_frontalface_alt2.xml"

Box = tuple[int, int, int, int]

_local = threading.local()


def detect(image: Image.Image, size: tuple[int, int]) -> list[Box]:
    """The faces in ``image``, as boxes of a ``size`` picture (the original
    as displayed, of which ``image`` may be a smaller decode), the largest
    first; at most `MOST_FACES`."""
    small = analysis.flattened(image).convert("L")
    copy = copy_size(small.size)
    if copy != small.size:
        small = small.resize(copy, Image.Resampling.BOX)
    found = _cascade().detectMultiScale(
        _pixels(small),
        scaleFactor=SCALE_STEP,
        minNeighbors=NEIGHBOURS,
        minSize=(SMALLEST_FACE, SMALLEST_FACE),
    )
    scale_x, scale_y = size[0] / small.width, size[1] / small.height
    boxes = [
        _scaled((int(x), int(y), int(x + w), int(y + h)), scale_x, scale_y, size)
        for x, y, w, h in found
    ]
    boxes.sort(key=lambda b: (-(b[2] - b[0]) * (b[3] - b[1]), b))
    return boxes[:MOST_FACES]


def copy_size(size: tuple[int, int]) -> tuple[int, int]:
    """The size of the copy faces are looked for in, of a picture of
    ``size``: at most `FACE_PIXELS`, its ratio kept, never enlarged."""
    width, height = size
    if width * height <= FACE_PIXELS:
        return size
    scale = math.sqrt(FACE_PIXELS / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def parse(value: object) -> list[Box] | None:
    """Face boxes as info.json keeps them (a list of four whole numbers
    each; the first `MOST_FACES`), or None for anything else (a file edited
    by hand, or damaged)."""
    if not isinstance(value, list):
        return None
    boxes = []
    for box in value[:MOST_FACES]:
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(type(n) is int for n in box)
        ):
            return None
        boxes.append((box[0], box[1], box[2], box[3]))
    return boxes


def _scaled(box: Box, scale_x: float, scale_y: float, size: tuple[int, int]) -> Box:
    """A box of the copy in the original's pixels, edges rounded outward."""
    left, top, right, bottom = box
    return (
        max(0, math.floor(left * scale_x)),
        max(0, math.floor(top * scale_y)),
        min(size[0], math.ceil(right * scale_x)),
        min(size[1], math.ceil(bottom * scale_y)),
    )


def _pixels(image: Image.Image) -> Any:
    import numpy

    return numpy.asarray(image)


def _cascade() -> Any:
    """This thread's classifier (OpenCV's is not safe to share between
    threads that detect at once), loaded on first use."""
    cascade = getattr(_local, "cascade", None)
    if cascade is None:
        cv2 = opencv.load()
        path = cv2.data.haarcascades + CASCADE
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(
                f"OpenCV's face model {path} is missing: install "
                "opencv-python-headless 4.x (the 5.x wheels carry no model)"
            )
        _local.cascade = cascade
    return cascade
