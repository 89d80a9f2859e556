import math
import struct
import zlib
from typing import Any, ClassVar

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageCms, ImageStat
from twisted.trial.unittest import SynchronousTestCase

from imageserver import formats
from imageserver.errors import ImageTooLarge, InvalidRequest, UnsupportedImage
from imageserver.imaging import geometry, renderer
from imageserver.naming import Fit, VariantRules
from tests.support import (
    BLUE,
    GREEN,
    RED,
    WHITE,
    YELLOW,
    TestCaseMixin,
    decode,
    encode,
    noise,
    quadrants,
    stripes,
)

RULES = VariantRules(frozenset({"jpg", "png", "gif", "webp", "avif"}), 75, 4000)
LIMIT = renderer.Limits(50_000_000, side=4000)


def render(data: bytes, name: str, limits: renderer.Limits = LIMIT) -> Image.Image:
    """``name`` in any spelling: the pixels of what it means."""
    variant = RULES.canonical(name)
    assert variant is not None
    return decode(renderer.render(data, variant, limits))


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif.tobytes())


def corners(image: Image.Image) -> tuple[tuple[int, ...], ...]:
    """The colours at the centres of the four quadrants: TL, TR, BL, BR."""
    w, h = image.size
    rgb = image.convert("RGB")
    return tuple(
        rgb.getpixel((x, y)) for y in (h // 4, 3 * h // 4) for x in (w // 4, 3 * w // 4)
    )


class GeometryTests(TestCaseMixin, SynchronousTestCase):
    def test_width_variant_keeps_ratio(self) -> None:
        out = render(encode(quadrants((800, 600))), "w200.jpg")
        self.assertEqual((out.format, out.size), ("JPEG", (200, 150)))
        self.assertColour(out, (50, 37), RED)
        self.assertColour(out, (150, 37), GREEN)
        self.assertColour(out, (50, 112), BLUE)
        self.assertColour(out, (150, 112), YELLOW)

    def test_width_variant_rounds_height(self) -> None:
        self.assertEqual(
            render(encode(quadrants((333, 100))), "w100.png").size, (100, 30)
        )
        self.assertEqual(render(encode(quadrants((1000, 1))), "w10.png").size, (10, 1))

    def test_width_variant_enlarges_small_originals(self) -> None:
        out = render(encode(quadrants((100, 50)), "PNG"), "w400.png")
        self.assertEqual(out.size, (400, 200))
        self.assertColour(out, (20, 20), RED)

    def test_square_variant_is_centre_crop(self) -> None:
        wide = encode(stripes((900, 300), [RED, GREEN, BLUE], vertical=True), "PNG")
        out = render(wide, "x100.png")
        self.assertEqual(out.size, (100, 100))
        for xy in ((3, 3), (96, 3), (50, 50), (3, 96), (96, 96)):
            self.assertColour(out, xy, GREEN, tolerance=20)

    def test_rectangle_variant_is_centre_crop_of_tall_image(self) -> None:
        tall = encode(stripes((300, 900), [RED, GREEN, BLUE], vertical=False), "PNG")
        out = render(tall, "200x100.png")
        self.assertEqual(out.size, (200, 100))
        for xy in ((3, 3), (196, 3), (100, 50), (3, 96), (196, 96)):
            self.assertColour(out, xy, GREEN, tolerance=20)

    def test_rectangle_fills_box_then_crops_the_long_side(self) -> None:
        # 400x200 into 100x100: scaled to 200x100, the middle half kept, so the
        # left and right quadrant columns meet in the middle of the output.
        out = render(encode(quadrants((400, 200)), "PNG"), "100x100.png")
        self.assertEqual(corners(out), (RED, GREEN, BLUE, YELLOW))
        self.assertColour(out, (2, 2), RED)
        self.assertColour(out, (97, 97), YELLOW)

    def test_full_size_keeps_dimensions_and_converts(self) -> None:
        out = render(encode(quadrants((640, 480))), "full_size.webp")
        self.assertEqual((out.format, out.size), ("WEBP", (640, 480)))
        for got, want in zip(corners(out), (RED, GREEN, BLUE, YELLOW), strict=True):
            self.assertTrue(
                all(abs(a - b) < 20 for a, b in zip(got, want, strict=True))
            )

    def test_every_output_format(self) -> None:
        data = encode(quadrants((300, 200)))
        for ext, fmt in (
            ("jpg", "JPEG"),
            ("png", "PNG"),
            ("gif", "GIF"),
            ("webp", "WEBP"),
            ("avif", "AVIF"),
        ):
            out = render(data, f"x50.{ext}")
            self.assertEqual((out.format, out.size), (fmt, (50, 50)), ext)
            self.assertColour(out, (12, 12), RED, tolerance=30)

    def test_quality_changes_size(self) -> None:
        photo = noise((400, 400))
        data = encode(photo)
        low = renderer.render(data, RULES.parse("w300-q10.jpg"), LIMIT)  # type: ignore[arg-type]
        high = renderer.render(data, RULES.parse("w300-q90.jpg"), LIMIT)  # type: ignore[arg-type]
        self.assertLess(len(low) * 2, len(high))

    def test_render_many_decodes_once_for_all(self) -> None:
        data = encode(quadrants((800, 600)))
        variants = RULES.parse_outputs("x300.jpg,x300.webp,w100.png")
        info, outputs = renderer.render_many(data, variants, LIMIT)
        self.assertEqual(info, renderer.ImageInfo(800, 600, "image/jpeg"))
        sizes = [(decode(o).format, decode(o).size) for o in outputs]
        self.assertEqual(
            sizes, [("JPEG", (300, 300)), ("WEBP", (300, 300)), ("PNG", (100, 75))]
        )


@st.composite
def variant_names(draw: st.DrawFn) -> str:
    """Any size a name can ask for, in every fit mode, in every format."""
    side = st.integers(min_value=1, max_value=600)
    size = draw(
        st.one_of(
            st.just("full_size"),
            side.map(lambda n: f"w{n}"),
            side.map(lambda n: f"x{n}"),
            st.tuples(side, side).map(lambda wh: f"{wh[0]}x{wh[1]}"),
        )
    )
    return f"{size}.{draw(st.sampled_from(['jpg', 'png', 'webp']))}"


def quadrant_at(x: float, y: float, w: int, h: int) -> tuple[int, int, int]:
    """The colour `quadrants` paints at source point (x, y)."""
    right, bottom = x >= w // 2, y >= h // 2
    return ((RED, GREEN), (BLUE, YELLOW))[bottom][right]


class GeometrySweepTests(TestCaseMixin, SynchronousTestCase):
    """Renders over source sizes and names: the exact size and the right pixels."""

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        st.integers(min_value=1, max_value=1400),
        st.integers(min_value=1, max_value=1400),
        variant_names(),
        st.sampled_from(["JPEG", "PNG"]),
    )
    @example(523, 426, "x300.jpg", "JPEG")
    @example(523, 426, "300x300.png", "JPEG")
    @example(1040, 780, "x200.jpg", "JPEG")
    @example(1002, 751, "300x200.jpg", "JPEG")
    @example(640, 427, "w200.jpg", "JPEG")
    @example(640, 427, "w300.webp", "JPEG")
    def test_every_render_has_the_planned_size_and_pixels(
        self, w: int, h: int, name: str, fmt: str
    ) -> None:
        variant = RULES.canonical(name)
        assert variant is not None
        data = encode(quadrants((w, h)), fmt)
        plan = geometry.plan(variant, w, h)
        if max(plan.size) > RULES.maximum_width:
            # Only a width-only name can get there: refused, before decoding.
            self.assertEqual(variant.fit, Fit.WIDTH)
            with self.assertRaises(InvalidRequest):
                renderer.render(data, variant, LIMIT)
            return
        out = decode(renderer.render(data, variant, LIMIT))
        self.assertEqual(out.size, plan.size)
        # Sample a grid of output pixels; each shows the colour of the source
        # point it maps back to, where that point is clear of the quadrants'
        # edges by more than the filter and JPEG's blur can reach.
        left, top, right, bottom = plan.box
        out_w, out_h = plan.size
        scale_x, scale_y = (right - left) / out_w, (bottom - top) / out_h
        margin_x, margin_y = 4 * max(1.0, scale_x), 4 * max(1.0, scale_y)
        for i in range(1, 6):
            for j in range(1, 6):
                x, y = out_w * i // 6, out_h * j // 6
                sx, sy = left + (x + 0.5) * scale_x, top + (y + 0.5) * scale_y
                if (
                    abs(sx - w // 2) < margin_x
                    or abs(sy - h // 2) < margin_y
                    or min(x, y, out_w - 1 - x, out_h - 1 - y) < 4
                ):
                    continue
                self.assertColour(out, (x, y), quadrant_at(sx, sy, w, h), 48)


class DraftDecodeTests(SynchronousTestCase):
    def test_reduced_decode_matches_full_decode(self) -> None:
        """JPEG draft decoding must not cost visible quality."""
        big = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
        big = ImageChops.add(big, Image.effect_noise((4000, 3000), 20).convert("RGB"))
        data = encode(big)
        fast = render(data, "w300.png")
        reference = decode(data).resize((300, 225), Image.Resampling.LANCZOS)
        self.assertEqual(fast.size, reference.size)
        diff = ImageChops.difference(fast.convert("RGB"), reference)
        mse = sum(v * v for v in ImageStat.Stat(diff).rms) / 3
        psnr = 10 * math.log10(255**2 / max(mse, 1e-9))
        self.assertGreater(psnr, 38)


class OrientationTests(TestCaseMixin, SynchronousTestCase):
    """A 600x300 quadrant photo with each EXIF orientation, expected upright."""

    EXPECTED: ClassVar[dict[int, tuple[tuple[int, int], tuple[Any, ...]]]] = {
        1: ((600, 300), (RED, GREEN, BLUE, YELLOW)),
        2: ((600, 300), (GREEN, RED, YELLOW, BLUE)),
        3: ((600, 300), (YELLOW, BLUE, GREEN, RED)),
        4: ((600, 300), (BLUE, YELLOW, RED, GREEN)),
        5: ((300, 600), (RED, BLUE, GREEN, YELLOW)),
        6: ((300, 600), (BLUE, RED, YELLOW, GREEN)),
        7: ((300, 600), (YELLOW, GREEN, BLUE, RED)),
        8: ((300, 600), (GREEN, YELLOW, RED, BLUE)),
    }

    def test_every_orientation_comes_out_upright(self) -> None:
        for orientation, (size, colours) in self.EXPECTED.items():
            data = with_orientation(quadrants((600, 300)), orientation)
            info = renderer.probe(data, LIMIT)
            self.assertEqual((info.width, info.height), size, orientation)
            out = render(data, "full_size.png")
            self.assertEqual(out.size, size, orientation)
            for got, want in zip(corners(out), colours, strict=True):
                self.assertTrue(
                    all(abs(a - b) < 20 for a, b in zip(got, want, strict=True)),
                    f"orientation {orientation}: {corners(out)} != {colours}",
                )

    def test_rotated_photo_width_variant_is_upright(self) -> None:
        out = render(with_orientation(quadrants((600, 300)), 6), "w100.jpg")
        self.assertEqual(out.size, (100, 200))
        self.assertEqual(out.getexif().get(0x0112), None)
        self.assertColour(out, (25, 50), BLUE)
        self.assertColour(out, (75, 150), GREEN)


class ColourAndMetadataTests(TestCaseMixin, SynchronousTestCase):
    def transparent(self) -> Image.Image:
        image = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
        image.paste((255, 0, 0, 255), (0, 0, 50, 100))
        return image

    def test_transparency_flattened_on_white_for_jpeg(self) -> None:
        out = render(encode(self.transparent(), "PNG"), "full_size.jpg")
        self.assertEqual(out.mode, "RGB")
        self.assertColour(out, (20, 50), RED)
        self.assertColour(out, (80, 50), WHITE)

    def test_transparency_kept_for_formats_with_alpha(self) -> None:
        data = encode(self.transparent(), "PNG")
        for ext in ("png", "webp", "avif", "gif"):
            out = render(data, f"full_size.{ext}").convert("RGBA")
            self.assertEqual(out.getpixel((80, 50))[3], 0, ext)
            self.assertColour(out, (20, 50), (255, 0, 0, 255), tolerance=30)

    def test_palette_with_transparency(self) -> None:
        palette = self.transparent().convert("P", palette=Image.Palette.ADAPTIVE)
        palette.info["transparency"] = palette.getpixel((80, 50))
        out = render(
            encode(palette, "GIF", transparency=palette.info["transparency"]),
            "full_size.png",
        ).convert("RGBA")
        self.assertEqual(out.getpixel((80, 50))[3], 0)
        self.assertColour(out, (20, 50), (255, 0, 0, 255))

    def test_cmyk_jpeg(self) -> None:
        cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))
        out = render(encode(cmyk), "w32.png")
        self.assertEqual(out.mode, "RGB")
        self.assertColour(out, (16, 16), RED, tolerance=30)

    def test_sixteen_bit_png_is_scaled_not_clipped(self) -> None:
        grey = Image.new("I;16", (32, 32), 32768)
        out = render(encode(grey, "PNG"), "full_size.png")
        self.assertColour(out, (5, 5), (128, 128, 128), tolerance=2)

    def test_grayscale_jpeg(self) -> None:
        out = render(encode(Image.new("L", (40, 40), 100)), "w20.webp")
        self.assertColour(out, (10, 10), (100, 100, 100), tolerance=4)

    def test_metadata_is_stripped(self) -> None:
        exif = Image.Exif()
        exif[0x010F] = "Camera maker"
        exif[0x8825] = {2: (1.0, 2.0, 3.0)}  # GPS
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
        data = encode(
            quadrants((100, 100)), "JPEG", exif=exif.tobytes(), icc_profile=srgb
        )
        self.assertIn(b"Camera maker", data)
        for name in ("w50.jpg", "w50.png", "w50.webp", "w50.avif"):
            out_bytes = renderer.render(data, RULES.parse(name), LIMIT)  # type: ignore[arg-type]
            self.assertNotIn(b"Camera maker", out_bytes, name)
            out = decode(out_bytes)
            self.assertEqual(dict(out.getexif()), {}, name)
            self.assertIsNone(out.info.get("icc_profile"), name)

    def test_colour_profile_is_applied_before_it_is_stripped(self) -> None:
        # In a profile whose red and blue primaries are swapped, the stored
        # value (255, 0, 0) means blue: the output must show blue.
        data = encode(
            Image.new("RGB", (16, 16), RED), "PNG", icc_profile=swapped_rgb_profile()
        )
        for name in ("full_size.png", "w8.jpg", "w8.webp"):
            self.assertColour(render(data, name), (4, 4), BLUE, tolerance=40)

    def test_broken_colour_profile_is_ignored(self) -> None:
        data = encode(
            Image.new("RGB", (16, 16), RED), "PNG", icc_profile=b"garbage" * 20
        )
        self.assertColour(render(data, "full_size.png"), (4, 4), RED)


