"""How alike two pictures look: a 64-bit perceptual hash and its distance.

The hash is imagehash's DCT hash (``imagehash.phash``): the picture in grey
at 32x32 (Lanczos), the 8x8 lowest frequencies of its DCT, each bit whether
a frequency is above their median, read row by row (of what is seen:
transparency flattened on white, where imagehash drops the alpha). A rescaled,
recompressed or colour-shifted copy keeps all or nearly all of the bits, a
picture of something else about half; a crop moves several
(docs/performance.md has the figures). A decode over 1024 pixels a side is
box-reduced to that first. It is computed here with numpy alone,
bit for bit as imagehash does (the tests compare them): imagehash would load
SciPy and PyWavelets into every worker, 27 MB more, for a 32x32 DCT; numpy
is loaded with this module, at start, as every upload hashes. So a
client can compute it from a file (``str(imagehash.phash(Image.open(f)))``)
to ask for the images like it.
"""

from __future__ import annotations

import math
import re
from functools import cache
from typing import Any

import numpy
from PIL import Image

from imageserver.imaging import analysis

#: How a hash is written: 16 lower-case hex digits.
HASH = re.compile(r"[0-9a-f]{16}")
_SIDE = 32
_KEPT = 8
#: The longest side hashed: a larger decode is box-reduced to it first (a
#: grey copy of a 3000x3000 page would take 9 MB for a 32x32 hash).
_MOST_SIDE = 1024


def phash(image: Image.Image) -> str:
    """The perceptual hash of ``image``, in hex."""
    seen = analysis.flattened(image)
    if max(seen.size) > _MOST_SIDE:  # a page of a TIFF, say: not in full
        seen = seen.reduce(math.ceil(max(seen.size) / _MOST_SIDE))
    small = seen.convert("L").resize((_SIDE, _SIDE), Image.Resampling.LANCZOS)
    pixels = numpy.asarray(small, dtype=numpy.float64)
    dct = _dct()[:_KEPT]
    # dct @ pixels @ dct.T, summed by hand: a matrix product would start
    # BLAS's threads and their buffers in every worker for 8x32x32.
    rows = (dct[:, :, None] * pixels[None, :, :]).sum(axis=1)
    low = (rows[:, None, :] * dct[None, :, :]).sum(axis=2)
    bits = (low > numpy.median(low)).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def parse(text: str) -> int | None:
    """A hash as `phash` writes it, as a number; None for anything else."""
    if HASH.fullmatch(text) is None:
        return None
    return int(text, 16)


def distance(a: int, b: int) -> int:
    """How many of the 64 bits differ (0: alike, about 32: unrelated)."""
    return (a ^ b).bit_count()


@cache
def _dct() -> Any:
    """The matrix of the type-II DCT, unnormalised (as scipy.fftpack.dct):
    row k is 2 cos(pi k (2n + 1) / 2N)."""
    return numpy.array(
        [
            [
                2 * math.cos(math.pi * k * (2 * n + 1) / (2 * _SIDE))
                for n in range(_SIDE)
            ]
            for k in range(_SIDE)
        ]
    )
