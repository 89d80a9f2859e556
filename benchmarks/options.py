"""CPU per cold variant with the v2 options, against bare Pillow doing the same.

    python3 benchmarks/options.py [--rounds 5] [--base REV]

One thread, a 12-megapixel JPEG, medians over rounds. For each name it
prints our processing (decode, plan, resize, effects, encode) against bare
Pillow doing the same work (draft, crop, LANCZOS, the effect, encode), and
``x300-smart.jpg`` against ``x300.jpg`` (the plain crop). With ``--base REV``
the seed names are also measured on that revision (a git worktree, run in
its own process, alternating with this checkout's) and printed as ratios:
what this change costs them.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image, ImageFilter

from benchmarks.common import CHECKOUT, cpu_ms, photo

NAMES = ("w200.jpg", "x300.jpg", "x300-smart.jpg", "300x200-fit.webp",
         "x200-gn-blur4.jpg")  # fmt: skip
SEED_NAMES = ("w200.jpg", "x300.jpg", "300x200.webp", "w800.jpg")


def _draft(data: bytes, size: tuple[int, int]) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", size)
    image.load()
    return image


def _save(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, quality=75)
    return out.getvalue()


def _cover(image: Image.Image, size: tuple[int, int], top: bool) -> Image.Image:
    w, h = image.size
    crop = min(w, h * size[0] // size[1]), min(h, w * size[1] // size[0])
    left = (w - crop[0]) // 2
    upper = 0 if top else (h - crop[1]) // 2
    box = (left, upper, left + crop[0], upper + crop[1])
    return image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)


BARE: dict[str, Callable[[bytes], bytes]] = {
    "w200.jpg": lambda d: _save(
        _draft(d, (200, 150)).resize((200, 150), Image.Resampling.LANCZOS), "JPEG"
    ),
    "x300.jpg": lambda d: _save(
        _cover(_draft(d, (400, 300)), (300, 300), False), "JPEG"
    ),
    "x300-smart.jpg": lambda d: _save(
        _cover(_draft(d, (400, 300)), (300, 300), False), "JPEG"
    ),
    "300x200-fit.webp": lambda d: _save(
        _draft(d, (267, 200)).resize((267, 200), Image.Resampling.LANCZOS), "WEBP"
    ),
    "x200-gn-blur4.jpg": lambda d: _save(
        _cover(_draft(d, (267, 200)), (200, 200), True).filter(
            ImageFilter.GaussianBlur(4)
        ),
        "JPEG",
    ),
}


def measure(names: list[str], repeat: int) -> dict[str, float]:
    """CPU ms per render of each name with the imageserver on sys.path."""
    from imageserver.imaging import renderer
    from imageserver.naming import VariantRules

    rules = VariantRules(frozenset({"jpg", "webp", "png", "avif"}), 75, 4000)
    data = photo()
    try:
        limits: object = renderer.Limits(100_000_000, 1000, 4000)
        args: tuple[object, ...] = (limits,)
    except AttributeError:  # revisions before Limits took (max_pixels, max_side)
        args = (100_000_000, 4000)
    result = {}
    for name in names:
        variant = rules.parse(name)
        result[name] = cpu_ms(
            lambda v=variant: renderer.render(data, v, *args),
            repeat,  # type: ignore[misc]
        )
    return result


def in_process_of(checkout: str, names: list[str], repeat: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", ",".join(names), "--repeat",
         str(repeat)],
        capture_output=True, check=True, text=True,
        env={**os.environ, "PYTHONPATH": checkout},
    )  # fmt: skip
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--base", help="a revision to compare the seed names with")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure.split(","), args.repeat)))
        return
    data = photo()
    ours: dict[str, list[float]] = {n: [] for n in NAMES}
    bare: dict[str, list[float]] = {n: [] for n in NAMES}
    for _ in range(args.rounds):
        for name, ms in in_process_of(CHECKOUT, list(NAMES), args.repeat).items():
            ours[name].append(ms)
        for name in NAMES:
            bare[name].append(cpu_ms(lambda n=name: BARE[n](data), args.repeat))  # type: ignore[misc]
    print("CPU ms per cold variant of a 12 MP JPEG (median, one thread)")
    print(f"{'name':20} {'imageserver':>12} {'bare Pillow':>12} {'ratio':>7}")
    median = {n: statistics.median(ours[n]) for n in NAMES}
    for name in NAMES:
        reference = statistics.median(bare[name])
        print(f"{name:20} {median[name]:12.1f} {reference:12.1f} "
              f"{median[name] / reference:7.2f}")  # fmt: skip
    smart = median["x300-smart.jpg"] / median["x300.jpg"]
    print(f"x300-smart.jpg / x300.jpg: {smart:.2f}")
    if args.base:
        compare(args.base, args.rounds, args.repeat)


def compare(base: str, rounds: int, repeat: int) -> None:
    """The seed names on ``base`` and on this checkout, alternating."""
    with tempfile.TemporaryDirectory() as folder:
        worktree = os.path.join(folder, "base")
        subprocess.run(
            ["git", "-C", CHECKOUT, "worktree", "add", "--detach", worktree, base],
            check=True, capture_output=True,
        )  # fmt: skip
        try:
            times: dict[str, dict[str, list[float]]] = {"base": {}, "now": {}}
            for _ in range(rounds):
                for label, checkout in (("base", worktree), ("now", CHECKOUT)):
                    result = in_process_of(checkout, list(SEED_NAMES), repeat)
                    for name, ms in result.items():
                        times[label].setdefault(name, []).append(ms)
        finally:
            subprocess.run(
                ["git", "-C", CHECKOUT, "worktree", "remove", "--force", worktree],
                check=True, capture_output=True,
            )  # fmt: skip
    print(f"\nseed names, {base} against this checkout (median, alternating)")
    for name in SEED_NAMES:
        before = statistics.median(times["base"][name])
        now = statistics.median(times["now"][name])
        print(f"{name:20} {before:7.1f} ms -> {now:7.1f} ms   ratio {now / before:.3f}")


if __name__ == "__main__":
    main()
