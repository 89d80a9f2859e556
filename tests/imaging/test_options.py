"""Every v2 option, rendered and decoded: sizes and where the colours went."""

from __future__ import annotations

import dataclasses
import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageDraw, ImageStat
from twisted.trial.unittest import SynchronousTestCase

from imageserver.errors import InvalidRequest, NotCanonical
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

RULES = VariantRules(frozenset({"jpg", "png", "webp"}), 75, 2000)
LIMITS = renderer.Limits(50_000_000, 1000, 2000)


def render(data: bytes, name: str) -> Image.Image:
    """``name`` in any spelling: the pixels of what it means."""
    variant = RULES.canonical(name)
    assert variant is not None
    return decode(renderer.render(data, variant, LIMITS))


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    return image.convert("RGBA").getpixel((x, y))  # type: ignore[return-value]


LANDSCAPE = encode(quadrants((600, 300)), "PNG")
PORTRAIT = encode(quadrants((300, 600)), "PNG")
TINY = encode(quadrants((4, 2)), "PNG")


class SizeSweepTests(SynchronousTestCase):
    """Random names on landscape, portrait and tiny sources: the exact size."""

    @settings(
        max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(
        st.sampled_from([LANDSCAPE, PORTRAIT, TINY]),
        st.sampled_from(["w120", "h80", "x64", "90x30", "30x90", "full_size"]),
        st.lists(
            st.sampled_from(["fit", "pad", "noup", "gw", "gse", "fp10_80", "smart",
                             "faces", "r90", "r270", "flip", "flop", "blur2", "sharp",
                             "gray"]),
            max_size=4, unique=True,
        ),
        st.sampled_from(["", "@2x"]),
        st.sampled_from(["jpg", "png", "webp"]),
    )  # fmt: skip
    def test_size(
        self, source: bytes, size: str, options: list[str], dpr: str, ext: str
    ) -> None:
        name = size + "".join(f"-{o}" for o in options) + dpr + f".{ext}"
        try:
            variant = RULES.parse(name)
        except NotCanonical as e:
            variant = RULES.parse(e.canonical)
        except InvalidRequest:
            return
        assert variant is not None
        width, height = decode(source).size
        expected = geometry.plan(variant, width, height).output_size
        out = decode(renderer.render(source, variant, LIMITS))
        self.assertEqual(out.size, expected, variant.name)
        if variant.noup and variant.fit is not Fit.PAD:
            turned = (height, width) if variant.rotate in (90, 270) else (width, height)
            self.assertLessEqual(out.size[0], turned[0])
            self.assertLessEqual(out.size[1], turned[1])


class OptionPixelTests(TestCaseMixin, SynchronousTestCase):
    def test_rotations_and_mirrors_move_the_quadrants(self) -> None:
        # Each compared with Pillow's own transposition of the source.
        source = quadrants((600, 300))
        T = Image.Transpose
        for name, steps in (
            ("full_size-r90.png", [T.ROTATE_270]),
            ("full_size-r180.png", [T.ROTATE_180]),
            ("full_size-r270.png", [T.ROTATE_90]),
            ("full_size-flip.png", [T.FLIP_TOP_BOTTOM]),
            ("full_size-flop.png", [T.FLIP_LEFT_RIGHT]),
            ("full_size-r90-flip-flop.png",
             [T.ROTATE_270, T.FLIP_TOP_BOTTOM, T.FLIP_LEFT_RIGHT]),
        ):  # fmt: skip
            expected = source
            for step in steps:
                expected = expected.transpose(step)
            out = render(LANDSCAPE, name)
            self.assertEqual(out.size, expected.size, name)
            w, h = out.size
            for x, y in ((w // 4, h // 4), (3 * w // 4, h // 4),
                         (w // 4, 3 * h // 4), (3 * w // 4, 3 * h // 4)):  # fmt: skip
                self.assertEqual(pixel(out, x, y)[:3], expected.getpixel((x, y)), name)

    def test_width_after_rotation(self) -> None:
        self.assertEqual(render(LANDSCAPE, "w200-r90.png").size, (200, 400))
        self.assertEqual(render(LANDSCAPE, "h100-r90.png").size, (50, 100))

    def test_gravity_keeps_its_side(self) -> None:
        wide = encode(stripes((900, 300), [RED, GREEN, BLUE], vertical=True), "PNG")
        tall = encode(stripes((300, 900), [RED, GREEN, BLUE], vertical=False), "PNG")
        for data, name, colour in (
            (wide, "x100.png", GREEN), (wide, "x100-gw.png", RED),
            (wide, "x100-ge.png", BLUE), (wide, "x100-gnw.png", RED),
            (wide, "x100-gse.png", BLUE), (tall, "x100-gn.png", RED),
            (tall, "x100-gs.png", BLUE), (tall, "x100-gne.png", RED),
            (wide, "x100-fp0_50.png", RED), (wide, "x100-fp100_50.png", BLUE),
            (tall, "x100-fp50_0.png", RED), (tall, "x100-fp50_90.png", BLUE),
        ):  # fmt: skip
            out = render(data, name)
            self.assertEqual(out.size, (100, 100))
            for xy in ((3, 3), (96, 96), (50, 50)):
                self.assertColour(out, xy, colour, tolerance=20)

    def test_smart_keeps_the_detailed_colourful_part(self) -> None:
        for left in (0, 600, 1300):
            photo = Image.new("RGB", (1600, 400), (128, 128, 128))
            photo.paste(noise((300, 400)), (left, 0))
            out = render(encode(photo, "PNG"), "x100-smart.png")
            # The crop is the 400-pixel square around the detail, not the
            # grey middle (x from 600 to 1000).
            grey = ImageStat.Stat(out.convert("L")).stddev[0] < 5
            self.assertFalse(grey, left)
        flat = encode(Image.new("RGB", (800, 200), (90, 90, 90)), "PNG")
        self.assertEqual(
            render(flat, "x100-smart.png").tobytes(), render(flat, "x100.png").tobytes()
        )

    def test_fit_pad_and_their_colours(self) -> None:
        red = encode(Image.new("RGB", (300, 100), RED), "PNG")
        self.assertEqual(render(red, "x100-fit.png").size, (100, 33))
        self.assertEqual(render(red, "200x200-fit.png").size, (200, 67))
        for name, border in (
            ("x100-pad.png", (0, 0, 0, 0)),
            ("x100-pad.jpg", (255, 255, 255, 255)),
            ("x100-pad00ff00.jpg", (0, 255, 0, 255)),
            ("x100-pad0000ff80.png", (0, 0, 255, 128)),
        ):
            out = render(red, name)
            self.assertEqual(out.size, (100, 100), name)
            self.assertColour(out, (50, 2), border, tolerance=8)
            self.assertColour(out, (50, 97), border, tolerance=8)
            self.assertColour(out, (50, 50), (*RED, 255), tolerance=8)

    def test_noup_never_enlarges(self) -> None:
        small = encode(quadrants((50, 40)), "PNG")
        for name, size in (
            ("w200-noup.png", (50, 40)), ("h200-noup.png", (50, 40)),
            ("x200-noup.png", (40, 40)), ("200x100-noup.png", (50, 25)),
            ("x200-fit-noup.png", (50, 40)), ("full_size-noup.png", (50, 40)),
            ("w20-noup.png", (20, 16)),
        ):  # fmt: skip
            self.assertEqual(render(small, name).size, size, name)
        padded = render(small, "x200-pad-noup.png")
        self.assertEqual(padded.size, (200, 200))
        self.assertEqual(pixel(padded, 10, 10)[3], 0)
        self.assertColour(padded, (80, 85), (*RED, 255), tolerance=8)
        self.assertColour(padded, (120, 115), (*YELLOW, 255), tolerance=8)

    def test_density_is_the_doubled_size_byte_for_byte(self) -> None:
        photo = encode(noise((640, 480)))
        for name, double in (
            ("w100@2x.jpg", "w200.jpg"), ("x50-gn@3x.webp", "x150-gn.webp"),
            ("40x30-pad@4x.png", "160x120-pad.png"),
        ):  # fmt: skip
            # What @Nx means, though the name now answers 301 to the double.
            a, b = RULES.canonical(name), RULES.parse(double)
            assert a is not None and b is not None
            self.assertEqual(
                renderer.render(photo, a, LIMITS), renderer.render(photo, b, LIMITS)
            )

    def test_trim_removes_a_uniform_border(self) -> None:
        framed = Image.new("RGB", (300, 200), WHITE)
        framed.paste(quadrants((120, 80)), (100, 40))
        out = render(encode(framed, "PNG"), "full_size-trim.png")
        self.assertEqual(out.size, (120, 80))
        self.assertColour(out, (5, 5), RED)
        self.assertColour(out, (114, 74), YELLOW)
        self.assertEqual(render(encode(framed, "PNG"), "w60-trim.png").size, (60, 40))
        plain = encode(Image.new("RGB", (50, 50), BLUE), "PNG")
        self.assertEqual(render(plain, "full_size-trim.png").size, (50, 50))

    def test_trim_of_a_drafted_jpeg(self) -> None:
        # Found on a decode at 1/8 or 1/4 scale, mapped back to the original.
        framed = Image.new("RGB", (2400, 1600), WHITE)
        framed.paste(quadrants((1200, 800)), (600, 400))
        out = render(encode(framed), "w100-trim.png")
        self.assertEqual(out.size, (100, 67))
        for xy, colour in (((3, 3), RED), ((96, 3), GREEN), ((3, 63), BLUE),
                           ((96, 63), YELLOW)):  # fmt: skip
            self.assertColour(out, xy, colour, tolerance=40)

    def test_effects(self) -> None:
        edge = Image.new("RGB", (200, 100), (0, 0, 0))
        ImageDraw.Draw(edge).rectangle((100, 0, 199, 99), fill=WHITE)
        data = encode(edge, "PNG")
        sharp = render(data, "full_size.png")
        blurred = render(data, "full_size-blur4.png")
        self.assertEqual(pixel(sharp, 98, 50)[:3], (0, 0, 0))
        self.assertGreater(pixel(blurred, 98, 50)[0], 60)
        self.assertLess(pixel(blurred, 90, 50)[0], pixel(blurred, 98, 50)[0])
        grey = render(encode(quadrants((100, 100)), "PNG"), "full_size-gray.png")
        for xy in ((25, 25), (75, 25), (25, 75), (75, 75)):
            r, g, b, _ = pixel(grey, *xy)
            self.assertEqual(r, g)
            self.assertEqual(g, b)
        soft = encode(Image.effect_noise((100, 100), 10).convert("RGB"), "PNG")
        plain = ImageStat.Stat(render(soft, "full_size.png")).stddev[0]
        sharpened = ImageStat.Stat(render(soft, "full_size-sharp.png")).stddev[0]
        self.assertGreater(sharpened, plain)


class EncodingTests(TestCaseMixin, SynchronousTestCase):
    def test_greyscale_stays_one_channel(self) -> None:
        grey = encode(noise((200, 150)).convert("L"))
        for name, mode in (
            ("w100.jpg", "L"), ("w100.png", "L"), ("x80-gn.jpg", "L"),
            ("x80-pad.jpg", "L"), ("x80-pad808080.png", "L"),
            ("x80-padff0000.jpg", "RGB"), ("x80-pad.png", "RGBA"),
        ):  # fmt: skip
            self.assertEqual(render(grey, name).mode, mode, name)
        self.assertEqual(render(grey, "w100.webp").size, (100, 75))
        colour = encode(quadrants((200, 150)))
        self.assertEqual(render(colour, "w100-gray.jpg").mode, "L")
        self.assertEqual(render(colour, "w100.jpg").mode, "RGB")

    def test_greyscale_jpeg_huffman_tables_are_optimised(self) -> None:
        # Greyscale goes through Pillow (jpegli, for RGB, codes its own way).
        photo = encode(noise((400, 300)).convert("L"))
        variant = RULES.parse("w200.jpg")
        assert variant is not None
        ours = renderer.render(photo, variant, LIMITS)
        plain = io.BytesIO()
        decode(ours).save(plain, "JPEG", quality=75)
        self.assertLess(len(ours), len(plain.getvalue()) * 0.98)


class PadCompositingTests(SynchronousTestCase):
    """A padded picture is composited over its canvas (issue 22's review): its
    own pixels keep their colour and transparency; only the canvas shows
    where it is transparent."""

    @settings(max_examples=60, deadline=None)
    @given(
        st.tuples(*[st.integers(0, 255)] * 3),
        st.integers(8, 255),
        st.sampled_from([None, (255, 255, 255), (20, 200, 90)]),
    )
    def test_pad_composites_over_the_canvas(
        self,
        rgb: tuple[int, int, int],
        alpha: int,
        canvas: tuple[int, int, int] | None,
    ) -> None:
        source = Image.new("RGBA", (40, 20), (*rgb, alpha))
        data = encode(source, "PNG")
        pad = "pad" if canvas is None else "pad{:02x}{:02x}{:02x}".format(*canvas)
        out = render(data, f"x20-{pad}.png").convert("RGBA")
        self.assertEqual(out.size, (20, 20))
        inside, outside = out.getpixel((10, 10)), out.getpixel((10, 1))
        if canvas is None:
            self.assertEqual(outside[3], 0)
            self.assertLessEqual(abs(inside[3] - alpha), 1, inside)
            # Colour, as far as it shows: premultiplied, within rounding.
            for got, want in zip(inside[:3], rgb, strict=True):
                self.assertLessEqual(abs(got * inside[3] - want * alpha) / 255, 2)
        else:
            self.assertEqual(outside, (*canvas, 255))
            over = tuple(
                (c * alpha + b * (255 - alpha)) / 255
                for c, b in zip(rgb, canvas, strict=True)
            )
            self.assertEqual(inside[3], 255)
            for got, want in zip(inside[:3], over, strict=True):
                self.assertLessEqual(abs(got - want), 1.5, (inside, over))

    def test_a_transparent_canvas_in_jpeg_is_the_white_one(self) -> None:
        """Why x20-pad00000000.jpg folds into x20-pad.jpg: rendered apart, the
        two give the same pixels (a format without alpha is flattened on
        white)."""
        source = Image.new("RGBA", (40, 20), (255, 0, 0, 128))
        ImageDraw.Draw(source).ellipse((5, 2, 30, 18), fill=(0, 90, 255, 200))
        data = encode(source, "PNG")
        white = RULES.canonical("x20-pad.jpg")
        assert white is not None
        for spelling in ("x20-pad00000000.jpg", "x20-pad00ff0000.jpg"):
            self.assertEqual(RULES.canonical(spelling), white)
        clear = dataclasses.replace(white, pad=(0, 0, 0, 0))
        a = decode(renderer.render(data, white, LIMITS))
        b = decode(renderer.render(data, clear, LIMITS))
        bands = ImageChops.difference(a, b).getextrema()
        self.assertLessEqual(max(high for _, high in bands), 2)  # type: ignore[union-attr]
