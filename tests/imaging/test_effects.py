"""Issue 26's options, pixel by pixel, against references computed here from
their definitions in docs/api.md (not from the code under test)."""

from __future__ import annotations

import base64
import hashlib
import io
import re
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops
from twisted.trial.unittest import SynchronousTestCase

from imageserver.config import Config
from imageserver.errors import InvalidRequest, NotCanonical
from imageserver.imaging import effects, renderer
from imageserver.naming import VariantRules
from tests.support import encode, quadrants

RULES = VariantRules(frozenset({"png", "jpg", "webp", "gif", "auto"}), 0, 4000)
LIMITS = Config().decode_limits


def render(data: bytes, name: str) -> Image.Image:
    variant = RULES.canonical(name)
    assert variant is not None
    return Image.open(io.BytesIO(renderer.render(data, variant, LIMITS)))


def flat(colour: tuple[int, ...], size: tuple[int, int] = (40, 30)) -> bytes:
    mode = "RGBA" if len(colour) == 4 else "RGB"
    return encode(Image.new(mode, size, colour), "PNG")


def clamp(value: float) -> int:
    return min(255, max(0, round(value)))


LEVELS = st.integers(0, 255)
AMOUNTS = st.integers(-100, 100).filter(bool)


def signed(word: str, amount: int) -> str:
    return f"{word}{'m' if amount < 0 else ''}{abs(amount)}"


class AdjustmentTests(SynchronousTestCase):
    @settings(max_examples=40, deadline=None)
    @given(st.tuples(LEVELS, LEVELS, LEVELS), AMOUNTS)
    def test_brightness_adds_a_share_of_white(
        self, colour: tuple[int, int, int], amount: int
    ) -> None:
        out = render(flat(colour), f"w20-{signed('brightness', amount)}.png")
        shift = round(255 * amount / 100)  # N % of white, in whole levels
        expected = tuple(clamp(c + shift) for c in colour)
        self.assertEqual(out.getpixel((5, 5)), expected)

    @settings(max_examples=40, deadline=None)
    @given(st.tuples(LEVELS, LEVELS, LEVELS), AMOUNTS)
    def test_contrast_stretches_around_mid_grey(
        self, colour: tuple[int, int, int], amount: int
    ) -> None:
        out = render(flat(colour), f"w20-{signed('contrast', amount)}.png")
        factor = ((100 + amount) / 100) ** 2
        expected = tuple(clamp(128 + (c - 128) * factor) for c in colour)
        self.assertEqual(out.getpixel((5, 5)), expected)

    @settings(max_examples=40, deadline=None)
    @given(st.tuples(LEVELS, LEVELS, LEVELS), AMOUNTS)
    def test_saturation_moves_colour_around_its_grey(
        self, colour: tuple[int, int, int], amount: int
    ) -> None:
        out = render(flat(colour), f"w20-{signed('saturation', amount)}.png")
        r, g, b = colour
        grey = (r * 299 + g * 587 + b * 114) / 1000  # ITU-R 601 luma
        expected = [clamp(grey + (c - grey) * (1 + amount / 100)) for c in colour]
        got = out.getpixel((5, 5))
        for have, want in zip(got, expected, strict=True):
            self.assertLessEqual(abs(have - want), 1, (got, expected))

    def test_the_extremes(self) -> None:
        colour = (200, 40, 90)
        for name, expected in [
            ("w20-brightnessm100.png", (0, 0, 0)),
            ("w20-brightness100.png", (255, 255, 255)),
            ("w20-contrastm100.png", (128, 128, 128)),
        ]:
            self.assertEqual(render(flat(colour), name).getpixel((3, 3)), expected)
        grey = render(flat(colour), "w20-saturationm100.png").getpixel((3, 3))
        self.assertEqual(len(set(grey)), 1)  # no colour left

    def test_alpha_is_left_as_it_is(self) -> None:
        for option in ("brightness40", "contrastm30", "saturation80"):
            out = render(flat((10, 200, 30, 77)), f"w20-{option}.png")
            self.assertEqual(out.mode, "RGBA")
            self.assertEqual(out.getpixel((4, 4))[3], 77, option)

    def test_a_grey_original_stays_grey(self) -> None:
        data = encode(Image.new("L", (30, 20), 100), "PNG")
        out = render(data, "w20-brightness20-saturation50.png")
        self.assertEqual((out.mode, out.getpixel((2, 2))), ("L", 151))


