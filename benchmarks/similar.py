"""Near-duplicates: which copies the perceptual hash finds, and what a
search of a million images costs.

    python3 benchmarks/similar.py [--images 1000000] [--rounds 20]

1. Copies of real photographs (scikit-image's), each rescaled, recompressed,
   lightly cropped and colour-shifted, stored as an upload stores them (the
   server's own decode and hash): the share found at each distance, by kind
   of copy, and the pairs of distinct pictures (the photographs and their
   quarters) as near: the false positives.
2. `SimilarIndex` over a store holding N random hashes: the first search
   (reading the segment), then CPU per search, against a plain Python scan
   of the same hashes measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Coroutine
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image, ImageEnhance

from benchmarks import corpus
from imageserver.config import Config
from imageserver.imaging import likeness, renderer

#: Photographs, each a different picture (the wheel's "cat" is "chelsea").
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "moon", "page", "text", "clock",
          "coins", "brick", "grass", "gravel")  # fmt: skip
DISTANCES = (6, 8, 10, 12, 14, 16)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue()))


def _warmer(image: Image.Image) -> Image.Image:
    r, g, b = image.convert("RGB").split()
    return Image.merge("RGB", (r.point(lambda v: min(255, v + 20)), g,
                               b.point(lambda v: max(0, v - 20))))  # fmt: skip


def copies(image: Image.Image) -> dict[str, Image.Image]:
    w, h = image.size
    return {
        "half size": image.resize((w // 2, h // 2), Image.Resampling.LANCZOS),
        "quarter size": image.resize((w // 4, h // 4), Image.Resampling.LANCZOS),
        "JPEG q30": _jpeg(image, 30),
        "JPEG q70": _jpeg(image, 70),
        "crop 5 % each edge": image.crop((w // 20, h // 20, w - w // 20, h - h // 20)),
        "crop 10 % one side": image.crop((w // 10, 0, w, h)),
        "brighter 15 %": ImageEnhance.Brightness(image).enhance(1.15),
        "saturation +40 %": ImageEnhance.Color(image).enhance(1.4),
        "warmer": _warmer(image),
        "grey": image.convert("L"),
    }


def stored_hash(image: Image.Image) -> int:
    """The hash an upload of ``image`` (as a PNG) gets."""
    out = io.BytesIO()
    image.save(out, "PNG")
    info, _ = renderer.render_many(
        out.getvalue(), [], Config().decode_limits, with_placeholders=True
    )
    assert info.phash is not None
    parsed = likeness.parse(info.phash)
    assert parsed is not None
    return parsed


def finds() -> None:
    found: dict[str, list[int]] = {}
    distinct: list[int] = []
    for name in PHOTOS:
        photo = corpus.photo(name)
        original = stored_hash(photo)
        for kind, copy in copies(photo).items():
            found.setdefault(kind, []).append(
                likeness.distance(original, stored_hash(copy))
            )
        w, h = photo.size
        distinct.append(original)
        for i, j in itertools.product((0, 1), (0, 1)):
            quarter = photo.crop(
                (i * w // 2, j * h // 2, (i + 1) * w // 2, (j + 1) * h // 2)
            )
            distinct.append(stored_hash(quarter))
    print(f"copies of {len(PHOTOS)} photographs found, by the most bits apart:")
    print(f"  {'copy':<22}" + "".join(f" {d:>5}" for d in DISTANCES) + "  bits apart")
    everything: list[int] = []
    for kind, bits in found.items():
        everything += bits
        print(f"  {kind:<22}{_shares(bits)}  {min(bits)}-{max(bits)}")
    print(f"  {'all':<22}{_shares(everything)}")
    pairs = [likeness.distance(a, b) for a, b in itertools.combinations(distinct, 2)]
    wrong = "".join(f" {sum(p <= d for p in pairs):5d}" for d in DISTANCES)
    print(f"  {'distinct pairs as near':<22}{wrong}  of {len(pairs)}")
    print(f"  the nearest distinct pair: {min(pairs)} bits apart")


def _shares(bits: list[int]) -> str:
    return "".join(f" {sum(b <= d for b in bits) / len(bits):5.2f}" for d in DISTANCES)


def search(images: int, rounds: int) -> None:
    import numpy

    from imageserver.storage.local import LocalStorage
    from imageserver.storage.similar import FOLDER, SimilarIndex
    from tests.support import synchronous

    rng = numpy.random.default_rng(0)
    records = numpy.empty(images, dtype=[("op", "S1"), ("md5", "S16"), ("hash", ">u8")])
    records["op"] = b"+"
    records["md5"] = numpy.frombuffer(rng.bytes(16 * images), "S16")
    hashes = rng.integers(0, 2**63, images, dtype=numpy.uint64) * numpy.uint64(2)
    records["hash"] = hashes
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, FOLDER, "p"))
        with open(os.path.join(root, FOLDER, "p", "0" * 20 + ".bench.0"), "wb") as f:
            f.write(records.tobytes())
        index = SimilarIndex(LocalStorage(root, synchronous))
        start, started = time.thread_time(), time.perf_counter()
        answer = _run(index.near("p", int(hashes[0]), 12, 100))
        first = time.thread_time() - start
        wall = time.perf_counter() - started
        assert answer[0][1] == 0
        print(f"search of {images:,} images (--images), {rounds} rounds:")
        size = len(records.tobytes()) / 1e6
        print(f"  first search, reading the segment ({size:.0f} MB): "
              f"{first * 1000:.0f} ms CPU, {wall * 1000:.0f} ms")  # fmt: skip
        plain = [int(h) for h in hashes]
        ours, python = [], []
        for n in range(rounds):
            query = int(hashes[n * 7919 % images]) ^ 0b1011
            start = time.thread_time()
            got = _run(index.near("p", query, 12, 100))
            ours.append(time.thread_time() - start)
            start = time.thread_time()
            expected = sorted(b for h in plain if (b := (h ^ query).bit_count()) <= 12)
            python.append(time.thread_time() - start)
            assert sorted(b for _, b in got) == expected[:100]
        a, b = statistics.median(ours), statistics.median(python)
        print(f"  a search: {a * 1000:.2f} ms CPU (numpy XOR and popcount)")
        print(f"  a Python scan of the same: {b * 1000:.0f} ms; ratio {b / a:.0f}x")


def _run(
    coroutine: Coroutine[Any, Any, list[tuple[str, int]]],
) -> list[tuple[str, int]]:
    """The result of a coroutine that never waits (over a synchronous store)."""
    from twisted.internet.defer import Deferred

    results: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    (result,) = results
    if not isinstance(result, list):
        result.raiseException()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    finds()
    search(args.images, args.rounds)


if __name__ == "__main__":
    main()
