"""How much detail the drafted decode keeps, by SSIMULACRA2, and what it costs.

    python3 benchmarks/fidelity.py [--headroom 1,1.5,2] [--names x300.png,w800.png]
        [--megapixels 12]

Six photographs from scikit-image's data, resized to 12 megapixels (or
``--megapixels``: 0.48 is a CMS's 800x600) and
stored as JPEG q95, are rendered by imageserver with each draft headroom
(``renderer.DRAFT_HEADROOM``: the decode keeps at least that many times the
output's pixels a side), and by libvips' thumbnail (imgproxy's and imagor's
engine, when pyvips is installed) to lossless PNG, and scored with SSIMULACRA2 against
the reference: a full decode of the same JPEG, the same box, resized with
float LANCZOS. Higher is closer (90 is very high quality; 100 identical).
Prints the median score and CPU per render for each headroom, alternating.
Needs the ``bench`` extra (scikit-image, ssimulacra2).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image

from benchmarks.common import cpu_ms
from imageserver.imaging import geometry, renderer
from imageserver.naming import VariantRules

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
          "hubble_deep_field")  # fmt: skip
RULES = VariantRules(frozenset({"png"}), 75, 4000)
LIMITS = renderer.Limits(100_000_000, 0, 4000)


def sources(megapixels: float = 12) -> dict[str, bytes]:
    import skimage.data

    found = {}
    for name in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        scale = (megapixels * 1e6 / (image.width * image.height)) ** 0.5
        size = (round(image.width * scale), round(image.height * scale))
        big = image.resize(size, Image.Resampling.LANCZOS)
        out = io.BytesIO()
        big.save(out, "JPEG", quality=95)
        found[name] = out.getvalue()
    return found


def reference(data: bytes, name: str) -> Image.Image:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    variant = RULES.parse(name)
    assert variant is not None
    plan = geometry.plan(variant, *image.size)
    return image.resize(plan.size, Image.Resampling.LANCZOS, box=plan.box)


def libvips(data: bytes, name: str) -> Image.Image:
    """What libvips' thumbnail makes of it (imgproxy's and imagor's engine):
    shrink-on-load, then its own resize; the same size and crop."""
    import pyvips

    variant = RULES.parse(name)
    assert variant is not None
    width, height = Image.open(io.BytesIO(data)).size
    plan = geometry.plan(variant, width, height)
    out_w, out_h = plan.size
    if plan.box != (0, 0, width, height):
        thumb = pyvips.Image.thumbnail_buffer(data, out_w, height=out_h, crop="centre")
    else:  # its rounding of the other side may differ by one: force ours
        thumb = pyvips.Image.thumbnail_buffer(data, out_w, height=out_h, size="force")
    return Image.open(io.BytesIO(thumb.write_to_buffer(".png"))).convert("RGB")


def score(reference: Image.Image, candidate: Image.Image, folder: str) -> float:
    from ssimulacra2 import compute_ssimulacra2

    a, b = os.path.join(folder, "a.png"), os.path.join(folder, "b.png")
    reference.save(a)
    candidate.save(b)
    return float(compute_ssimulacra2(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--headroom", default="1,1.5,2")
    parser.add_argument("--names", default="x300.png,w800.png")
    parser.add_argument("--megapixels", type=float, default=12)
    args = parser.parse_args()
    headrooms = [float(h) for h in args.headroom.split(",")]
    names = args.names.split(",")
    photos = sources(args.megapixels)
    default = renderer.DRAFT_HEADROOM
    scores: dict[tuple[str, float], list[float]] = {}
    times: dict[tuple[str, float], list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for data in photos.values():
            for name in names:
                variant = RULES.parse(name)
                assert variant is not None
                truth = reference(data, name)
                try:
                    peer = libvips(data, name)
                except ImportError:  # pyvips is optional
                    peer = None
                if peer is not None:
                    scores.setdefault((name, 0), []).append(score(truth, peer, folder))
                for headroom in headrooms:
                    renderer.DRAFT_HEADROOM = headroom
                    out = renderer.render(data, variant, LIMITS)
                    ours = Image.open(io.BytesIO(out)).convert("RGB")
                    scores.setdefault((name, headroom), []).append(
                        score(truth, ours, folder)
                    )
                    times.setdefault((name, headroom), []).append(
                        cpu_ms(
                            lambda d=data, v=variant: renderer.render(d, v, LIMITS),  # type: ignore[misc]
                            5,
                        )
                    )
    renderer.DRAFT_HEADROOM = default
    print(
        f"{len(photos)} photographs at {args.megapixels:g} MP, JPEG q95; "
        "SSIMULACRA2 against a "
        "full decode + float LANCZOS (median); CPU ms per render (median)"
    )
    for name in names:
        if (name, 0) in scores:
            print(f"{name:10} libvips thumbnail: SSIMULACRA2 "
                  f"{statistics.median(scores[name, 0]):5.1f}")  # fmt: skip
        base = statistics.median(times[name, headrooms[0]])
        for headroom in headrooms:
            ms = statistics.median(times[name, headroom])
            print(f"{name:10} headroom {headroom}: SSIMULACRA2 "
                  f"{statistics.median(scores[name, headroom]):5.1f}   "
                  f"{ms:6.1f} ms ({ms / base:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
