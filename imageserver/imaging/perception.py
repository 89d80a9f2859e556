"""How a picture looks after encoding: SSIMULACRA2, in float32 with OpenCV.

SSIMULACRA2 (Cloudinary, BSD-3) scores an encoded picture against its
reference from 100 (no visible difference) down: about 90 is visually
lossless, 80 very high quality, 70 high, 50 medium. It compares the two in
the XYB colour space at six scales, by a structural similarity and by the
edges each gained or lost.

This is the computation of the ``ssimulacra2`` package (0.3.0, a Python
port of the reference), with its constants and its choices at the borders,
written in float32 with OpenCV's separable filters instead of float64 with
SciPy: 5 to 6 times cheaper, 8 to 10 against a reference kept for a
search's several scores (30 ms for 800x533), within 0.15 point of it
(tests/imaging/test_perception.py checks it against the package, and the
package's steps in the order of libjxl's reference where the two differ).
The package itself costs 0.3 s of CPU for an 800x533 picture and would
load SciPy into every worker; it is a test dependency only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy
from PIL import Image

from imageserver.imaging import colour, opencv

#: The opsin absorbance matrix and bias of the XYB colour space (libjxl).
_OPSIN = numpy.array(
    [
        [0.30, 1.0 - 0.078 - 0.30, 0.078],
        [0.23, 1.0 - 0.078 - 0.23, 0.078],
        [
            0.24342268924547819,
            0.20476744424496821,
            1.0 - 0.24342268924547819 - 0.20476744424496821,
        ],
    ],
    dtype=numpy.float32,
)
_BIAS = 0.0037930732552754493
_CBRT_BIAS = float(numpy.cbrt(_BIAS))
#: The opsin mix with its bias, as `cv2.transform` takes it.
_MIX = numpy.hstack([_OPSIN, numpy.full((3, 1), _BIAS, dtype=numpy.float32)])
#: From the cube roots to the planes compared: X = (R - G) / 2, scaled by
#: 14 and moved up by 0.42; Y = (R + G) / 2 + 0.01; B - Y + 0.55 (each
#: cube root less the bias's, which cancels but in Y).
_POSITIVE = numpy.array(
    [
        [7.0, -7.0, 0.0, 0.42],
        [0.5, 0.5, 0.0, 0.01 - _CBRT_BIAS],
        [-0.5, -0.5, 1.0, 0.55],
    ],
    dtype=numpy.float32,
)
_C2 = numpy.float32(0.0009)
SCALES = 6
#: The fewest pixels a side SSIMULACRA2 compares (libjxl's reference
#: refuses smaller pictures).
SMALLEST = 8
#: The blur's sigma and its reach (SciPy's ``truncate=3.33``: 5 pixels).
SIGMA = 1.5
_RADIUS = int(3.33 * SIGMA + 0.5)

#: The weights of the 108 averages: 3 planes x 6 scales x 2 norms x (the
#: structure, the edges gained, the edges lost).
_WEIGHTS = numpy.array(
    [
        0.0, 0.0007376606707406586, 0.0, 0.0, 0.0007793481682867309, 0.0,
        0.0, 0.0004371155730107379, 0.0, 1.1041726426657346,
        0.00066284834129271, 0.00015231632783718752, 0.0, 0.0016406437456599754,
        0.0, 1.8422455520539298, 11.441172603757666, 0.0, 0.0007989109436015163,
        0.000176816438078653, 0.0, 1.8787594979546387, 10.94906990605142, 0.0,
        0.0007289346991508072, 0.9677937080626833, 0.0, 0.00014003424285435884,
        0.9981766977854967, 0.00031949755934435053, 0.0004550992113792063, 0.0,
        0.0, 0.0013648766163243398, 0.0, 0.0, 0.0, 0.0, 0.0, 7.466890328078848,
        0.0, 17.445833984131262, 0.0006235601634041466, 0.0, 0.0,
        6.683678146179332, 0.00037724407979611296, 1.027889937768264,
        225.20515300849274, 0.0, 0.0, 19.213238186143016, 0.0011401524586618361,
        0.001237755635509985, 176.39317598450694, 0.0, 0.0, 24.43300999870476,
        0.28520802612117757, 0.0004485436923833408, 0.0, 0.0, 0.0,
        34.77906344483772, 44.835625328877896, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0008680556573291698, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0005313191874358747, 0.0, 0.00016533814161379112, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0004179171803251336, 0.0017290828234722833, 0.0,
        0.0020827005846636437, 0.0, 0.0, 8.826982764996862, 23.19243343998926,
        0.0, 95.1080498811086, 0.9863978034400682, 0.9834382792465353,
        0.0012286405048278493, 171.2667255897307, 0.9807858872435379, 0.0, 0.0,
        0.0, 0.0005130064588990679, 0.0, 0.00010854057858411537,
    ],
    dtype=numpy.float64,
)  # fmt: skip

#: sRGB's 256 values in linear light.
_LINEAR = colour.LINEAR.astype(numpy.float32)
#: The blur's taps (SciPy's Gaussian at `SIGMA`, normalised).
_TAPS = numpy.exp(-0.5 * (numpy.arange(-_RADIUS, _RADIUS + 1) / SIGMA) ** 2)
_KERNEL = (_TAPS / _TAPS.sum()).astype(numpy.float32)

#: The qualities a level may choose among: below, JPEG's blocks show at
#: any size; above, bytes grow faster than any score.
LOWEST, HIGHEST = 10, 95
#: Encodes a search makes at most; it stops sooner once the lowest quality
#: that keeps the level is known to within `PRECISION`.
MOST_ENCODES = 5
PRECISION = 2
#: How much a score moves per quality point near the formats' defaults,
#: for the first step (benchmarks/quality.py): about half a point.
SLOPE = 0.5
#: About what the formats' default qualities score on a photograph
#: (benchmarks/quality.py): a level's search starts as far from the
#: default as its target is from this.
DEFAULTS_SCORE = 80.0
#: The longest first step: `SLOPE` is a guess.
FIRST_STEP = 24
#: The slopes a step trusts, from two tries (a flat stretch would send it
#: to the end of the range).
SLOPES = (0.15, 1.5)
#: An output over this many pixels, each side rounded up to 64, is judged
#: on a sample of it (the `probe`): tiles of `TILE` pixels a side, `TILES`
#: by `TILES` at most.
TILE = 128
TILES = 3
PROBE_PIXELS = (TILE * TILES) ** 2
#: What a sample must score above the level's target: a sample scores a
#: point above the whole output on the median (benchmarks/quality.py).
SAMPLE_MARGIN = 1.0


@dataclass(frozen=True)
class Choice:
    """What a search found: the quality, the score it keeps (None where
    not judged), and the encoding of the picture searched at that quality
    (empty where it is not the output's)."""

    quality: int
    score: float | None
    data: bytes


def score(reference: Image.Image, distorted: Image.Image) -> float:
    """SSIMULACRA2 of ``distorted`` against ``reference``, of the same size,
    at least `SMALLEST` pixels a side (a ValueError otherwise).

    Transparency is judged as the reference package judges it: each is laid
    on a dark and on a light grey, and the worse score counts.
    """
    alpha = _has_alpha(reference) or _has_alpha(distorted)
    return Reference(reference, alpha).score(distorted)


class Reference:
    """A reference picture's half of the computation, done once for any
    number of pictures scored against it (a search scores several)."""

    def __init__(self, image: Image.Image, alpha: bool | None = None) -> None:
        if min(image.size) < SMALLEST:
            raise ValueError(
                f"{image.width}x{image.height} is under {SMALLEST} pixels a side: "
                "too small to judge"
            )
        self.size = image.size
        alpha = _has_alpha(image) if alpha is None else alpha
        self._backgrounds: tuple[float | None, ...] = (0.1, 0.9) if alpha else (None,)
        self._scales = [_prepared(_linear(image, b)) for b in self._backgrounds]

    def score(self, distorted: Image.Image) -> float:
        if distorted.size != self.size:
            raise ValueError(f"sizes differ: {self.size} and {distorted.size}")
        return min(
            _final(_against(scales, _linear(distorted, background)))
            for scales, background in zip(self._scales, self._backgrounds, strict=True)
        )


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def _linear(image: Image.Image, background: float | None = None) -> Any:
    """The picture in linear light, H x W x 3 float32, transparency laid on
    a grey of ``background`` (in sRGB values, 0-1) as the package does."""
    if background is None:
        return _LINEAR[numpy.asarray(image.convert("RGB"))]
    rgba = numpy.asarray(image.convert("RGBA"))
    values = rgba[..., :3].astype(numpy.float32) / 255
    alpha = rgba[..., 3:].astype(numpy.float32) / 255
    blended = values * alpha + (1 - alpha) * numpy.float32(background)
    return colour.to_linear(blended)


def _xyb(linear: Any) -> Any:
    """Linear RGB to the positive XYB planes SSIMULACRA2 compares: the
    opsin mix (with its bias), the cube root, then X, Y and B-Y rescaled
    (the cube root's bias folded into the second mix)."""
    cv2 = opencv.load()
    mixed = cv2.transform(linear, _MIX)
    numpy.maximum(mixed, 0, out=mixed)
    numpy.cbrt(mixed, out=mixed)
    return cv2.transform(mixed, _POSITIVE)


def _blur(planes: Any) -> Any:
    """The Gaussian blur of the package: outside the picture, zero to the
    left and right and the edge mirrored above and below (it blurs its
    planes transposed, zero-padding their first axis)."""
    cv2 = opencv.load()
    across = cv2.filter2D(
        planes, -1, _KERNEL.reshape(1, -1), borderType=cv2.BORDER_CONSTANT
    )
    return cv2.filter2D(
        across, -1, _KERNEL.reshape(-1, 1), borderType=cv2.BORDER_REFLECT
    )


def _downsampled(linear: Any) -> Any:
    """Each 2x2 block's mean (a part block at an odd edge: its own mean)."""
    height, width = linear.shape[:2]
    odd_h, odd_w = height % 2, width % 2
    if odd_h or odd_w:
        linear = numpy.pad(linear, ((0, odd_h), (0, odd_w), (0, 0)))
    sums = linear[0::2, 0::2] + linear[1::2, 0::2]
    sums += linear[0::2, 1::2]
    sums += linear[1::2, 1::2]
    if not (odd_h or odd_w):
        return sums * numpy.float32(0.25)
    rows = numpy.full(sums.shape[0], 2, dtype=numpy.float32)
    columns = numpy.full(sums.shape[1], 2, dtype=numpy.float32)
    rows[-1] -= odd_h
    columns[-1] -= odd_w
    return sums / (rows[:, None, None] * columns[None, :, None])


def _scales(linear: Any) -> Iterator[Any]:
    """The picture in linear light at each scale compared: halved while
    the one before is at least 8 pixels a side, as libjxl's reference has
    it (the port checks the halved one, and gives pictures under 256
    pixels a side one scale less)."""
    for scale in range(SCALES):
        if linear.shape[0] < 8 or linear.shape[1] < 8:
            return
        if scale:
            linear = _downsampled(linear)
        yield linear


def _prepared(linear: Any) -> list[tuple[Any, Any, Any, Any]]:
    """Per scale, the reference's XYB planes, their blur, their variance
    and 1 + their distance from that blur."""
    prepared = []
    for scaled in _scales(linear):
        one = _xyb(scaled)
        mu1 = _blur(one)
        variance = _blur(one * one)
        variance -= mu1 * mu1
        edges = numpy.abs(one - mu1)
        edges += 1
        prepared.append((one, mu1, variance, edges))
    return prepared


def _against(prepared: list[tuple[Any, Any, Any, Any]], linear: Any) -> list[Any]:
    return [
        _compare(*scale, _xyb(scaled))
        for scale, scaled in zip(prepared, _scales(linear), strict=True)
    ]


def _norms(values: Any) -> tuple[Any, Any]:
    """The mean and the 4-norm of each plane of a non-negative map (OpenCV
    sums in float64)."""
    cv2 = opencv.load()
    mean = numpy.array(cv2.mean(values)[:3])
    numpy.multiply(values, values, out=values)
    numpy.multiply(values, values, out=values)
    return mean, numpy.array(cv2.mean(values)[:3]) ** 0.25


def _compare(one: Any, mu1: Any, variance1: Any, edges1: Any, two: Any) -> Any:
    """This scale's averages, [plane][norm][kind]: the structural
    dissimilarity, the edges gained and the edges lost."""
    mu2 = _blur(two)
    covariance = _blur(one * two)
    covariance -= mu1 * mu2
    # 1 - (1 - (mu1 - mu2)^2) (2 covariance + C2)
    #       / (variance1 + variance2 + C2), at least 0.
    denominator = _blur(two * two)
    denominator -= mu2 * mu2
    denominator += variance1
    denominator += _C2
    covariance *= 2
    covariance += _C2
    difference = mu1 - mu2
    difference *= difference
    numpy.subtract(1, difference, out=difference)
    covariance *= difference
    covariance /= denominator
    ssim = numpy.subtract(1, covariance, out=covariance)
    numpy.maximum(ssim, 0, out=ssim)
    # (1 + |two - mu2|) / (1 + |one - mu1|) - 1: above 0 where the encoded
    # picture has edges the reference has not (ringing, blocks), below
    # where it lost them (blur).
    two = two - mu2
    numpy.abs(two, out=two)
    two += 1
    two /= edges1
    two -= 1
    lost = numpy.negative(two)
    numpy.maximum(lost, 0, out=lost)
    gained = numpy.maximum(two, 0, out=two)
    out = numpy.empty((3, 2, 3))
    out[:, 0, 0], out[:, 1, 0] = _norms(ssim)
    out[:, 0, 1], out[:, 1, 1] = _norms(gained)
    out[:, 0, 2], out[:, 1, 2] = _norms(lost)
    return out


def _final(averages: list[Any]) -> float:
    """The weighted sum of every scale's averages, mapped to the score."""
    if not averages:
        return 100.0
    # The weights are taken in turn, plane, scale, norm, kind: with fewer
    # scales, later planes take the weights of earlier planes' scales, as
    # the reference's do.
    stacked = numpy.stack(averages, axis=1)  # plane, scale, norm, kind
    used = _WEIGHTS[: stacked.size].reshape(stacked.shape)
    total = float((used * numpy.abs(stacked)).sum()) * 0.9562382616834844
    total = (
        2.326765642916932 * total
        - 0.020884521182843837 * total * total
        + 6.248496625763138e-05 * total * total * total
    )
    if total <= 0:
        return 100.0
    return 100.0 - 10.0 * total**0.6276336467831387


def probe(image: Image.Image) -> Image.Image:
    """The picture a search judges: ``image`` itself when it covers at most
    `PROBE_PIXELS` pixels in whole blocks of 64 (`_blocks`), else a mosaic
    of tiles spread evenly over it.

    Tiles start on multiples of 64 pixels, so each encoder's blocks (8 to
    64 pixels) fall on the picture's own grid; a mosaic's seams cost the
    encoder a little more than the picture does, so a sample errs towards
    a higher quality.
    """
    width, height = image.size
    if _blocks(width) * _blocks(height) <= PROBE_PIXELS:
        return image
    across = _starts(width)
    down = _starts(height)
    tile_w, tile_h = min(TILE, width), min(TILE, height)
    mosaic = Image.new(image.mode, (tile_w * len(across), tile_h * len(down)))
    for row, top in enumerate(down):
        for column, left in enumerate(across):
            tile = image.crop((left, top, left + tile_w, top + tile_h))
            mosaic.paste(tile, (column * tile_w, row * tile_h))
    return mosaic


def _blocks(length: int) -> int:
    """A side rounded up to whole blocks of 64 pixels, the largest an
    encoder codes (AVIF's): what a thin strip costs it is its blocks'
    area, four times its own for a strip 16 pixels high."""
    return -(-length // 64) * 64


def _starts(length: int) -> list[int]:
    """Where tiles start along a side: up to `TILES`, evenly spread, on
    multiples of 64 where the side allows."""
    if length <= TILE:
        return [0]
    count = min(TILES, length // TILE)
    room = length - TILE
    starts = []
    for i in range(count):
        start = room * (2 * i + 1) // (2 * count)
        aligned = min(start - start % 64, room)
        starts.append(aligned)
    return sorted(set(starts))


def choose(
    picture: Image.Image,
    encode: Callable[[int], bytes],
    decode: Callable[[bytes], Image.Image],
    target: float,
    start: int,
    encodes: int = MOST_ENCODES,
) -> Choice:
    """The lowest quality whose encoding of ``picture`` (by ``encode``)
    scores at least ``target``, found by `search` from where the format's
    default quality ``start`` would be on a photograph (`DEFAULTS_SCORE`);
    with its score and its encoding."""
    start += round((target - DEFAULTS_SCORE) / SLOPE)
    reference = Reference(picture)
    tried: dict[int, tuple[float, bytes]] = {}

    def trial(quality: int) -> float:
        data = encode(quality)
        tried[quality] = (reference.score(decode(data)), data)
        return tried[quality][0]

    quality = search(trial, target, start, encodes)
    score, data = tried[quality]
    return Choice(quality, score, data)


def search(
    trial: Callable[[int], float], target: float, start: int, encodes: int
) -> int:
    """The lowest quality between `LOWEST` and `HIGHEST` whose score (by
    ``trial``) is at least ``target``, to within `PRECISION`, in at most
    ``encodes`` trials; the highest tried when none reaches it (the last
    try, when none has kept it yet, takes twice the step planned, to land
    past the answer rather than short of it).

    From ``start`` (the format's default): while every try is on one side
    of the target, a step towards it by the slope of the two nearest tries
    (`SLOPE` after the first, and within `SLOPES`); once tries bracket it,
    where the line through the bracket's ends reaches it, a quarter of the
    bracket in at least, or the bracket's middle where the last two tries
    fell on one side (scores rise with quality, but not smoothly).
    """
    scores: dict[int, float] = {}
    sides: list[bool] = []
    quality = min(max(start, LOWEST), HIGHEST)
    while True:
        scores[quality] = trial(quality)
        sides.append(scores[quality] >= target)
        if len(scores) >= encodes:
            break
        keeping = [q for q, s in scores.items() if s >= target]
        high = min(keeping, default=None)
        low = max(
            (q for q, s in scores.items() if s < target and (high is None or q < high)),
            default=None,
        )
        if high is not None and low is not None:
            width = high - low
            if width <= PRECISION:
                break
            if sides[-1] == sides[-2]:
                quality = (low + high) // 2
            else:
                s_low, s_high = scores[low], scores[high]
                line = low + math.ceil((target - s_low) * width / (s_high - s_low))
                guard = max(1, width // 4)
                quality = min(high - guard, max(low + guard, line))
        else:
            edge = high if high is not None else low
            assert edge is not None
            if edge == (LOWEST if high is not None else HIGHEST):
                break
            slope = SLOPE
            if len(scores) > 1:
                others = (q for q in scores if q != edge)
                near = min(others, key=lambda q: abs(q - edge))
                rise = (scores[edge] - scores[near]) / (edge - near)
                slope = min(max(rise, SLOPES[0]), SLOPES[1])
            step = max(1, round(abs(scores[edge] - target) / slope))
            if len(scores) == 1:
                step = min(step, FIRST_STEP)
            quality = edge - step if high is not None else edge + step
            quality = min(max(quality, LOWEST), HIGHEST)
        if high is None and len(scores) == encodes - 1 and low is not None:
            # The last try, when none has kept it: twice the step planned,
            # past the answer rather than short of it.
            quality = min(HIGHEST, quality + max(PRECISION, quality - low))
        if quality in scores:
            break
    keeping = [q for q, s in scores.items() if s >= target]
    return min(keeping) if keeping else max(scores)
