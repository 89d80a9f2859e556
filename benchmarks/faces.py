"""Faces: how well they are found, whether crops keep them, what it costs.

    python3 benchmarks/faces.py [--groups 200] [--rounds 7]

1. The detector on composed group pictures (`corpus.group`: LFW faces at
   known boxes on photographs with no one in them, landscape and portrait):
   precision and recall, recall by the face's share of the long side, and
   detections on the bare photographs and on the astronaut (one face).
2. Crops: for each picture, ``x300-smart`` and a narrow cover crop
   (``200x300`` of a landscape, ``300x200`` of a portrait) placed as before
   faces (the attention score alone) and now: the share that keep every
   face whole where they all fit in the crop, and the share that cut one.
3. CPU of a cold ``x300-smart.jpg`` of a 12-megapixel JPEG, alternating in
   each round: before faces, now (the faces looked for), and now with the
   faces known (info.json keeps them after the first render of an image).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image

from benchmarks import corpus
from benchmarks.common import cpu_ms, photo
from imageserver.config import Config
from imageserver.imaging import faces, renderer
from imageserver.naming import Variant, VariantRules

RULES = VariantRules(frozenset({"jpg", "png"}), 0, 4000)


def detector(groups: list[corpus.Group]) -> None:
    found = missed = wrong = 0
    by_share: dict[str, list[int]] = {}
    for group in groups:
        detected = faces.detect(group.image, group.image.size)
        for face in group.faces:
            hit = any(corpus.matches(d, face) for d in detected)
            found, missed = found + hit, missed + (not hit)
            share = (face[2] - face[0]) / max(group.image.size)
            bucket = "under 1/10" if share < 0.1 else "1/10 and over"
            by_share.setdefault(bucket, [0, 0])[hit] += 1
        wrong += sum(
            not any(corpus.matches(d, f) for f in group.faces) for d in detected
        )
    print(f"detector on {len(groups)} pictures, {found + missed} faces:")
    print(f"  precision {found / max(1, found + wrong):.3f} ({wrong} false)")
    print(f"  recall {found / (found + missed):.3f}")
    for bucket, (no, yes) in sorted(by_share.items()):
        print(
            f"  recall of faces {bucket} of the long side: "
            f"{yes / (yes + no):.3f} of {yes + no}"
        )
    false = {}
    for name in corpus.BACKGROUNDS:
        picture = corpus.photo(name)
        false[name] = len(faces.detect(picture, picture.size))
    named = ", ".join(f"{n} {c}" for n, c in false.items() if c) or "none"
    print(f"  detections on {len(false)} photographs of no one: {named}")
    astronaut = faces.detect(corpus.photo("astronaut"), (512, 512))
    hers = any(corpus.matches(d, corpus.ASTRONAUT_FACE) for d in astronaut)
    print(
        f"  astronaut: {len(astronaut)} found, her face {'found' if hers else 'missed'}"
    )


def _name(label: str, image: Image.Image) -> str:
    narrow = "200x300" if image.width >= image.height else "300x200"
    return {
        "x300-smart": "x300-smart.png",
        "narrow smart": f"{narrow}-smart.png",
        "narrow faces": f"{narrow}-faces.png",
    }[label]


def crops(groups: list[corpus.Group]) -> None:
    print("crops (shares of the crops):")
    print(f"  {'variant':<14} {'':>7} {'every face kept where all fit':>30} {'cut':>6}")
    for label in ("x300-smart", "narrow smart", "narrow faces"):
        for when in ("before", "now"):
            if when == "before" and label == "narrow faces":
                continue  # new
            kept = fit = cut = 0
            for group in groups:
                image, truth = group.image, group.faces
                variant = RULES.canonical(_name(label, image))
                assert variant is not None
                known = faces.detect(image, image.size) if when == "now" else []
                box = renderer.cover_box(image, variant, known)
                axis = 0 if box[2] - box[0] < image.width else 1
                low, high = box[axis], box[axis + 2]
                whole = [low <= f[axis] and f[axis + 2] <= high for f in truth]
                partly = [f[axis] < high and low < f[axis + 2] for f in truth]
                cut += any(p and not w for p, w in zip(partly, whole, strict=True))
                span = max(f[axis + 2] for f in truth) - min(f[axis] for f in truth)
                if span <= high - low:
                    fit += 1
                    kept += all(whole)
            print(
                f"  {label:<14} {when:>7} {kept / fit:>21.3f} of {fit:<5}"
                f" {cut / len(groups):>6.3f}"
            )


def _timed(
    data: bytes, variant: Variant, known: list[faces.Box] | None
) -> Callable[[], object]:
    limits = Config().decode_limits
    return lambda: renderer.render_many(data, [variant], limits, known_faces=known)


def cost(rounds: int) -> None:
    variant = RULES.canonical("x300-smart.jpg")
    assert variant is not None
    pictures = {"synthetic": photo((4000, 3000))}
    for name in corpus.PHOTOS[:4]:
        out = io.BytesIO()
        big = corpus.photo(name).resize((4000, 3000), Image.Resampling.BICUBIC)
        big.save(out, "JPEG", quality=90)
        pictures[name] = out.getvalue()
    print(f"CPU ms of a cold x300-smart.jpg of a 4000x3000 JPEG, {rounds} rounds:")
    heads = ("before", "now", "ratio", "known", "ratio")
    print(f"  {'picture':<12}" + "".join(f" {h:>7}" for h in heads))
    limits = Config().decode_limits
    for name, data in pictures.items():
        info, _ = renderer.render_many(data, [], limits, with_faces=True)
        runs = {
            "before": _timed(data, variant, []),
            "now": _timed(data, variant, None),
            "known": _timed(data, variant, list(info.faces or ())),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(rounds):
            for key, run in runs.items():
                times[key].append(cpu_ms(run, 1))
        m = {k: statistics.median(v) for k, v in times.items()}
        print(
            f"  {name:<12} {m['before']:7.1f} {m['now']:7.1f}"
            f" {m['now'] / m['before']:6.2f} {m['known']:7.1f}"
            f" {m['known'] / m['before']:6.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    groups = [
        corpus.group(i, (1200, 800) if i % 2 else (800, 1200))
        for i in range(args.groups)
    ]
    detector(groups)
    crops(groups)
    cost(args.rounds)


if __name__ == "__main__":
    main()
