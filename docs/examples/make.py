"""Draw the pictures of docs/api.md's examples: ``python docs/examples/make.py``.

Each example name in the table of docs/api.md is rendered by the server's own
imaging from one drawn source picture and written here as ``{name}.png``
(.auto as the jpg a client without AVIF or WebP gets).

``photo.jpg`` (this scene as a JPEG) and ``other.png`` (a blue ellipse on
transparency) are the uploads the README's and the docs' examples show;
tests/test_docs.py checks every example against what the server answers for
them. They are kept as files: another encoder's bytes would change their
hashes.
"""

from __future__ import annotations

import io
import os
import random
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from PIL import Image, ImageDraw  # noqa: E402

from imageserver.imaging import renderer  # noqa: E402
from imageserver.naming import VariantRules  # noqa: E402

RULES = VariantRules(frozenset({"jpg", "png", "webp"}), 80, 2000)


def source() -> Image.Image:
    """A 480x320 scene: sky, hills, a sun off to the right, a striped house."""
    rng = random.Random(1)
    image = Image.new("RGB", (480, 320))
    draw = ImageDraw.Draw(image)
    for y in range(200):
        draw.line((0, y, 480, y), fill=(90 + y // 4, 150 + y // 5, 235))
    draw.rectangle((0, 200, 480, 320), fill=(70, 150, 60))
    for _ in range(400):  # grass: detail for smart crops to find
        x, y = rng.randrange(480), rng.randrange(200, 320)
        draw.line((x, y, x + rng.randrange(-3, 4), y - 6), fill=(40, 110, 30))
    draw.ellipse((370, 30, 440, 100), fill=(250, 200, 40))
    draw.rectangle((60, 140, 170, 230), fill=(200, 60, 50))
    for x in range(60, 170, 12):
        draw.line((x, 140, x, 230), fill=(240, 230, 220), width=3)
    draw.polygon([(50, 140), (115, 95), (180, 140)], fill=(120, 40, 40))
    return image


def names() -> list[str]:
    with open(os.path.join(HERE, "..", "api.md")) as f:
        page = f.read()
    table = page.split("<!-- examples -->")[1].strip().split("\n\n")[0]
    return re.findall(r"^\| `([^`]+)` \|", table, re.MULTILINE)


def pictures() -> dict[str, Image.Image]:
    """Each example's picture, by its name, as the server's imaging makes it."""
    out = io.BytesIO()
    source().save(out, "PNG")
    data = out.getvalue()
    limits = renderer.Limits(50_000_000, 1000, 2000)
    made = {}
    for name in names():
        concrete = name.replace(".auto", ".jpg")
        variant = RULES.parse(concrete)
        assert variant is not None, name
        made[name] = Image.open(io.BytesIO(renderer.render(data, variant, limits)))
    return made


def main() -> None:
    for name, picture in pictures().items():
        picture.save(os.path.join(HERE, f"{name}.png"), optimize=True)


if __name__ == "__main__":
    main()