class MaskTests(SynchronousTestCase):
    def test_a_circle_is_transparent_outside_and_opaque_inside(self) -> None:
        out = render(flat((30, 60, 90)), "x64-circle.png")
        self.assertEqual((out.size, out.mode), ((64, 64), "RGBA"))
        for corner in ((0, 0), (63, 0), (0, 63), (63, 63), (8, 8)):
            self.assertEqual(out.getpixel(corner)[3], 0, corner)
        for inside in ((32, 32), (32, 2), (2, 32), (61, 32), (32, 61)):
            self.assertEqual(out.getpixel(inside), (30, 60, 90, 255), inside)
        # On the edge, partly covered: antialiased, not a staircase.
        alphas = set(out.getchannel("A").tobytes())
        self.assertGreater(len(alphas - {0, 255}), 8, sorted(alphas))

    def test_a_wide_output_holds_an_ellipse(self) -> None:
        out = render(flat((30, 60, 90)), "80x40-circle.png")
        self.assertEqual(out.getpixel((40, 1))[3], 255)  # top middle
        self.assertEqual(out.getpixel((2, 20))[3], 255)  # left middle
        self.assertEqual(out.getpixel((8, 3))[3], 0)  # near a corner

    def test_rounded_corners_of_the_radius_asked(self) -> None:
        out = render(flat((30, 60, 90)), "60x40-round10.png")
        self.assertEqual(out.getpixel((0, 0))[3], 0)
        self.assertEqual(out.getpixel((2, 2))[3], 0)  # inside the corner's square,
        self.assertEqual(out.getpixel((10, 10))[3], 255)  # its centre's in
        self.assertEqual(out.getpixel((30, 0))[3], 255)  # edges are straight
        self.assertEqual(out.getpixel((0, 20))[3], 255)
        self.assertEqual(out.getpixel((10, 0))[3], 255)  # the arc ends there
        # A radius over half the shorter side is that half: a stadium.
        stadium = render(flat((30, 60, 90)), "60x40-round500.png")
        self.assertEqual(stadium.getpixel((30, 20))[3], 255)
        self.assertEqual(stadium.getpixel((3, 3))[3], 0)

    def test_without_alpha_outside_is_the_background(self) -> None:
        for name, outside in [
            ("x40-circle.jpg", (255, 255, 255)),
            ("x40-circle-bg00ff00.jpg", (0, 255, 0)),
            ("x40-circle-bg00ff00.png", (0, 255, 0)),
        ]:
            out = render(flat((200, 0, 0)), name)
            self.assertEqual(out.mode, "RGB", name)
            corner = out.getpixel((0, 0))
            self.assertTrue(  # within what JPEG's quantisation moves
                all(abs(a - b) <= 10 for a, b in zip(corner, outside, strict=True)),
                (name, corner),
            )

    def test_a_transparent_original_keeps_its_transparency_inside(self) -> None:
        out = render(flat((0, 0, 255, 100)), "x40-circle.png")
        self.assertEqual(out.getpixel((20, 20)), (0, 0, 255, 100))
        self.assertEqual(out.getpixel((0, 0))[3], 0)

    def test_a_huge_mask_is_drawn_within_its_bound(self) -> None:
        image = Image.new("RGB", (4000, 3000), (1, 2, 3))
        variant = RULES.canonical("full_size-circle.png")
        assert variant is not None
        out = effects.masked(image, variant)
        self.assertEqual(out.getpixel((0, 0))[3], 0)
        self.assertEqual(out.getpixel((2000, 1500))[3], 255)


class PixelateTests(SynchronousTestCase):
    @settings(max_examples=25, deadline=None)
    @given(st.integers(2, 12), st.integers(13, 60), st.integers(13, 60))
    def test_each_block_is_its_average(
        self, block: int, width: int, height: int
    ) -> None:
        gradient = Image.linear_gradient("L").resize((width, height)).convert("RGB")
        variant = RULES.canonical(f"full_size-pixelate{block}.png")
        assert variant is not None
        out = effects.pixelated(gradient, variant.pixelate)
        self.assertEqual(out.size, (width, height))
        for top in range(0, height, block):
            for left in range(0, width, block):
                box = (left, top, min(width, left + block), min(height, top + block))
                colours = out.crop(box).getcolors()
                self.assertEqual(len(colours), 1, box)  # uniform
                values = list(gradient.crop(box).getchannel(0).tobytes())
                average = sum(values) / len(values)
                self.assertLessEqual(abs(colours[0][1][0] - average), 1, box)


class BackgroundTests(SynchronousTestCase):
    def test_transparency_is_flattened_on_the_colour_in_every_format(self) -> None:
        data = flat((0, 0, 0, 0))
        for ext in ("png", "webp", "gif", "jpg"):
            out = render(data, f"w20-bgff8000.{ext}").convert("RGBA")
            self.assertEqual(out.getpixel((3, 3))[3], 255, ext)
            r, g, b, _ = out.getpixel((3, 3))
            self.assertTrue(abs(r - 255) <= 4 and abs(g - 128) <= 4 and b <= 4, ext)

    def test_and_in_every_frame_of_an_animation(self) -> None:
        """An animation's frames too (they kept their transparency, and a
        level judged the first frame flattened while serving it clear)."""
        frames = [Image.new("RGBA", (40, 30), (0, 0, 0, 0)) for _ in range(3)]
        for index, frame in enumerate(frames):
            frame.paste((0, 0, 255, 255), (index * 10, 0, index * 10 + 10, 10))
        out = io.BytesIO()
        frames[0].save(out, "PNG", save_all=True, append_images=frames[1:])
        for ext in ("png", "webp", "gif"):
            animated = render(out.getvalue(), f"w20-bgff8000.{ext}")
            self.assertEqual(getattr(animated, "n_frames", 1), 3, ext)
            for index in range(3):
                animated.seek(index)
                pixel = animated.convert("RGBA").getpixel((19, 14))
                self.assertEqual(pixel[3], 255, (ext, index))
                r, g, b, _ = pixel
                self.assertTrue(abs(r - 255) <= 4 and abs(g - 128) <= 6 and b <= 6,
                                (ext, index, pixel))  # fmt: skip

    def test_a_pad_canvas_takes_it(self) -> None:
        out = render(flat((0, 0, 255), (40, 20)), "x40-pad-bg00ff00.png")
        self.assertEqual((out.mode, out.getpixel((20, 2))), ("RGB", (0, 255, 0)))
        self.assertEqual(out.getpixel((20, 20)), (0, 0, 255))


