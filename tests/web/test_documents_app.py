"""Video, PDF and SVG originals over HTTP: uploaded, described, served as
variants and as the original (in ranges), refused with a clear 4xx."""

from __future__ import annotations

import io
import json

from PIL import Image
from twisted.trial.unittest import SynchronousTestCase

from tests import documents as make
from tests.support import AppHarness


def picture(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


class DrawnOriginalTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.app = AppHarness(self)

    def test_a_video_upload_and_its_variants(self) -> None:
        video = make.video(frames=40, rate=10, key_every=10)
        code, info = self.app.json(
            "POST", "/p?outputs=w160.jpg,w160-t2s.jpg", data=video
        )
        self.assertEqual(code, 200, info)
        self.assertEqual(
            {k: info[k] for k in ("width", "height", "content_type", "frames",
                                  "duration_ms", "frame_rate", "codec")},
            {"width": 320, "height": 240, "content_type": "video/mp4", "frames": 40,
             "duration_ms": 4000, "frame_rate": 10.0, "codec": "h264"},
        )  # fmt: skip
        for field in ("blurhash", "thumbhash", "dominant_color", "phash"):
            self.assertIn(field, info)
        folder = self.app.upload(video)
        response, body = self.app.request("GET", folder + "/w160-t2s.jpg")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("Content-Type"), ["image/jpeg"])
        self.assertEqual(picture(body).size, (160, 120))
        response, body = self.app.request("GET", folder + "/w160.gif")
        self.assertEqual(response.code, 200)
        self.assertEqual(getattr(picture(body), "n_frames", 1), 10)
        # The original, as uploaded, in ranges (browsers seek videos so).
        response, body = self.app.request(
            "GET", folder + "/original", headers={"Range": ["bytes=0-99"]}
        )
        self.assertEqual(response.code, 206)
        self.assertEqual(response.headers.getRawHeaders("Content-Type"), ["video/mp4"])
        self.assertEqual(body, video[:100])
        # info.json is read back whole: not made again on every read.
        _, again = self.app.json("GET", folder + "/info.json")
        self.assertEqual(again, info)

    def test_a_pdf_upload_and_its_pages(self) -> None:
        data = make.pdf([(200, 100, (255, 0, 0)), (100, 300, (0, 0, 255))])
        code, info = self.app.json("POST", "/p", data=data)
        self.assertEqual(code, 200, info)
        self.assertEqual((info["width"], info["height"], info["pages"]), (200, 100, 2))
        self.assertEqual(info["content_type"], "application/pdf")
        folder = self.app.upload(data)
        response, body = self.app.request("GET", folder + "/w50-page2.png")
        self.assertEqual(response.code, 200)
        self.assertEqual(picture(body).size, (50, 150))
        code, error = self.app.json("GET", folder + "/w50-page3.png")
        self.assertEqual(
            (code, error),
            (400, {"error": "page 3 was asked for, and the PDF has 2 pages"}),
        )
        response, _ = self.app.request(
            "GET", folder + "/w50-page1.png", allow_redirects=False
        )
        self.assertEqual(response.code, 301)
        self.assertEqual(
            response.headers.getRawHeaders("Location"), [folder + "/w50.png"]
        )

    def test_an_svg_upload_is_drawn_at_any_size(self) -> None:
        folder = self.app.upload(make.svg())
        _, info = self.app.json("GET", folder + "/info.json")
        self.assertEqual(
            (info["width"], info["height"], info["content_type"]),
            (100, 50, "image/svg+xml"),
        )
        response, body = self.app.request("GET", folder + "/w1000.png")
        self.assertEqual(response.code, 200)
        image = picture(body)
        self.assertEqual(image.size, (1000, 500))
        self.assertEqual(image.convert("RGB").getpixel((499, 250)), (255, 0, 0))
        self.assertEqual(image.convert("RGB").getpixel((500, 250)), (0, 0, 255))
        # .auto keeps the transparency an SVG has.
        response, _ = self.app.request(
            "GET", folder + "/w100.auto", headers={"Accept": ["image/png"]}
        )
        self.assertEqual(response.headers.getRawHeaders("Content-Type"), ["image/png"])

    def test_picks_for_another_kind_are_400s(self) -> None:
        photo = io.BytesIO()
        Image.new("RGB", (20, 20), "red").save(photo, "JPEG")
        folder = self.app.upload(photo.getvalue())
        for name in ("w10-t5s.jpg", "w10-page2.jpg"):
            code, error = self.app.json("GET", f"{folder}/{name}")
            self.assertEqual(code, 400, name)
            self.assertIn("this original is JPEG", error["error"])
        svg_folder = self.app.upload(make.svg())
        code, error = self.app.json("GET", svg_folder + "/w10-t5s.png")
        self.assertEqual(
            (code, error),
            (400, {"error": "the t option is for video originals; this is SVG"}),
        )

    def test_refusals_are_4xx_and_store_nothing(self) -> None:
        for data, status in (
            (make.svg(body="<g>" * 70 + "</g>" * 70), 422),
            (b'<svg xmlns="http://www.w3.org/2000/svg"><g></svg>', 415),
            (make.pdf([(10, 10, (0, 0, 0))] * 2001), 422),
            (b"%PDF-1.7\nnothing else", 415),
            (make.video(frames=30)[:500], 415),
        ):
            code, error = self.app.json("POST", "/p", data=data)
            self.assertEqual(code, status, (data[:40], error))
            self.assertIsInstance(error["error"], str)
            self.assertNotIn("Traceback", json.dumps(error))
        self.assertEqual(list(self._stored()), [])

    def _stored(self) -> list[str]:
        import os

        return [f for _, _, files in os.walk(self.app.root) for f in files]


