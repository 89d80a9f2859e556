"""Watermarks and byte budgets through the real app: watermarks named by the
operator, served like presets, stored under the md5 of their image, checked
at start-up; budgets told in a header."""

from __future__ import annotations

import hashlib
import io

from PIL import Image
from twisted.trial.unittest import SynchronousTestCase

from imageserver.assembly import check_watermarks
from imageserver.config import Config
from imageserver.errors import InvalidRequest
from imageserver.runtime.listening import StartupFailed
from tests.support import AppHarness, encode

LOGO = encode(Image.new("RGBA", (40, 20), (255, 0, 0, 255)), "PNG")
PHOTO = encode(Image.new("RGB", (200, 100), (0, 0, 255)), "PNG")


def folder_of(data: bytes, namespace: str = "p") -> str:
    h = hashlib.md5(data).hexdigest()
    return f"{namespace}/{h[:3]}/{h[3:6]}/{h[6:9]}/{h[9:]}"


class WatermarkAppTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.app = AppHarness(
            self, watermarks=(f"logo={folder_of(LOGO, 'brand')}",), extensions=("png",)
        )
        self.app.upload(LOGO, "brand")
        self.photo = self.app.upload(PHOTO)

    def test_served_by_its_name_like_a_preset(self) -> None:
        response, body = self.app.request("GET", f"{self.photo}/w100-wmlogo.png")
        self.assertEqual(response.code, 200, body)
        digest = hashlib.md5(LOGO).hexdigest()
        [location] = response.headers.getRawHeaders("Content-Location")
        self.assertTrue(location.endswith(f"/w100-wm{digest}.png"), location)
        self.assertEqual(
            response.headers.getRawHeaders("Cache-Control"), ["public, max-age=3600"]
        )
        picture = Image.open(io.BytesIO(body)).convert("RGB")
        self.assertEqual(picture.getpixel((99, 49)), (255, 0, 0))  # bottom right
        self.assertEqual(picture.getpixel((5, 5)), (0, 0, 255))
        # By its md5: the stored bytes, immutable.
        response, same = self.app.request("GET", location)
        self.assertEqual((response.code, same), (200, body))
        self.assertIn("immutable", response.headers.getRawHeaders("Cache-Control")[0])

    def test_places_alike_only_on_this_picture_stay_their_own_names(self) -> None:
        """docs/api.md: folded are names alike by the name alone. Here the
        mark is 25x12 on 100x100: a margin of 44 from the bottom centres it,
        with this watermark, not with a flatter one."""
        drawn = []
        for name in ("x100-wmlogo_s44.png", "x100-wmlogo_c.png"):
            response, body = self.app.request(
                "GET", f"{self.photo}/{name}", allow_redirects=False
            )
            self.assertEqual(response.code, 200, name)
            drawn.append(Image.open(io.BytesIO(body)).tobytes())
        self.assertEqual(drawn[0], drawn[1])

    def test_unknown_watermarks_are_400s(self) -> None:
        status, body = self.app.json("GET", f"{self.photo}/w100-wmother.png")
        self.assertEqual(status, 400)
        self.assertIn("unknown watermark 'other'", body["error"])


class CropAppTests(SynchronousTestCase):
    """A crop box past the original is a 400 under any spelling: a redirect
    to the canonical name never leads to a refusal."""

    def setUp(self) -> None:
        self.app = AppHarness(self, extensions=("png",))
        self.photo = self.app.upload(PHOTO)  # 200x100

    def test_past_the_original_under_every_spelling(self) -> None:
        for name, status in [
            ("w100-crop0_0_200_100.png", 200),
            ("w100-crop0_0_200_100@1x.png", 301),
            ("w100-crop0_0_201_100.png", 400),
            ("w100-crop0_0_201_100@1x.png", 400),
            ("w100-crop0_0_200_101@1x.png", 400),
            ("x100-crop0_0_100_100-circle.png", 200),
            ("x100-crop0_0_100_100-round50.png", 301),
            ("x100-crop0_0_300_100-round50.png", 400),
            ("w100-cropf0_0_10000_10000@1x.png", 301),
        ]:
            response, body = self.app.request(
                "GET", f"{self.photo}/{name}", allow_redirects=False
            )
            self.assertEqual(response.code, status, (name, body[:200]))
            if status == 400:
                self.assertIn(b"reaches past the 200x100 original", body)

    def test_of_an_image_not_stored_is_a_404(self) -> None:
        missing = folder_of(b"nothing")
        response, _ = self.app.request(
            "GET", f"{missing}/w100-crop0_0_9_9@1x.png", allow_redirects=False
        )
        self.assertEqual(response.code, 404)


class WatermarkStartTests(SynchronousTestCase):
    def test_a_watermark_that_cannot_be_used_stops_the_start(self) -> None:
        app = AppHarness(self)
        big = encode(Image.new("RGBA", (2100, 2000), (1, 2, 3, 4)), "PNG")
        app.upload(big)
        config = Config(
            local_base_path=app.root, watermarks=(f"logo={folder_of(LOGO)}",)
        )
        with self.assertRaisesRegex(StartupFailed, "no original is stored there"):
            check_watermarks(config)
        app.upload(LOGO)
        check_watermarks(config)  # now there
        config = Config(local_base_path=app.root, watermarks=(f"big={folder_of(big)}",))
        with self.assertRaisesRegex(StartupFailed, "over the 4000000 pixels"):
            check_watermarks(config)

    def test_malformed_entries_are_option_errors(self) -> None:
        for entry, words in [
            ("logo", "give NAME=FOLDER"),
            ("Logo=p/6e0/072/682/e66287b662827da75b244a3", "give NAME=FOLDER"),
            ("logo=p/6e0/072", "is not an image's folder"),
            (f"{'a' * 32}=p/6e0/072/682/e66287b662827da75b244a3", "not 32 hex"),
        ]:
            with self.subTest(entry=entry), self.assertRaisesRegex(ValueError, words):
                Config(watermarks=(entry,))