class CropTests(SynchronousTestCase):
    """A 64x48 picture of four colours (quadrants): each crop is known."""

    data = encode(quadrants((64, 48)), "PNG")

    def colours(self, out: Image.Image) -> set[Any]:
        return {colour for _, colour in out.getcolors(1 << 16)}

    def test_a_pixel_box_and_its_fractions(self) -> None:
        top_left = render(self.data, "full_size-crop0_0_32_24.png")
        self.assertEqual(top_left.size, (32, 24))
        self.assertEqual(len(self.colours(top_left)), 1)
        same = render(self.data, "full_size-cropf0_0_5000_5000.png")
        self.assertEqual(same.tobytes(), top_left.tobytes())
        right = render(self.data, "w16-crop32_0_64_48.png")
        self.assertEqual(right.size, (16, 24))
        self.assertEqual(right.getpixel((8, 4)), quadrants((64, 48)).getpixel((48, 4)))

    def test_before_every_other_option(self) -> None:
        """A crop, then a cover crop of it: x10 of the right half is square
        and from that half alone."""
        out = render(self.data, "x10-crop32_0_64_48-gn.png")
        self.assertEqual(out.size, (10, 10))
        self.assertEqual(out.getpixel((5, 2)), quadrants((64, 48)).getpixel((48, 4)))

    def test_trim_works_inside_the_crop(self) -> None:
        picture = Image.new("RGB", (60, 60), (255, 255, 255))
        picture.paste((200, 0, 0), (5, 5, 15, 15))  # inside the crop
        picture.paste((0, 0, 200), (45, 45, 55, 55))  # outside it
        out = render(encode(picture, "PNG"), "full_size-crop0_0_30_30-trim.png")
        self.assertEqual(out.size, (10, 10))
        self.assertEqual(self.colours(out), {(200, 0, 0)})

    def test_a_box_past_the_original_is_refused(self) -> None:
        variant = RULES.canonical("w10-crop0_0_65_48.png")
        assert variant is not None
        with self.assertRaisesRegex(InvalidRequest, "reaches past the 64x48"):
            renderer.render(self.data, variant, LIMITS)


BACKGROUND = (10, 200, 10)


