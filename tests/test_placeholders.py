"""Placeholders in info.json: decoded back, they look like the picture."""

from __future__ import annotations

import base64
import json
import os

import thumbhash  # type: ignore[import-untyped]
from blurhash_rs import blurhash_decode
from PIL import Image, ImageStat
from twisted.trial.unittest import SynchronousTestCase

from imageserver import placeholders
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
