"""Pictures for measuring analysis, made without a network.

Real photographs come from scikit-image's data (the ones its wheel carries).
Pictures with faces at known places are composed from its ``lfw_subset``:
100 faces of Labeled Faces in the Wild, 25x25 grey, each pasted (grown, with
its edge pixels repeated around it) onto a photograph with no person in it,
with some of the 100 non-face patches of the same set as decoys. A face's
box is the 25x25 crop's place: what a detector is expected to find.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

from PIL import Image

Box = tuple[int, int, int, int]

#: Photographs the scikit-image wheel carries, with no person's face in them.
BACKGROUNDS = ("coffee", "rocket", "chelsea", "hubble_deep_field", "retina",
               "immunohistochemistry", "brick", "grass", "gravel", "moon",
               "page", "clock", "text")  # fmt: skip
#: Photographs with no person's face, for other measures.
PHOTOS = ("astronaut", "coffee", "rocket", "chelsea", "hubble_deep_field",
          "immunohistochemistry")  # fmt: skip
#: Where the astronaut's face is, in her 512x512 photograph (by eye).
ASTRONAUT_FACE = (170, 55, 280, 175)


@dataclass(frozen=True)
class Group:
    """A composed picture and its faces' boxes."""

    image: Image.Image
    faces: list[Box]


@cache
def photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


@cache
def _lfw() -> list[Image.Image]:
    import numpy
    import skimage.data

    patches = (skimage.data.lfw_subset() * 255).astype(numpy.uint8)
    return [Image.fromarray(p) for p in patches]


def faces() -> list[Image.Image]:
    """The 100 faces, 25x25 grey."""
    return _lfw()[:100]


def non_faces() -> list[Image.Image]:
    """The 100 patches of the same set with no face."""
    return _lfw()[100:]


def group(seed: int, size: tuple[int, int] = (1200, 800)) -> Group:
    """A picture of ``size`` with 1-5 faces of 10-30 % of its short side,
    apart from each other, and up to 2 decoys."""
    rnd = random.Random(seed)
    width, height = size
    image = photo(rnd.choice(BACKGROUNDS)).resize(size, Image.Resampling.BICUBIC)
    boxes: list[Box] = []
    wanted = rnd.randint(1, 5)
    for _ in range(200):
        if len(boxes) == wanted:
            break
        side = int(rnd.uniform(0.10, 0.30) * min(size))
        x, y = rnd.randrange(width - side), rnd.randrange(height - side)
        box = (x, y, x + side, y + side)
        if any(_near(box, other, side // 3) for other in boxes):
            continue
        _paste_face(image, rnd.choice(faces()), box)
        boxes.append(box)
    for _ in range(rnd.randint(0, 2)):
        side = int(rnd.uniform(0.10, 0.25) * min(size))
        x, y = rnd.randrange(width - side), rnd.randrange(height - side)
        box = (x, y, x + side, y + side)
        if not any(_near(box, other, 0) for other in boxes):
            decoy = rnd.choice(non_faces()).resize(
                (side, side), Image.Resampling.BICUBIC
            )
            image.paste(decoy.convert("RGB"), box[:2])
    return Group(image, boxes)


def _paste_face(image: Image.Image, face: Image.Image, box: Box) -> None:
    """``face`` grown to ``box``, with a rim of its edge pixels around it
    (a face cut out to its edges is not what a camera sees)."""
    import numpy

    rim = 4
    grown = Image.fromarray(numpy.pad(numpy.asarray(face), rim, mode="edge"))
    side = box[2] - box[0]
    whole = side * (25 + 2 * rim) // 25
    offset = side * rim // 25
    patch = grown.resize((whole, whole), Image.Resampling.BICUBIC).convert("RGB")
    image.paste(patch, (box[0] - offset, box[1] - offset))


def _near(a: Box, b: Box, margin: int) -> bool:
    return not (
        a[2] + margin <= b[0]
        or b[2] + margin <= a[0]
        or a[3] + margin <= b[1]
        or b[3] + margin <= a[1]
    )


def matches(found: Box, face: Box) -> bool:
    """Whether a detection is of ``face``: its centre inside the face's box,
    its size between half and two and a half times the face's."""
    cx, cy = (found[0] + found[2]) / 2, (found[1] + found[3]) / 2
    side = face[2] - face[0]
    return (
        face[0] <= cx <= face[2]
        and face[1] <= cy <= face[3]
        and 0.5 * side <= found[2] - found[0] <= 2.5 * side
    )
