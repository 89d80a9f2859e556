"""thumbor URLs over the grammar and the filters, drawn from a seed: the
corpus the real thumbor and this server must answer alike."""

from __future__ import annotations

import io
import os
import random

from PIL import Image, ImageDraw

#: The sources, by name: (width, height, format, with alpha).
SOURCES = {
    "landscape.jpg": (400, 300, "JPEG", False),
    "portrait.jpg": (300, 400, "JPEG", False),
    "odd.jpg": (301, 199, "JPEG", False),
    "square.png": (256, 256, "PNG", False),
    "alpha.png": (200, 150, "PNG", True),
    "wide.webp": (500, 100, "WEBP", False),
}


def picture(width: int, height: int, alpha: bool = False) -> Image.Image:
    """A photograph-like picture: smooth gradients, edges and texture, so
    a crop off by a few pixels or a wrong turn shows in the comparison."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    red = Image.linear_gradient("L").rotate(90).resize((width, height))
    image = Image.merge("RGB", (red, image.getchannel(1), image.getchannel(0)))
    draw = ImageDraw.Draw(image)
    rng = random.Random(width * 1000 + height)
    for _ in range(12):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(5, max(6, min(width, height) // 4))
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    draw.rectangle((0, 0, width // 4, height // 5), fill=(250, 20, 20))
    if alpha:
        mask = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask).ellipse((10, 10, width - 10, height - 10), fill=255)
        image.putalpha(mask)
    return image


def write_sources(folder: str) -> None:
    for name, (width, height, kind, alpha) in SOURCES.items():
        out = io.BytesIO()
        options = {"quality": 95} if kind in ("JPEG", "WEBP") else {}
        picture(width, height, alpha).save(out, kind, **options)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(out.getvalue())


#: Filters and how to draw their arguments.
FILTERS = [
    lambda r: f"quality({r.choice([10, 50, 80, 95])})",
    lambda r: f"format({r.choice(['jpeg', 'png', 'webp', 'gif', 'avif', 'JPG'])})",
    lambda r: f"brightness({r.randint(-60, 60)})",
    lambda r: f"contrast({r.randint(-60, 60)})",
    lambda r: f"saturation({r.choice(['0', '0.5', '1.5', '2'])})",
    lambda r: "grayscale()",
    lambda r: f"blur({r.randint(1, 6)})",
    lambda r: f"round_corner({r.randint(5, 40)},255,255,255)",
    lambda r: f"fill({r.choice(['red', 'ff00ff', '00f', 'white'])})",
    lambda r: f"background_color({r.choice(['red', '00ff00'])})",
    lambda r: "no_upscale()",
    lambda r: "upscale()",
    lambda r: f"proportion({r.choice(['0.5', '0.25', '0.9'])})",
    lambda r: f"rotate({r.choice([90, 180, 270, -90, 450])})",
    lambda r: "focal(10x20:60x80)",
    lambda r: "strip_icc()",
    lambda r: "strip_exif()",
    lambda r: f"max_bytes({r.choice([2000, 5000])})",
    lambda r: "noise(10)",
    lambda r: "unknown_filter(1)",
]


def url(rng: random.Random) -> str:
    """One unsafe thumbor URL."""
    name = rng.choice(sorted(SOURCES))
    width, height = SOURCES[name][:2]
    parts = ["unsafe"]
    if rng.random() < 0.15:
        left, top = rng.randrange(width // 2), rng.randrange(height // 2)
        right = rng.randrange(left + 1, width + 40)
        bottom = rng.randrange(top + 1, height + 40)
        parts.append(f"{left}x{top}:{right}x{bottom}")
    fit = rng.choice([None] * 5 + ["fit-in", "full-fit-in", "adaptive-fit-in",
                                    "adaptive-full-fit-in"])  # fmt: skip
    if fit:
        parts.append(fit)

    def side() -> str:
        return str(rng.choice([0, rng.randint(1, 700), rng.randint(20, 300)]))

    w, h = side(), side()
    if rng.random() < 0.05:
        w = "orig"
    if fit and w == "0" and h == "0":
        w = str(rng.randint(20, 300))
    sign_w = "-" if rng.random() < 0.15 else ""
    sign_h = "-" if rng.random() < 0.15 else ""
    parts.append(f"{sign_w}{w}x{sign_h}{h}")
    if rng.random() < 0.2:
        parts.append(rng.choice(["left", "right", "center"]))
    if rng.random() < 0.2:
        parts.append(rng.choice(["top", "bottom", "middle"]))
    chosen = rng.sample(FILTERS, k=rng.choice([0, 0, 1, 1, 2, 3]))
    if chosen:
        parts.append("filters:" + ":".join(f(rng) for f in chosen))
    parts.append(name)
    return "/" + "/".join(parts)


def corpus(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return list(dict.fromkeys(url(rng) for _ in range(count)))