def checkered(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """A flat picture with a one-pixel black-and-white checkerboard in
    ``box``: what a redaction must leave unreadable."""
    picture = Image.new("RGB", size, BACKGROUND)
    left, top, right, bottom = box
    for y in range(top, bottom):
        for x in range(left, right):
            picture.putpixel((x, y), (0, 0, 0) if (x + y) % 2 else (255, 255, 255))
    return picture


TURNS = ["", "-r90", "-r180", "-r270", "-flip", "-flop", "-r90-flip", "-r90-flop"]


class RedactionTests(SynchronousTestCase):
    @settings(max_examples=30, deadline=None)
    @given(
        st.sampled_from(["pixelbox", "blurbox"]),
        st.integers(0, 40), st.integers(0, 25), st.integers(8, 20), st.integers(8, 15),
        st.sampled_from(TURNS),
        st.sampled_from(["", "crop0_0_60_40", "crop10_5_50_35", "crop20_0_60_40"]),
    )  # fmt: skip
    def test_the_box_is_unreadable_wherever_it_lands_and_nothing_else_changes(
        self,
        how: str,
        left: int,
        top: int,
        width: int,
        height: int,
        turn: str,
        crop: str,
    ) -> None:
        box = (left, top, left + width, top + height)
        data = encode(checkered((60, 40), box), "PNG")
        base = "full_size" + (f"-{crop}" if crop else "") + turn
        plain = render(data, f"{base}.png")
        name = RULES.canonical(f"{base}-{how}{'_'.join(map(str, box))}.png")
        assert name is not None
        redacted = render(data, name.name)
        self.assertEqual(redacted.size, plain.size)
        for y in range(plain.height):
            for x in range(plain.width):
                before, after = plain.getpixel((x, y)), redacted.getpixel((x, y))
                if before == BACKGROUND:
                    self.assertEqual(after, BACKGROUND, (x, y))  # nothing bleeds
                else:  # a checker pixel: not its black or white any more
                    self.assertNotIn(after, ((0, 0, 0), (255, 255, 255)), (x, y))

    def test_where_a_box_lands_in_a_scaled_turned_output(self) -> None:
        from imageserver.imaging import geometry

        variant = RULES.canonical("w20-r90-pixelbox0_0_10_10.png")
        assert variant is not None
        plan = geometry.plan(variant, 80, 40)  # turned: 40x80, then 20x40
        # The top-left 10x10 of the original is its top right once turned,
        # grown by the resize's reach (3 pixels) and clipped.
        self.assertEqual(
            geometry.output_box(plan, (0, 0, 10, 10)), ((12, 0, 20, 8), (11, 11))
        )
        self.assertIsNone(geometry.output_box(plan, (80, 0, 90, 5)))  # outside
        cropped = RULES.canonical("w40-crop40_0_80_40.png")
        assert cropped is not None
        plan = geometry.plan(cropped, 80, 40)
        self.assertIsNone(geometry.output_box(plan, (0, 0, 40, 40)))  # cropped away
        self.assertEqual(
            geometry.output_box(plan, (30, 10, 50, 20)), ((0, 10, 10, 20), (20, 10))
        )
        # Not resized: no reach to grow by.
        whole = RULES.canonical("full_size.png")
        assert whole is not None
        self.assertEqual(
            geometry.output_box(geometry.plan(whole, 80, 40), (5, 5, 9, 9)),
            ((5, 5, 9, 9), (4, 4)),
        )

    def test_a_crop_through_a_box_does_not_weaken_it(self) -> None:
        """8 columns of a 40x40 box are left by the crop: they are redacted
        as the whole box would be (blocks of 7, a blur of sigma 10), not as a
        box of 8x40 (blocks of 4, sigma 2)."""
        import random

        from PIL import ImageStat

        noise = random.Random(26).randbytes(80 * 40 * 3)
        data = encode(Image.frombytes("RGB", (80, 40), noise), "PNG")
        cut = render(data, "full_size-crop32_0_80_40-pixelbox0_0_40_40.png")
        part = cut.crop((0, 0, 8, 40))
        self.assertLessEqual(len(part.getcolors(1000) or ()), 6)  # 1 x 6 blocks
        smooth = {}
        for box in ("0_0_40_40", "32_0_40_40"):  # the whole, the visible part
            cut = render(data, f"full_size-crop32_0_80_40-blurbox{box}.png")
            smooth[box] = ImageStat.Stat(cut.crop((0, 0, 8, 40)).convert("L")).stddev[0]
        self.assertLess(smooth["0_0_40_40"], smooth["32_0_40_40"] * 0.75, smooth)

    def test_a_tight_box_around_a_line_is_coarse_along_it(self) -> None:
        """A 240x30 box (a line of text): blocks of 15 (a sixteenth of its
        length), not 5 (a sixth of its height), so 16 x 2 blocks at most."""
        import random

        noise = random.Random(7).randbytes(300 * 60 * 3)
        data = encode(Image.frombytes("RGB", (300, 60), noise), "PNG")
        for turn, inside in (("", (20, 10, 260, 40)), ("-r90", (20, 20, 50, 260))):
            out = render(data, f"full_size{turn}-pixelbox20_10_260_40.png")
            colours = out.crop(inside).getcolors(10_000) or ()
            self.assertLessEqual(len(colours), 32, turn)

    def test_the_names(self) -> None:
        self.assertEqual(
            canonical("w20-blurbox5_5_9_9-pixelbox9_9_20_20-pixelbox0_0_4_4.png"),
            "w20-pixelbox0_0_4_4-pixelbox9_9_20_20-blurbox5_5_9_9.png",
        )
        many = "".join(f"-pixelbox0_0_{n}_{n}" for n in range(1, 10))
        with self.assertRaisesRegex(InvalidRequest, "at most 8 pixelbox and blurbox"):
            RULES.canonical(f"w20{many}.png")
        with self.assertRaisesRegex(InvalidRequest, "given twice"):
            RULES.canonical("w20-pixelbox0_0_4_4-pixelbox0_0_4_4.png")


def canonical(name: str) -> str:
    variant = RULES.canonical(name)
    assert variant is not None
    return variant.name


class WatermarkTests(SynchronousTestCase):
    """A solid red 40x20 mark over a blue picture: where it lands, how
    opaque, how large, is known exactly."""

    mark = encode(Image.new("RGBA", (40, 20), (255, 0, 0, 255)), "PNG")
    digest = hashlib.md5(mark).hexdigest()
    rules = VariantRules(frozenset({"png"}), 0, 4000, watermarks=(("logo", digest),))

    def render(self, name: str, size: tuple[int, int] = (200, 100)) -> Image.Image:
        variant = self.rules.canonical(name)
        assert variant is not None
        picture = encode(Image.new("RGB", size, (0, 0, 255)), "PNG")
        _, (out,) = renderer.render_many(
            picture, [variant], LIMITS, marks={self.digest: self.mark}
        )
        return Image.open(io.BytesIO(out))

    def red_box(self, image: Image.Image) -> tuple[int, int, int, int] | None:
        red = image.convert("RGB").point(lambda v: 255 if v > 200 else 0)
        return red.getchannel("R").getbbox()

    def test_each_place_with_its_margin(self) -> None:
        # 25 % of 200 is 50 wide, so 25 high.
        for place, box in [
            ("se", (150, 75, 200, 100)), ("nw", (0, 0, 50, 25)),
            ("c", (75, 38, 125, 63)), ("n", (75, 0, 125, 25)),
            ("se10", (140, 65, 190, 90)), ("nw10", (10, 10, 60, 35)),
            ("e5", (145, 38, 195, 63)), ("sw3", (3, 72, 53, 97)),
        ]:  # fmt: skip
            self.assertEqual(self.red_box(self.render(f"w200-wmlogo_{place}.png")),
                             box, place)  # fmt: skip

    def test_a_margin_past_the_room_shrinks_alike_on_both_sides(self) -> None:
        """50x25 in 200x100: 150 and 75 pixels of room. A margin of 100 is
        more than half of either: the mark is centred, wherever it was
        placed (the centred place would put it there too: 38 of 75, half
        up); a margin under half the room keeps it off its edge."""
        for place, box in [
            ("se100", (75, 38, 125, 63)), ("nw100", (75, 38, 125, 63)),
            ("e40", (110, 38, 160, 63)), ("w40", (40, 38, 90, 63)),
            ("s30", (75, 45, 125, 70)), ("n30", (75, 30, 125, 55)),
            ("s50", (75, 38, 125, 63)), ("n50", (75, 38, 125, 63)),
            ("s37", (75, 38, 125, 63)), ("n37", (75, 37, 125, 62)),
        ]:  # fmt: skip
            self.assertEqual(self.red_box(self.render(f"w200-wmlogo_{place}.png")),
                             box, place)  # fmt: skip

    def test_opacity_blends_exactly(self) -> None:
        out = self.render("w200-wmlogo_se_40.png").convert("RGB")
        # 40 % red over blue: 255 * 0.4 and 255 * 0.6 (alpha 102 of 255).
        r, g, b = out.getpixel((180, 90))
        self.assertLessEqual(abs(r - 102), 1)
        self.assertEqual(g, 0)
        self.assertLessEqual(abs(b - 153), 1)
        self.assertEqual(out.getpixel((10, 10)), (0, 0, 255))  # elsewhere

    def test_scale_and_a_tall_output(self) -> None:
        self.assertEqual(self.red_box(self.render("w200-wmlogo_nw_100_50.png")),
                         (0, 0, 100, 50))  # fmt: skip
        # 100 % of a 200x40 output would be 200x100: fitted to the height.
        self.assertEqual(
            self.red_box(self.render("w200-wmlogo_nw_100_100.png", (200, 40))),
            (0, 0, 80, 40),
        )

    def test_tiles_cover_the_output_with_their_gap(self) -> None:
        out = self.render("w200-wmlogo_tile10_100_10.png").convert("RGB")
        # Tiles of 20x10, every 30 pixels across and 20 down.
        for x in range(200):
            for y in range(100):
                inside = x % 30 < 20 and y % 20 < 10
                self.assertEqual(
                    out.getpixel((x, y)),
                    (255, 0, 0) if inside else (0, 0, 255),
                    (x, y),
                )

    def test_names(self) -> None:
        rules = self.rules
        variant = rules.parse("w200-wmlogo_nw.png")  # served by its name
        assert variant is not None and variant.watermark is not None
        self.assertEqual(variant.name, f"w200-wm{self.digest}_nw.png")
        self.assertEqual(rules.parse(variant.name), variant)  # and by its md5
        for spelled, canonical in [
            ("w200-wmlogo_se_100_25.png", "w200-wmlogo.png"),
            ("w200-wmlogo_c7.png", "w200-wmlogo_c.png"),
            (f"w200-wm{self.digest}_se.png", f"w200-wm{self.digest}.png"),
        ]:
            with self.assertRaises(NotCanonical, msg=spelled) as caught:
                rules.parse(spelled)
            self.assertEqual(caught.exception.canonical, canonical)
        for name, words in [
            (
                "w200-wmother.png",
                "unknown watermark 'other' (--watermarks names: logo)",
            ),
            (f"w200-wm{'0' * 32}.png", "no watermark of this server has md5"),
            ("w200-wmlogo_se_0.png", "opacity must be at least 1"),
            ("w200-wmlogo_se_100_101.png", "opacity and scale are 1 to 100"),
            ("w200-wmlogo-wmlogo_nw.png", "a watermark is given twice"),
        ]:
            with self.assertRaisesRegex(InvalidRequest, re.escape(words)):
                rules.parse(name)
        # Another image under the same name: other canonical names.
        other = VariantRules(frozenset({"png"}), 0, 4000,
                             watermarks=(("logo", "f" * 32),))  # fmt: skip
        moved = other.canonical("w200-wmlogo.png")
        assert moved is not None
        self.assertNotEqual(moved.name, variant.name.replace("_nw", ""))


def b32(text: str) -> str:
    return base64.b32encode(text.encode()).decode().rstrip("=").lower()


class TextTests(SynchronousTestCase):
    photo = encode(Image.new("RGB", (300, 200), (0, 0, 120)), "PNG")

    def drawn(self, name: str) -> tuple[int, int, int, int] | None:
        out = render(self.photo, name).convert("RGB")
        background = Image.new("RGB", out.size, (0, 0, 120))
        return ImageChops.difference(out, background).getbbox()

    def test_the_text_lies_in_its_box(self) -> None:
        # 10 % of 200 high: at most 20 pixels and its outline, at the bottom
        # centre by default; other places and margins move it.
        for option, inside in [
            ("", (0, 170, 300, 200)),
            ("_nw", (0, 0, 150, 30)),
            ("_se12", (150, 158, 288, 188)),
            ("_c_30", (0, 60, 300, 140)),
        ]:
            box = self.drawn(f"w300-text{b32('SALE 50%')}{option}.png")
            assert box is not None, option
            self.assertTrue(
                inside[0] <= box[0] and inside[1] <= box[1]
                and box[2] <= inside[2] and box[3] <= inside[3],
                (option, box),
            )  # fmt: skip

    def test_a_long_text_shrinks_to_the_width(self) -> None:
        box = self.drawn(f"w300-text{b32('W' * 60)}_c_50.png")
        assert box is not None
        self.assertLessEqual(box[2] - box[0], 300)
        self.assertLess(box[3] - box[1], 40)  # far below 50 % of the height

    def test_its_colour_and_outline(self) -> None:
        out = render(self.photo, f"w300-text{b32('I')}_c_80_ff0000.png").convert("RGB")
        colours = {c for _, c in out.getcolors(1 << 16)}
        self.assertIn((255, 0, 0), colours)  # the letter
        self.assertIn((255, 255, 255), colours)  # a dark red's outline is white

    def test_what_the_font_cannot_draw_is_a_400(self) -> None:
        for text, words in [("日本", "no glyph for '日'"), ("שלום", "right-to-left")]:
            variant = RULES.canonical(f"w300-text{b32(text)}.png")
            assert variant is not None
            with self.assertRaisesRegex(InvalidRequest, words):
                renderer.render(self.photo, variant, LIMITS)

    def test_names(self) -> None:
        sale = b32("SALE")
        self.assertEqual(canonical(f"w300-text{sale.upper()}_s_10_ffffff.png"),
                         f"w300-text{sale}.png")  # fmt: skip
        self.assertEqual(canonical(f"w300-text{b32('e' + chr(0x301))}.png"),
                         f"w300-text{b32(chr(0xE9))}.png")  # NFC  # fmt: skip
        for token, words in [
            ("texta", "base32"),
            (f"text{b32('a' * 101)}", "1 to 100 printable characters"),
            (f"text{b32('a' + chr(10) + 'b')}", "printable characters on one line"),
            (f"text{sale}_s_101", "size is 1 to 100"),
        ]:
            with self.assertRaisesRegex(InvalidRequest, words):
                RULES.canonical(f"w300-{token}.png")


def noisy(size: tuple[int, int]) -> Image.Image:
    return Image.blend(
        quadrants(size), Image.effect_noise(size, 60).convert("RGB"), 0.5
    )


class ByteBudgetTests(SynchronousTestCase):
    """A budget's search: its encodes together cover at most the pixel limit
    (--max_source_pixels), and an animation keeps its budget too."""

    RULES = VariantRules(frozenset({"jpg", "webp"}), 0, 4000)

    def rendered(self, data: bytes, name: str, pixels: int) -> tuple[bytes, int, int]:
        """The output, its chosen quality and how many encodes it took."""
        variant = self.RULES.canonical(name)
        assert variant is not None
        limits = replace(LIMITS, pixels=pixels)
        counted = 0
        real = renderer._encode_within

        def counting(encode: Any, variant: Any, encodes: int) -> Any:
            def each(v: Any) -> bytes:
                nonlocal counted
                counted += 1
                return encode(v)  # type: ignore[no-any-return]

            return real(each, variant, encodes)

        self.patch(renderer, "_encode_within", counting)
        info, [out] = renderer.render_many(data, [variant], limits)
        assert info.chosen_qualities is not None
        quality, score = info.chosen_qualities[variant.name]
        self.assertIsNone(score)  # a budget alone: no score judged
        return out, quality, counted

    def test_a_large_output_searches_with_fewer_encodes(self) -> None:
        data = encode(noisy((300, 200)), "PNG")
        counts = []
        for pixels in (10**7, 300 * 200 * 5, 300 * 200 * 3):
            out, _, encodes = self.rendered(data, "full_size-maxbytes9000.jpg", pixels)
            self.assertLessEqual(len(out), 9000)
            counts.append(encodes)
        self.assertGreater(counts[0], 5)  # this search wants more than 5
        self.assertLessEqual(counts[0], renderer.MAX_BUDGET_ENCODES)
        self.assertLessEqual(counts[1], 5)
        self.assertLessEqual(counts[2], 3)

    def test_one_that_cannot_afford_three_encodes_is_refused_before_decoding(
        self,
    ) -> None:
        data = encode(noisy((300, 200)), "PNG")
        with self.assertRaises(renderer.ImageTooLarge) as raised:
            self.rendered(data, "full_size-maxbytes9000.jpg", 300 * 200 * 3 - 1)
        self.assertIn("byte budget", str(raised.exception))
        self.assertIn("full_size-maxbytes9000.jpg", str(raised.exception))

    def test_an_animation_within_its_budget(self) -> None:
        frames = [noisy((120, 80)).rotate(30 * i) for i in range(6)]
        out = io.BytesIO()
        frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=80)
        plain = renderer.render(
            out.getvalue(),
            self.RULES.canonical("full_size.webp"),
            LIMITS,  # type: ignore[arg-type]
        )
        budget = len(plain) // 2
        made, quality, _ = self.rendered(
            out.getvalue(), f"full_size-maxbytes{budget}.webp", 10**7
        )
        self.assertLessEqual(len(made), budget)
        self.assertLess(quality, 100)
        with Image.open(io.BytesIO(made)) as image:
            self.assertEqual((image.n_frames, image.size), (6, (120, 80)))
        # Six frames count six times against the limit.
        with self.assertRaises(renderer.ImageTooLarge):
            self.rendered(
                out.getvalue(), f"full_size-maxbytes{budget}.webp", 120 * 80 * 17
            )