class ByteBudgetTests(SynchronousTestCase):
    """maxbytes: the highest quality whose output fits, told in a header on
    every answer (the first, which renders, and later ones from storage)."""

    def setUp(self) -> None:
        from tests.support import quadrants

        self.app = AppHarness(self, extensions=("jpg", "webp", "png", "avif"))
        noise = Image.effect_noise((300, 200), 60).convert("RGB")
        self.folder = self.app.upload(
            encode(Image.blend(quadrants((300, 200)), noise, 0.5), "PNG")
        )

    def test_the_best_quality_under_the_budget(self) -> None:
        from imageserver.imaging import renderer

        for ext in ("jpg", "webp", "avif"):
            full = self.app.request("GET", f"{self.folder}/w300.{ext}")[1]
            budget = len(full) // 2
            name = f"w300-maxbytes{budget}.{ext}"
            for _ in range(2):  # rendered, then from storage
                response, body = self.app.request("GET", f"{self.folder}/{name}")
                self.assertEqual(response.code, 200, body)
                self.assertLessEqual(len(body), budget, ext)
                [quality] = response.headers.getRawHeaders("X-Image-Quality")
                self.assertLess(int(quality), 100, ext)
            # No quality two higher fits (the bisection's precision).
            higher = self.app.request(
                "GET", f"{self.folder}/w300-q{min(100, int(quality) + 2)}.{ext}"
            )[1]
            self.assertGreater(len(higher), budget, (ext, quality))
            self.assertIsNone(
                self.app.request("GET", f"{self.folder}/w300.{ext}")[
                    0
                ].headers.getRawHeaders("X-Image-Quality")
            )
        self.assertLessEqual(renderer.MAX_BUDGET_ENCODES, 8)

    def test_a_budget_nothing_fits_gets_quality_1(self) -> None:
        response, _ = self.app.request("GET", f"{self.folder}/w300-maxbytes10.jpg")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("X-Image-Quality"), ["1"])

    def test_auto_keeps_a_budget_where_png_would_drop_it(self) -> None:
        """A client that takes neither AVIF nor WebP gets png for a mask,
        and jpg (flattened, with its chosen quality) for a mask on a budget;
        jpg for a background, which flattens a mask's or the original's
        transparency."""
        clear = self.app.upload(
            encode(Image.new("RGBA", (90, 60), (9, 9, 9, 99)), "PNG")
        )
        for folder, name, ext, quality in (
            (self.folder, "w100-round20.auto", "png", None),
            (self.folder, "w100-round20-maxbytes3000.auto", "jpg", True),
            (self.folder, "w100-maxbytes3000.auto", "jpg", True),
            (self.folder, "w100-round20-bg203040.auto", "jpg", None),
            (clear, "w50.auto", "png", None),
            (clear, "w50-bg203040.auto", "jpg", None),
        ):
            response, body = self.app.request("GET", f"{folder}/{name}")
            self.assertEqual(response.code, 200, body)
            [location] = response.headers.getRawHeaders("Content-Location")
            self.assertTrue(location.endswith(f".{ext}"), (name, location))
            chosen = response.headers.getRawHeaders("X-Image-Quality")
            self.assertEqual(chosen is not None, bool(quality), name)
            if quality:
                self.assertLessEqual(len(body), 3000, name)

    def test_the_longest_name_with_a_budget(self) -> None:
        """240 bytes of canonical name, and its quality file of 248 beside
        it on the disk (a temporary name of 262 bytes was a 503)."""
        import base64

        by_length = {}
        for n in range(60, 101):
            text = base64.b32encode(b"x" * n).decode().rstrip("=").lower()
            for size in ("1", "12", "100"):
                name = (
                    f"w100-maxbytes5000-text{text}_s_{size}"
                    "-pixelbox100000_100000_200000_200000-bg123456"
                    "-pixelbox1_1_200000_200000.jpg"
                )
                try:
                    canonical = self.app.images.rules.canonical(name)
                except InvalidRequest:
                    continue  # too long
                assert canonical is not None
                by_length.setdefault(len(canonical.name.encode()), name)
        response, body = self.app.request("GET", f"{self.folder}/{by_length[240]}")
        self.assertEqual(response.code, 200, body)
        self.assertLessEqual(len(body), 5000)
        self.assertIsNotNone(response.headers.getRawHeaders("X-Image-Quality"))

    def test_lossless_formats_have_no_budget(self) -> None:
        # No quality to lower: folded away, as -qN is (a preset with a
        # budget is served in png too).
        response, _ = self.app.request(
            "GET", f"{self.folder}/w300-maxbytes9000.png", allow_redirects=False
        )
        self.assertEqual(response.code, 301)
        self.assertTrue(
            response.headers.getRawHeaders("Location")[0].endswith("/w300.png")
        )
        # A quality file beside a variant is the server's: no client takes it.
        status, body = self.app.json(
            "POST", f"{self.folder}/w300-maxbytes9000.jpg.quality", data=b"99"
        )
        self.assertEqual(status, 400, body)
