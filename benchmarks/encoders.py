"""Bytes at equal fidelity: encoder settings compared on the same pictures.

    python3 benchmarks/encoders.py [--format avif] [--target 80]

For six photographs (as benchmarks/fidelity.py makes them) and two sizes,
each candidate setting of the format's encoder is run over a ladder of
qualities; each output is scored with SSIMULACRA2 against the exact resize,
and the bytes at the ``--target`` score are interpolated on that ladder.
Prints, per setting, the median ratio of its bytes to the first setting's at
equal fidelity, and its encode time. Needs the ``bench`` extra.
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
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image

from benchmarks.fidelity import reference, score, sources
from imageserver import formats

SETTINGS: dict[str, list[dict[str, Any]]] = {
    "avif": [
        {"subsampling": "4:2:0"},
        {"subsampling": "4:4:4"},
        {"speed": 4},
        {"speed": 4, "subsampling": "4:4:4"},
    ],
    "webp": [{"method": 4}, {"method": 6}],
    "jxl": [{"effort": 7}, {"effort": 8}, {"effort": 9}],
    "jpeg": [{"optimize": True}, {"optimize": True, "progressive": True}],
}
PILLOW = {"avif": "AVIF", "webp": "WEBP", "jpeg": "JPEG", "jxl": "JXL"}
QUALITIES = range(30, 96, 8)


def bytes_at(curve: list[tuple[float, int]], target: float) -> float | None:
    """The bytes at ``target`` score, interpolated on (score, bytes) points."""
    curve = sorted(curve)
    for (s0, b0), (s1, b1) in itertools.pairwise(curve):
        if s0 <= target <= s1 and s1 > s0:
            return b0 + (b1 - b0) * (target - s0) / (s1 - s0)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", default="avif", choices=sorted(SETTINGS))
    parser.add_argument("--target", type=float, default=80.0)
    args = parser.parse_args()
    formats.register_plugins()
    settings = SETTINGS[args.format]
    ratios: dict[int, list[float]] = {i: [] for i in range(len(settings))}
    seconds: dict[int, list[float]] = {i: [] for i in range(len(settings))}
    with tempfile.TemporaryDirectory() as folder:
        for data in sources().values():
            for name in ("x300.png", "w800.png"):
                truth = reference(data, name)
                found = []
                for index, options in enumerate(settings):
                    curve = []
                    for quality in QUALITIES:
                        out = io.BytesIO()
                        start = time.process_time()
                        truth.save(out, PILLOW[args.format], quality=quality, **options)
                        seconds[index].append(time.process_time() - start)
                        decoded = Image.open(io.BytesIO(out.getvalue())).convert("RGB")
                        curve.append((score(truth, decoded, folder), out.tell()))
                    found.append(bytes_at(curve, args.target))
                if all(b is not None for b in found):
                    for index, value in enumerate(found):
                        ratios[index].append(value / found[0])  # type: ignore[operator]
    print(
        f"{args.format}: bytes at SSIMULACRA2 {args.target:g} relative to "
        f"{settings[0]}, and encode time (medians over photographs and sizes)"
    )
    for index, options in enumerate(settings):
        ratio = statistics.median(ratios[index])
        encode = 1000 * statistics.median(seconds[index])
        print(f"  {options!s:45} bytes x{ratio:.3f}   encode {encode:.1f} ms")


if __name__ == "__main__":
    main()
