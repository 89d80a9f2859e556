"""CPU of each of issue 26's options on a cold render, against the same
render without it.

    python3 benchmarks/effects.py [--rounds 7] [--size 4000x3000]

One thread, a 12-megapixel JPEG photograph (`common.photo`), the server's
own `renderer.render_many` with a watermark's original in hand. For each
pair the two renders alternate within each round; the ratio of the medians
is printed (targets: each option under 1.3x its base, a byte budget under
2.5x). A render is decode, plan, resize, effects, encode, as a cold variant
costs a worker.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image

from benchmarks.common import cpu_ms, photo
from imageserver.config import Config
from imageserver.imaging import renderer
from imageserver.naming import VariantRules

LOGO = Image.new("RGBA", (400, 200), (255, 255, 255, 0))
LOGO.paste((200, 30, 30, 220), (20, 20, 380, 180))
_out = io.BytesIO()
LOGO.save(_out, "PNG")
LOGO_BYTES = _out.getvalue()
LOGO_HASH = hashlib.md5(LOGO_BYTES).hexdigest()
SALE = base64.b32encode(b"SALE -50% TODAY").decode().rstrip("=").lower()

#: (option, base): each option against the same name without it.
PAIRS = [
    ("w800-brightness20.jpg", "w800.jpg"),
    ("w800-contrastm20.jpg", "w800.jpg"),
    ("w800-saturation40.jpg", "w800.jpg"),
    # The same output from a box of the cover crop's size (3000x3000, both
    # decoded at 1/2): what the option costs. A smaller box is decoded at a
    # larger scale (its 800 pixels come from fewer of the original's): a
    # 2000x2000 one at full scale, 1.8x, the cost of its pixels.
    ("x800-crop400_0_3400_3000.jpg", "x800.jpg"),
    ("x800-crop1000_500_3000_2500.jpg", "x800.jpg"),
    ("w800-pixelbox1000_1000_2000_2000.jpg", "w800.jpg"),
    ("w800-blurbox1000_1000_2000_2000.jpg", "w800.jpg"),
    ("x400-round40.jpg", "x400.jpg"),
    ("x400-circle.png", "x400.png"),
    ("w800-wmlogo.jpg", "w800.jpg"),
    ("w800-wmlogo_tile20_60_10.jpg", "w800.jpg"),
    (f"w800-text{SALE}_c_15.jpg", "w800.jpg"),
    ("w800-pixelate12.jpg", "w800.jpg"),
    ("w800-bgff8800.png", "w800.png"),
    # Budgets of half the default quality's bytes (measured first), so
    # that the search runs.
    ("w800-maxbytes{half}.jpg", "w800.jpg"),
    ("w800-maxbytes{half}.webp", "w800.webp"),
    ("w400-maxbytes{half}.avif", "w400.avif"),
    # Everything at once, on the largest output the defaults allow.
    (
        "x1000-brightness10-contrast10-saturation10-sharp-pixelbox0_0_500_500"
        f"-round50-wmlogo_tile10_50_10-text{SALE}_s_20-maxbytes60000.jpg",
        "x1000.jpg",
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--size", default="4000x3000")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split("x"))
    data = photo((width, height))
    rules = VariantRules(
        frozenset({"jpg", "png", "webp", "avif"}), 0, 2000,
        watermarks=(("logo", LOGO_HASH),),
    )  # fmt: skip
    limits = Config().decode_limits
    marks = {LOGO_HASH: LOGO_BYTES}

    def job(name: str) -> object:
        variant = rules.canonical(name)
        assert variant is not None, name
        return lambda: renderer.render_many(data, [variant], limits, marks=marks)

    print(f"{width}x{height} JPEG, {args.rounds} rounds, CPU ms per render")
    print(f"{'option':<44} {'with':>8} {'without':>8} {'ratio':>6}")
    for option, base in PAIRS:
        if "{half}" in option:
            (_, (full,)) = job(base)()  # type: ignore[operator]
            option = option.format(half=len(full) // 2)
        with_it, without = [], []
        run_option, run_base = job(option), job(base)
        for _ in range(args.rounds):
            with_it.append(cpu_ms(run_option, 1))
            without.append(cpu_ms(run_base, 1))
        a, b = statistics.median(with_it), statistics.median(without)
        label = option if len(option) <= 44 else option[:41] + "..."
        print(f"{label:<44} {a:8.1f} {b:8.1f} {a / b:6.2f}")


if __name__ == "__main__":
    main()
