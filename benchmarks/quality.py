"""Quality levels (``-qhigh``, ``-qgood``, ``-qeco``): bytes, scores, cost.

    python3 benchmarks/quality.py [--sizes w200,w800,full]
        [--formats jpg,webp,avif,jxl] [--rounds 3]

The corpus is scikit-image's photographs (its wheel carries them): eight
in colour and four grey ones (as RGB, as a camera would store them). For
``w200`` and ``w800`` each is resized to 12 megapixels and stored as a JPEG
of quality 95, as a camera's would be; ``full`` is ``full_size`` of the
photograph at its own size (0.1 to 2 megapixels), stored losslessly.

For every size and format, against the lossless render of the same name
(``.png``: the pixels the encoder is given), scored with SSIMULACRA2
(imaging.perception, which tests/imaging/test_perception.py holds to the
``ssimulacra2`` package):

1. The format's fixed default quality: its bytes, and its scores' spread
   (least, median, most) over the corpus.
2. Each level: its bytes and scores (the score of the whole output, where
   the level judged a sample of a large one), the qualities it chose.
3. At equal minimum score: the fixed quality a server would need for every
   picture to score at least what the level's worst scored (the lowest
   such quality, by bisection on each picture), and its bytes; the level's
   saving against it.
4. CPU of a cold render, level against the fixed default, alternating in
   each of ``--rounds`` rounds, as the median ratio over the corpus.

``--sizes full12`` measures only that cost, for ``full_size`` of the
12-megapixel JPEGs (scoring 12 megapixels whole takes seconds a score).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image

from imageserver import formats
from imageserver.imaging import perception, renderer
from imageserver.naming import QUALITY_LEVELS, VariantRules

PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field",
          "immunohistochemistry", "retina", "rocket", "stereo_motorcycle",
          "camera", "moon", "coins", "clock")  # fmt: skip
RULES = VariantRules(frozenset({"jpg", "png", "webp", "avif", "jxl"}), 0, 4000)
LIMITS = renderer.Limits(100_000_000, 0, 4000)


def photograph(name: str) -> Image.Image:
    import skimage.data

    found = getattr(skimage.data, name)()
    if isinstance(found, tuple):  # a stereo pair: the left
        found = found[0]
    return Image.fromarray(found).convert("RGB")


def originals(size: str) -> dict[str, bytes]:
    found = {}
    for name in PHOTOS:
        image = photograph(name)
        out = io.BytesIO()
        if size == "full":
            image.save(out, "PNG")
        else:
            scale = (12e6 / (image.width * image.height)) ** 0.5
            big = (round(image.width * scale), round(image.height * scale))
            image.resize(big, Image.Resampling.LANCZOS).save(out, "JPEG", quality=95)
        found[name] = out.getvalue()
    return found


def render(data: bytes, name: str) -> tuple[bytes, tuple[int, float | None] | None]:
    variant = RULES.canonical(name)
    assert variant is not None
    info, outputs = renderer.render_many(data, [variant], LIMITS)
    return outputs[0], (info.chosen_qualities or {}).get(variant.name)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def render_ms(data: bytes, name: str) -> float:
    """CPU milliseconds of one cold render, every thread's (an encoder may
    use its own)."""
    start = time.process_time()
    render(data, name)
    return (time.process_time() - start) * 1000


def lowest_fixed(reference: Image.Image, fmt: str, target: float) -> int:
    """The lowest quality from which every higher one scores at least
    ``target`` on ``reference`` (bisection, from the top: 100 when none)."""
    variant = RULES.canonical(f"x10.{fmt}")
    assert variant is not None
    judge = perception.Reference(reference)

    def keeps(quality: int) -> bool:
        data = renderer._encode(reference, replace(variant, quality=quality))
        return judge.score(decoded(data)) >= target

    low, high = 0, 100  # low fails (or is none), high keeps (or is the top)
    if not keeps(100):
        return 100
    while high - low > 1:
        middle = (low + high) // 2
        if keeps(middle):
            high = middle
        else:
            low = middle
    return high


def encoded_at(reference: Image.Image, fmt: str, quality: int) -> int:
    variant = RULES.canonical(f"x10.{fmt}")
    assert variant is not None
    return len(renderer._encode(reference, replace(variant, quality=quality)))


def spread(values: list[float]) -> str:
    return f"{min(values):5.1f} {statistics.median(values):5.1f} {max(values):5.1f}"


def cost_only(fmt: str, rounds: int) -> None:
    sources = originals("w200")  # the 12-megapixel JPEGs
    plain = f"full_size.{fmt}"
    print(f"\nfull_size.{fmt} of the 12-megapixel JPEGs: cold render CPU")
    for level in QUALITY_LEVELS:
        ratios, extra = [], []
        for _ in range(rounds):
            for data in sources.values():
                a = render_ms(data, plain)
                b = render_ms(data, f"full_size-q{level}.{fmt}")
                ratios.append(b / a)
                extra.append(b - a)
        print(
            f"  q{level:5}: {statistics.median(ratios):.2f}x the default's (least "
            f"{min(ratios):.2f}x, most {max(ratios):.2f}x), "
            f"{statistics.median(extra):.0f} ms more on the median",
            flush=True,
        )


def measure(size: str, fmt: str, rounds: int) -> None:
    if size == "full12":
        cost_only(fmt, rounds)
        return
    sources = originals(size)
    name = "full_size" if size == "full" else size
    references = {
        photo: decoded(render(data, f"{name}.png")[0]).convert("RGB")
        for photo, data in sources.items()
    }
    default = formats.output(fmt).quality
    fixed = {photo: render(data, f"{name}.{fmt}")[0] for photo, data in sources.items()}
    fixed_scores = [perception.score(references[p], decoded(fixed[p])) for p in sources]
    fixed_bytes = sum(len(b) for b in fixed.values())
    size_of = references[PHOTOS[0]].size
    print(
        f"\n{name}.{fmt} ({len(sources)} photographs; the first {size_of[0]}x"
        f"{size_of[1]}), fixed default q{default}: {fixed_bytes} bytes, "
        f"score least/median/most {spread(fixed_scores)}"
    )
    for level in QUALITY_LEVELS:
        outputs = {}
        chosen = {}
        for photo, data in sources.items():
            outputs[photo], chosen[photo] = render(data, f"{name}-q{level}.{fmt}")
        scores = [perception.score(references[p], decoded(outputs[p])) for p in sources]
        level_bytes = sum(len(b) for b in outputs.values())
        worst = min(scores)
        needed = max(lowest_fixed(references[p], fmt, worst) for p in sources)
        needed_bytes = sum(encoded_at(references[p], fmt, needed) for p in sources)
        qualities = sorted(c[0] for c in chosen.values() if c)
        sampled = [
            abs((c[1] or 0) - s) for c, s in zip(chosen.values(), scores, strict=True)
        ]
        ratios, extra = [], []
        plain, by_level = f"{name}.{fmt}", f"{name}-q{level}.{fmt}"
        for _ in range(rounds):
            for data in sources.values():
                a = render_ms(data, plain)
                b = render_ms(data, by_level)
                ratios.append(b / a)
                extra.append(b - a)
        print(
            f"  q{level:5} (target {QUALITY_LEVELS[level]:.0f}): {level_bytes:8} bytes "
            f"({level_bytes / fixed_bytes:.2f}x the default), score "
            f"{spread(scores)}, qualities {qualities[0]}-{qualities[-1]} "
            f"(median {statistics.median(qualities)}); judged score off the "
            f"whole output's by at most {max(sampled):.1f}"
        )
        print(
            f"         at equal minimum score ({worst:.1f}) a fixed quality needs "
            f"q{needed}: {needed_bytes} bytes; the level saves "
            f"{1 - level_bytes / needed_bytes:.0%}; cold render CPU "
            f"{statistics.median(ratios):.2f}x the default's "
            f"(least {min(ratios):.2f}x, most {max(ratios):.2f}x; "
            f"{statistics.median(extra):.0f} ms more on the median)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="w200,w800,full")
    parser.add_argument("--formats", default="jpg,webp,avif,jxl")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for size in args.sizes.split(","):
        for fmt in args.formats.split(","):
            measure(size, fmt, args.rounds)


if __name__ == "__main__":
    main()