def swapped_rgb_profile() -> bytes:
    """A minimal ICC v2 display profile: sRGB with red and blue primaries swapped."""

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + bytes(4) + s15(x) + s15(y) + s15(z)

    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, int(2.2 * 256)) + bytes(2)
    text = b"swapped"
    desc = (
        b"desc"
        + bytes(4)
        + struct.pack(">I", len(text) + 1)
        + text
        + b"\0"
        + bytes(8)
        + bytes(3)
        + bytes(67)
    )
    desc += bytes(-len(desc) % 4)
    tags = [
        (b"desc", desc),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.1431, 0.0606, 0.7141)),  # sRGB's blue
        (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", xyz(0.4361, 0.2225, 0.0139)),  # sRGB's red
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + bytes(4)
        + bytes.fromhex("02100000")
        + b"mntrRGB XYZ "
        + bytes(12)
        + b"acsp"
        + bytes(24)
        + bytes(4)
        + s15(0.9642)
        + s15(1.0)
        + s15(0.8249)
        + bytes(48)
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


class BadInputTests(SynchronousTestCase):
    def assertUnsupported(self, data: bytes) -> None:
        with self.assertRaises(UnsupportedImage):
            renderer.probe(data, LIMIT)

    def test_not_images(self) -> None:
        self.assertUnsupported(b"")
        self.assertUnsupported(b"hello, world")
        self.assertUnsupported(b"<html><body>not an image</body></html>")
        # An SVG that is not well-formed XML, and one outside SVG's namespace.
        self.assertUnsupported(
            b'<svg xmlns="http://www.w3.org/2000/svg" width="10"><g></svg>'
        )
        self.assertUnsupported(b'<svg width="10" height="10"/>')

    def test_formats_outside_the_list_are_not_decoded(self) -> None:
        # EPS would be handed to Ghostscript; PPM and ICO are real images too.
        self.assertUnsupported(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
        self.assertUnsupported(encode(quadrants((10, 10)), "PPM"))
        self.assertUnsupported(encode(quadrants((16, 16)), "ICO"))

    def test_truncated_images(self) -> None:
        for fmt in ("JPEG", "PNG", "GIF", "WEBP"):
            data = encode(noise((200, 200)), fmt)
            self.assertUnsupported(data[: len(data) // 2])

    def test_too_many_pixels_refused_from_the_header(self) -> None:
        with self.assertRaises(ImageTooLarge):
            renderer.probe(encode(quadrants((200, 100))), renderer.Limits(19_999))
        self.assertEqual(
            renderer.probe(
                encode(quadrants((200, 100))), renderer.Limits(20_000)
            ).width,
            200,
        )

    def test_declared_bomb_is_refused_before_decoding(self) -> None:
        png = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
        # Rewrite IHDR to claim 100000 x 100000 pixels, with a valid CRC.
        ihdr = struct.pack(">II", 100_000, 100_000) + bytes(png[24:29])
        png[16:29] = ihdr
        png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
        with self.assertRaises(ImageTooLarge):
            renderer.probe(bytes(png), LIMIT)


class WholeFileTests(SynchronousTestCase):
    """`is_whole` tells a complete output from what a power loss may leave,
    for every row of the format table."""

    def outputs(self) -> dict[str, bytes]:
        """Each format's output: of a PNG, and (svg, an SVG's own markup) of
        an SVG."""
        from tests import documents

        rules = VariantRules(frozenset(formats.OUTPUTS), 75, 4000)
        made = {}
        for ext, row in formats.OUTPUTS.items():
            data = (
                documents.svg()
                if row.markup
                else encode(quadrants((300, 200), "RGBA"), "PNG")
            )
            variant = rules.parse(f"w120.{ext}")
            assert variant is not None
            made[ext] = renderer.render(data, variant, LIMIT)
        return made

    def test_every_format_rendered_is_whole(self) -> None:
        for ext, data in self.outputs().items():
            self.assertTrue(renderer.is_whole(ext, data), ext)

    def test_empty_cut_short_or_zeroed_files_are_not(self) -> None:
        for ext, data in self.outputs().items():
            for piece in (
                b"",
                data[: len(data) // 2],
                data[:-1],
                bytes(len(data)),
                data + b"\0" * 16,
            ):
                self.assertFalse(renderer.is_whole(ext, piece), (ext, len(piece)))
