"""Placeholders in info.json: decoded back, they look like the picture."""

from __future__ import annotations

import base64
import json
import os

import thumbhash  # type: ignore[import-untyped]
from blurhash_rs import blurhash_decode
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageStat
from twisted.trial.unittest import SynchronousTestCase

from imageserver.imaging import placeholders
from tests.support import RED, AppHarness, encode, noise, quadrants


def close(got: tuple[float, ...], want: tuple[float, ...], tolerance: float) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(got, want, strict=False))


class PlaceholderTests(SynchronousTestCase):
    def test_they_decode_to_the_pictures_colours(self) -> None:
        for colour in ((200, 30, 40), (20, 120, 220), (240, 240, 240)):
            picture = Image.new("RGB", (300, 200), colour)
            found = placeholders.placeholders(picture)
            blurred = blurhash_decode(found["blurhash"], 12, 8)
            self.assertTrue(
                close(tuple(ImageStat.Stat(blurred).mean), colour, 6), found
            )
            r, g, b, a = thumbhash.thumb_hash_to_average_rgba(
                base64.b64decode(found["thumbhash"])
            )
            self.assertTrue(close((r * 255, g * 255, b * 255), colour, 8), found)
            self.assertEqual(a, 1.0)
            want = "#{:02x}{:02x}{:02x}".format(*colour)
            self.assertEqual(found["dominant_color"], want)

    def test_the_dominant_colour_of_a_half_red_picture_is_red(self) -> None:
        picture = noise((200, 100))
        picture.paste(RED, (0, 0, 100, 100))
        self.assertEqual(
            placeholders.placeholders(picture)["dominant_color"], "#ff0000"
        )

    def test_blurhash_keeps_where_colours_are(self) -> None:
        found = placeholders.placeholders(quadrants((400, 300)))
        blurred = blurhash_decode(found["blurhash"], 40, 30)
        left, right = blurred.getpixel((3, 3)), blurred.getpixel((36, 3))
        self.assertGreater(left[0], left[1])  # red at the top left
        self.assertGreater(right[1], right[0])  # green at the top right
        self.assertEqual(len(found["blurhash"]), 4 + 2 * 4 * 3)


class InfoJsonTests(SynchronousTestCase):
    def test_uploads_carry_them(self) -> None:
        app = AppHarness(self)
        code, info = app.json(
            "POST", "/p", data=encode(Image.new("RGB", (90, 60), RED))
        )
        self.assertEqual(code, 200)
        self.assertEqual(info["dominant_color"], "#fe0000")
        self.assertTrue(info["blurhash"] and info["thumbhash"])

    def test_images_stored_before_get_them_once(self) -> None:
        app = AppHarness(self)
        folder = app.upload(encode(quadrants((90, 60))))
        path = app.root + folder + "/info.json"
        with open(path) as f:
            full = json.load(f)
        old = {k: full[k] for k in ("hash", "width", "height", "content_type")}
        with open(path, "w") as f:
            json.dump(old, f)
        code, info = app.json("GET", f"{folder}/info.json")
        self.assertEqual((code, info), (200, full))
        with open(path) as f:
            self.assertEqual(json.load(f), full)  # written back
        before = os.stat(path).st_mtime_ns
        app.json("GET", f"{folder}/info.json")
        self.assertEqual(os.stat(path).st_mtime_ns, before)


_BASE83 = (
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    "#$%*+,-.:;=?@[]^_{|}~"
)


def blurhash_dc(blurhash: str) -> tuple[int, int, int]:
    """The DC component (the mean colour, sRGB) a BlurHash carries, read
    from its characters 2-5 (the BlurHash specification)."""
    value = 0
    for char in blurhash[2:6]:
        value = value * 83 + _BASE83.index(char)
    return value >> 16, (value >> 8) & 255, value & 255


colours = st.tuples(*[st.integers(0, 255)] * 3)