class FoldTests(SynchronousTestCase):
    """Numbers past what an output can show are folded to the largest that
    it can (one name for one output): the folded name renders exactly what
    the number asked for would."""

    mark = encode(Image.new("RGBA", (30, 20), (255, 0, 0, 200)), "PNG")
    digest = hashlib.md5(mark).hexdigest()
    rules = VariantRules(frozenset({"png"}), 0, 4000, watermarks=(("logo", digest),))

    @settings(max_examples=80, deadline=None)
    @given(
        st.sampled_from(["{w}x{h}", "{w}x{h}-fit", "{w}x{h}-pad", "w{w}", "h{h}"]),
        st.integers(4, 60), st.integers(4, 60),
        st.integers(10, 80), st.integers(10, 80),
        st.sampled_from(["round{n}", "pixelate{n}", "wmlogo_se{n}", "wmlogo_tile{n}",
                         "wmlogo_n{n}", "wmlogo_w{n}", "textknauyri_w{n}",
                         "textknauyri_ne{n}", "textknauyri_c{n}"]),
        st.integers(2, 200),
    )  # fmt: skip
    def test_a_folded_number_renders_the_same(
        self, size: str, w: int, h: int, sw: int, sh: int, option: str, n: int
    ) -> None:
        name = f"{size.format(w=w, h=h)}-{option.format(n=n)}.png"
        variant = self.rules.canonical(name)
        assert variant is not None
        place = option.partition("_")[2].removesuffix("{n}")
        asked = replace(
            variant,
            corner_radius=n if option.startswith("round") else 0,
            circle=False,
            pixelate=n if option.startswith("pixelate") else 0,
            watermark=variant.watermark
            and replace(variant.watermark, place=place, margin=n),
            text=variant.text and replace(variant.text, place=place, margin=n),
        )
        picture = encode(noisy((sw, sh)), "PNG")

        def made(v: Any) -> bytes:
            _, (out,) = renderer.render_many(
                picture, [v], LIMITS, marks={self.digest: self.mark}
            )
            return out

        self.assertEqual(made(variant), made(asked), (name, variant.name))

    def test_a_round_square_is_its_circle_only_where_it_draws_one(self) -> None:
        """Half an even square's side rounds it into its circle (the name
        folds to circle); an odd side's half is short of one (it does not)."""
        picture = encode(noisy((30, 20)), "PNG")
        for side in range(2, 14):
            for fit in ("", "-pad"):
                variant = self.rules.canonical(f"x{side}{fit}-round{side}.png")
                assert variant is not None
                self.assertEqual(variant.circle, side % 2 == 0, variant.name)
                asked = replace(variant, corner_radius=side, circle=False)
                made = [
                    renderer.render_many(picture, [v], LIMITS)[1][0]
                    for v in (variant, asked)
                ]
                self.assertEqual(made[0], made[1], variant.name)

    def test_the_folds(self) -> None:
        for name, folded in [
            ("x100-round80.png", "x100-circle.png"),
            ("x100-round50.png", "x100-circle.png"),
            ("x100-pad-round50.png", "x100-pad-circle.png"),
            ("x101-round80.png", "x101-round50.png"),
            ("x100-noup-round50.png", "x100-noup-round50.png"),
            ("x100-fit-round50.png", "x100-fit-round50.png"),
            ("w100-round80.png", "w100-round50.png"),
            ("full_size-round80.png", "full_size-round80.png"),
            ("100x40-pixelate300.png", "100x40-pixelate100.png"),
            ("w100-pixelate300.png", "w100-pixelate300.png"),
            ("100x40-wmlogo_se900.png", "100x40-wmlogo_c.png"),
            ("100x40-wmlogo_se20.png", "100x40-wmlogo_e20.png"),
            ("100x40-wmlogo_se19.png", "100x40-wmlogo_se19.png"),
            ("x100-wmlogo_n50.png", "x100-wmlogo_c.png"),
            ("x100-wmlogo_e50.png", "x100-wmlogo_c.png"),
            ("w100-wmlogo_se50.png", "w100-wmlogo_s50.png"),
            ("h100-wmlogo_se50.png", "h100-wmlogo_e50.png"),
            ("full_size-wmlogo_se900.png", "full_size-wmlogo_se900.png"),
            ("100x40-wmlogo_tile900.png", "100x40-wmlogo_tile100.png"),
            ("100x40-textknauyri_s900.png", "100x40-textknauyri_c50.png"),
            ("100x40-textknauyri_sw20.png", "100x40-textknauyri_w20.png"),
            ("w100-textknauyri_s900.png", "w100-textknauyri_s900.png"),
            # The side a name does not give is at most --maximum_width (4000).
            ("w100-wmlogo_s2000.png", "w100-wmlogo_c.png"),
            ("w100-wmlogo_s1999.png", "w100-wmlogo_s1999.png"),
            ("w100-wmlogo_tile9000.png", "w100-wmlogo_tile4000.png"),
            ("h100-textknauyri_c9000.png", "h100-textknauyri_c2000.png"),
            ("w100-textknauyri_c900.png", "w100-textknauyri_c50.png"),
            ("h100-textknauyri_c900.png", "h100-textknauyri_c900.png"),
            (f"x100-wm{self.digest.upper()}_nw.png", "x100-wmlogo_nw.png"),
        ]:
            variant = self.rules.canonical(name)
            assert variant is not None
            self.assertEqual(
                variant.name.replace(f"wm{self.digest}", "wmlogo"), folded, name
            )

    def test_a_text_is_spelled_as_it_is_drawn(self) -> None:
        for text, spelled in [
            (" SALE", "SALE"), ("SALE  ", "SALE"), ("SALE\ufe0f", "SALE"),
            ("SA\u180bLE", "SALE"), ("SA\u034fLE", "SALE"), ("SA\u17b4LE", "SALE"),
            ("SA LE", "SA LE"),
            # A run of blanks in one order; a blank carrying a mark is drawn.
            ("A\u2800 B", "A \u2800B"), ("A \u2800B", "A \u2800B"),
            ("A\u2800 \u2800 B", "A  \u2800\u2800B"),
            (" \u0301SALE", " \u0301SALE"), ("  \u0301SALE", " \u0301SALE"),
            ("SALE \u0301", "SALE \u0301"), ("A\u2800  \u0301B", "A \u2800 \u0301B"),
        ]:  # fmt: skip
            self.assertEqual(canonical(f"w100-text{b32(text)}.png"),
                             f"w100-text{b32(spelled)}.png", text)  # fmt: skip
        for blank in (" ", "\ufe0f", "  \ufe0e ", "\u2800", " \u2800\ufffc"):
            with self.assertRaisesRegex(InvalidRequest, "not only spaces"):
                RULES.canonical(f"w100-text{b32(blank)}.png")

    def test_blanks_in_any_order_draw_the_same(self) -> None:
        """What makes their order one spelling: the pixels do not tell."""
        from imageserver.imaging.effects import captioned
        from imageserver.naming import Caption

        base = Image.new("RGB", (300, 100), (0, 0, 255))
        for one, other in [("A\u2800 B", "A \u2800B"),
                           ("A\u2800 \u2800 B", "A  \u2800\u2800B")]:  # fmt: skip
            drawn = [
                captioned(base, Caption(text, "s", 0, 30, (255, 255, 255))).tobytes()
                for text in (one, other)
            ]
            self.assertEqual(drawn[0], drawn[1], one)

    def test_every_character_drawn_as_nothing_is_dropped_or_a_blank(self) -> None:
        """The font's every character (of the Basic Multilingual Plane) that
        leaves no ink: without width, dropped from a text; with width, a
        blank, stripped at either end like a space."""
        from imageserver.imaging.effects import _font, _glyph

        font, inkless = _font(24), _glyph(" ")
        for point in range(0x21, 0x10000):
            character = chr(point)
            if not character.isprintable() or _glyph(character) != inkless:
                continue
            at_end = canonical(f"w100-text{b32('A' + character)}.png")
            self.assertEqual(at_end, f"w100-text{b32('A')}.png", hex(point))
            inside = canonical(f"w100-text{b32('A' + character + 'B')}.png")
            dropped = inside == f"w100-text{b32('AB')}.png"
            self.assertEqual(dropped, font.getlength(character) == 0, hex(point))