class SvgAsAPageTests(SynchronousTestCase):
    def test_an_svg_original_never_runs_as_a_page(self) -> None:
        """An SVG original is served as uploaded (scripts and all): opened as a
        page of this origin, the policy lets none run and nothing load."""
        app = AppHarness(self)
        scripted = make.svg(body="<script>alert(document.cookie)</script>")
        folder = app.upload(scripted)
        response, body = app.request("GET", folder + "/original")
        self.assertEqual(body, scripted)
        self.assertEqual(
            response.headers.getRawHeaders("Content-Security-Policy"),
            ["default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"],
        )
        response, _ = app.request("GET", folder + "/w10.png")
        self.assertIsNone(response.headers.getRawHeaders("Content-Security-Policy"))


class DrawnOptionTests(SynchronousTestCase):
    def test_bad_values_stop_the_start(self) -> None:
        from imageserver.config import Config

        for options, message in (
            ({"video_codecs": ("h265",)}, "--video_codecs names codecs among"),
            ({"rasterise_memory": 100}, "--rasterise_memory must be at least"),
            ({"max_pdf_pages": 0}, "--max_pdf_pages must be positive"),
        ):
            with self.assertRaises(ValueError) as caught:
                Config(**options)  # type: ignore[arg-type]
            self.assertIn(message, str(caught.exception))


class AutoFormatTests(SynchronousTestCase):
    def test_svg_is_no_auto_format(self) -> None:
        from imageserver.config import Config

        with self.assertRaises(ValueError) as caught:
            Config(auto_formats=("svg", "webp"), extensions=("jpg", "webp", "svg"))
        self.assertIn("--auto_formats must be some of", str(caught.exception))


class SvgOutputTests(SynchronousTestCase):
    def test_an_svg_variant_is_the_svg_sanitised_and_resized(self) -> None:
        app = AppHarness(self, extensions=("jpg", "png", "svg"))
        folder = app.upload(make.svg(body="<script>alert(1)</script>"))
        response, body = app.request("GET", folder + "/w64.svg")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders("Content-Type"), ["image/svg+xml"]
        )
        self.assertEqual(
            response.headers.getRawHeaders("Content-Security-Policy"),
            ["default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"],
        )
        self.assertNotIn(b"script", body)
        self.assertIn(b'width="64" height="32"', body)
        # Drawn back, it is the original at that size.
        drawn = app.upload(body)
        response, png = app.request("GET", drawn + "/full_size.png")
        image = picture(png)
        self.assertEqual(image.size, (64, 32))
        self.assertEqual(image.convert("RGB").getpixel((10, 16)), (255, 0, 0))
        self.assertEqual(image.convert("RGB").getpixel((54, 16)), (0, 0, 255))
        photo = io.BytesIO()
        Image.new("RGB", (8, 8)).save(photo, "JPEG")
        code, error = app.json("GET", app.upload(photo.getvalue()) + "/w8.svg")
        self.assertEqual(code, 400)
        self.assertIn("an svg variant is made of an SVG original", error["error"])