@st.composite
def shapes_on_transparency(
    draw: st.DrawFn, smallest: int = 8, share: int = 4
) -> tuple[Image.Image, tuple[int, int, int]]:
    """One opaque colour, as an ellipse or a rectangle of any place and of
    1/``share`` of the picture's sides or more, on a fully transparent
    background of any (invisible) colour."""
    width = draw(st.integers(smallest, 300))
    height = draw(st.integers(smallest, 300))
    colour = draw(colours)
    background = (*draw(colours), 0)
    w = draw(st.integers(width // share, width - 1))
    h = draw(st.integers(height // share, height - 1))
    x0, y0 = draw(st.integers(0, width - 1 - w)), draw(st.integers(0, height - 1 - h))
    x1, y1 = x0 + w, y0 + h
    picture = Image.new("RGBA", (width, height), background)
    shape = draw(st.sampled_from(["ellipse", "rectangle"]))
    getattr(ImageDraw.Draw(picture), shape)((x0, y0, x1, y1), fill=(*colour, 255))
    return picture, colour


class TransparencyTests(SynchronousTestCase):
    """Invisible pixels do not count: only what is seen, as much as it is seen."""

    @settings(max_examples=150, deadline=None)
    @given(shapes_on_transparency())
    def test_one_colour_on_transparency_is_that_colour(
        self, case: tuple[Image.Image, tuple[int, int, int]]
    ) -> None:
        """Within two levels: the 32-pixel copy keeps partly transparent edge
        pixels premultiplied in 8 bits, which rounds their colour (a shape a
        few pixels across in a long thin picture is mostly edge: 2 levels
        seen in 3,000 examples)."""
        picture, colour = case
        found = placeholders.placeholders(picture)
        dominant = bytes.fromhex(found["dominant_color"][1:])
        self.assertTrue(close(tuple(dominant), colour, 2), found)
        self.assertTrue(close(blurhash_dc(found["blurhash"]), colour, 2), found)
        r, g, b, _ = thumbhash.thumb_hash_to_average_rgba(
            base64.b64decode(found["thumbhash"])
        )
        self.assertTrue(close((r * 255, g * 255, b * 255), colour, 12), found)

    @settings(max_examples=100, deadline=None)
    @given(shapes_on_transparency(smallest=64, share=2))
    def test_a_large_shape_is_exactly_its_colour(
        self, case: tuple[Image.Image, tuple[int, int, int]]
    ) -> None:
        picture, colour = case
        found = placeholders.placeholders(picture)
        want = "#{:02x}{:02x}{:02x}".format(*colour)
        self.assertEqual(found["dominant_color"], want, found)

    def test_a_half_transparent_colour_counts_half(self) -> None:
        picture = Image.new("RGBA", (60, 40), (*RED, 255))
        picture.paste((0, 0, 255, 80), (0, 0, 40, 40))  # 2/3 of it, 80/255 seen
        self.assertEqual(placeholders.dominant_colour(picture), "#ff0000")
        picture.paste((0, 0, 255, 255), (0, 0, 40, 40))
        self.assertEqual(placeholders.dominant_colour(picture), "#0000ff")

    def test_an_uploaded_blue_ellipse_on_transparency_is_blue(self) -> None:
        picture = Image.new("RGBA", (400, 300), (0, 0, 0, 0))
        ImageDraw.Draw(picture).ellipse((50, 50, 350, 250), fill=(20, 60, 230, 255))
        app = AppHarness(self)
        code, info = app.json("POST", "/p", data=encode(picture, "PNG"))
        self.assertEqual(code, 200)
        self.assertEqual(info["dominant_color"], "#143ce6")
        self.assertTrue(close(blurhash_dc(info["blurhash"]), (20, 60, 230), 2), info)
        blurred = blurhash_decode(info["blurhash"], 12, 8)
        self.assertTrue(close(ImageStat.Stat(blurred).mean, (20, 60, 230), 6))

    def test_a_fully_transparent_picture_still_has_placeholders(self) -> None:
        found = placeholders.placeholders(Image.new("RGBA", (30, 20), (9, 9, 9, 0)))
        self.assertEqual(found["dominant_color"], "#090909")
        self.assertEqual(blurhash_dc(found["blurhash"]), (9, 9, 9))
