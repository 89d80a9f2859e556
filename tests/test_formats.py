"""HEIC and JPEG XL in, JPEG XL out: made by the tests, decoded and checked."""

from __future__ import annotations

import io

from PIL import Image
from twisted.trial.unittest import SynchronousTestCase

from imageserver import formats
from imageserver.errors import ImageTooLarge, UnsupportedImage
from imageserver.imaging import renderer
from imageserver.naming import VariantRules
from tests.imaging.test_renderer import corners, swapped_rgb_profile
from tests.support import (
    BLUE,
    GREEN,
    RED,
    YELLOW,
    AppHarness,
    TestCaseMixin,
    decode,
    noise,
    quadrants,
)

RULES = VariantRules(frozenset({"jpg", "png", "webp", "avif", "jxl"}), 75, 2000)
LIMITS = renderer.Limits(50_000_000, 1000, 2000)


def save(image: Image.Image, fmt: str, **options: object) -> bytes:
    formats.register_plugins()
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def rotated(fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(quadrants((600, 300)), fmt, exif=exif.tobytes(), quality=90)


def close(got: tuple[int, ...], want: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(got, want, strict=False))


class HeicTests(TestCaseMixin, SynchronousTestCase):
    def test_a_rotated_phone_photo_comes_out_upright_once(self) -> None:
        # pillow-heif writes the EXIF orientation as HEIF's own rotation (irot)
        # and reads it back applied: the server must not turn it again.
        data = rotated("HEIF", 6)
        self.assertEqual(data[8:12], b"heic")
        info = renderer.probe(data, LIMITS)
        self.assertEqual((info.width, info.height, info.content_type),
                         (300, 600, "image/heic"))  # fmt: skip
        out = decode(renderer.render(data, RULES.parse("w100.png"), LIMITS))  # type: ignore[arg-type]
        self.assertEqual(out.size, (100, 200))
        for got, want in zip(corners(out), (BLUE, RED, YELLOW, GREEN), strict=True):
            self.assertTrue(close(got, want), corners(out))

    def test_the_colour_profile_is_applied(self) -> None:
        # In the swapped profile the stored red means blue.
        data = save(
            Image.new("RGB", (64, 48), RED), "HEIF", icc_profile=swapped_rgb_profile()
        )
        out = decode(renderer.render(data, RULES.parse("w32.png"), LIMITS))  # type: ignore[arg-type]
        self.assertColour(out, (16, 12), BLUE, tolerance=40)

    def test_uploads_report_heic_and_make_variants(self) -> None:
        app = AppHarness(self, extensions=("jpg", "webp", "jxl"))
        code, info = app.json("POST", "/p", data=rotated("HEIF", 1))
        self.assertEqual((code, info["content_type"]), (200, "image/heic"))
        h = info["hash"]
        response, body = app.request(
            "GET", f"/p/{h[:3]}/{h[3:6]}/{h[6:9]}/{h[9:]}/x60.webp"
        )
        self.assertEqual((response.code, decode(body).size), (200, (60, 60)))


class JxlTests(TestCaseMixin, SynchronousTestCase):
    def test_jxl_in(self) -> None:
        data = save(quadrants((300, 200)), "JXL", quality=90)
        info = renderer.probe(data, LIMITS)
        self.assertEqual((info.width, info.height, info.content_type),
                         (300, 200, "image/jxl"))  # fmt: skip
        out = decode(renderer.render(data, RULES.parse("w150.png"), LIMITS))  # type: ignore[arg-type]
        self.assertEqual(out.size, (150, 100))
        for got, want in zip(corners(out), (RED, GREEN, BLUE, YELLOW), strict=True):
            self.assertTrue(close(got, want), corners(out))

    def test_exif_orientation_is_not_jxl_s(self) -> None:
        # JPEG XL keeps its orientation in the codestream, which the decoder
        # applies; the Exif field is ignored, as the format says.
        self.assertEqual(renderer.probe(rotated("JXL", 6), LIMITS).width, 600)

    def test_jxl_out(self) -> None:
        data = save(quadrants((300, 200)), "PNG")
        out_bytes = renderer.render(data, RULES.parse("x50.jxl"), LIMITS)  # type: ignore[arg-type]
        self.assertTrue(renderer.is_whole("jxl", out_bytes))
        out = decode(out_bytes)
        self.assertEqual((out.format, out.size), ("JXL", (50, 50)))
        self.assertColour(out, (5, 5), RED, tolerance=40)

    def test_jxl_is_an_auto_candidate_when_served(self) -> None:
        for extensions, expected in (
            (("jpg", "webp", "jxl"), "image/jxl"),
            (("jpg", "webp"), "image/jpeg"),
        ):
            app = AppHarness(self, extensions=extensions)
            folder = app.upload(save(quadrants((120, 80)), "PNG"))
            response, _ = app.request(
                "GET", f"{folder}/w40.auto", headers={"Accept": "image/jxl,*/*"}
            )
            self.assertEqual(
                response.headers.getRawHeaders("Content-Type"), [expected], extensions
            )


class BrokenTests(SynchronousTestCase):
    def test_truncated_and_corrupt_files_are_415(self) -> None:
        for fmt in ("HEIF", "JXL"):
            data = save(noise((200, 150)), fmt, quality=90)
            for broken in (data[: len(data) // 2], data[:40] + bytes(200) + data[240:]):
                with self.assertRaises(UnsupportedImage, msg=fmt):
                    renderer.probe(broken, LIMITS)

    def test_pixel_limits_from_the_header(self) -> None:
        for fmt in ("HEIF", "JXL"):
            data = save(noise((300, 200)), fmt, quality=50)
            with self.assertRaises(ImageTooLarge, msg=fmt):
                renderer.probe(data, renderer.Limits(59_999))
            self.assertEqual(renderer.probe(data, renderer.Limits(60_000)).width, 300)


class QualityTests(SynchronousTestCase):
    """Names without ``-qN`` take each format's measured default, or
    ``--default_quality`` for every format when it is set."""

    def test_each_format_has_its_own_default(self) -> None:
        data = save(noise((300, 200)), "PNG")
        rules = VariantRules(frozenset(formats.OUTPUTS), 0, 2000)
        for fmt, output in formats.OUTPUTS.items():
            if not output.lossy:
                continue
            self.assertTrue(1 <= output.quality <= 100, fmt)
            plain = renderer.render(data, rules.parse(f"w90.{fmt}"), LIMITS)  # type: ignore[arg-type]
            named = rules.parse(f"w90-q{output.quality}.{fmt}")
            self.assertEqual(plain, renderer.render(data, named, LIMITS), fmt)  # type: ignore[arg-type]
            other = rules.parse(f"w90-q{output.quality - 20}.{fmt}")
            self.assertNotEqual(plain, renderer.render(data, other, LIMITS), fmt)  # type: ignore[arg-type]

    def test_default_quality_applies_to_every_format(self) -> None:
        data = save(noise((300, 200)), "PNG")
        rules = VariantRules(frozenset(formats.OUTPUTS), 55, 2000)
        for fmt in ("jpg", "webp", "avif", "jxl"):
            plain = renderer.render(data, rules.parse(f"w90.{fmt}"), LIMITS)  # type: ignore[arg-type]
            named = renderer.render(data, rules.parse(f"w90-q55.{fmt}"), LIMITS)  # type: ignore[arg-type]
            self.assertEqual(plain, named, fmt)

    def test_rgb_jpeg_is_jpegli_s_and_greyscale_stays_one_channel(self) -> None:
        import pyjpegli

        picture = noise((300, 200))
        rules = VariantRules(frozenset({"jpg"}), 0, 2000)
        full, small = rules.parse("full_size.jpg"), rules.parse("w90.jpg")
        assert full is not None and small is not None
        out = renderer.render(save(picture, "PNG"), full, LIMITS)
        quality = formats.output("jpg").quality
        made = pyjpegli.encode(picture.tobytes(), 300, 200, quality=quality)
        self.assertEqual(out, made)
        grey = renderer.render(save(picture.convert("L"), "PNG"), small, LIMITS)
        self.assertEqual(decode(grey).mode, "L")


#: Runs in a process of its own (no other threads): for each codec's work,
#: the CPU time it took over its wall time (the cores it kept busy).
_THREADS_SCRIPT = """
import io, time
from PIL import Image
from imageserver import formats

formats.register_plugins()
picture = Image.effect_noise((1200, 1200), 60).convert("RGB")

def encoded(fmt, **options):
    out = io.BytesIO()
    picture.save(out, fmt, **options)
    return out.getvalue()

def ours(extension):
    return encoded(extension.upper(), **formats.OUTPUTS[extension].save_options(None))

def cores(work, times):
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(times):
        work()
    return (time.process_time() - cpu) / (time.perf_counter() - wall)

avif, jxl = ours("avif"), ours("jxl")
heic = encoded("HEIF", quality=80)
for what, work, times in [
    ("avif out", lambda: ours("avif"), 1),
    ("jxl out", lambda: ours("jxl"), 3),
    ("avif in", lambda: Image.open(io.BytesIO(avif)).load(), 5),
    ("jxl in", lambda: Image.open(io.BytesIO(jxl)).load(), 5),
    ("heic in", lambda: Image.open(io.BytesIO(heic)).load(), 5),
]:
    print(what, round(cores(work, times), 2))
"""


class CodecThreadTests(SynchronousTestCase):
    def test_every_codec_works_on_the_thread_of_its_job(self) -> None:
        """A job is one thread of a pool with one per core: no codec keeps
        more than one core busy (libavif, libheif and libjxl start a thread
        a core: AVIF took 1.9 cores of this machine's 2)."""
        import os
        import subprocess
        import sys

        from tests import CHECKOUT_DIR

        done = subprocess.run(
            [sys.executable, "-c", _THREADS_SCRIPT],
            capture_output=True, text=True, timeout=120, check=True,
            env={**os.environ, "PYTHONPATH": CHECKOUT_DIR},
        )  # fmt: skip
        cores = {
            what: float(n)
            for what, n in (line.rsplit(" ", 1) for line in done.stdout.splitlines())
        }
        self.assertEqual(
            set(cores), {"avif out", "jxl out", "avif in", "jxl in", "heic in"}
        )
        self.assertLessEqual(max(cores.values()), 1.15, cores)
