"""The pure geometry: every box inside the source, every size exact, for all sizes."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imageserver import geometry
from imageserver.naming import Fit, Variant

SIDES = st.integers(min_value=1, max_value=70_000)
OUT = st.integers(min_value=1, max_value=20_000)


@st.composite
def variants(draw: st.DrawFn) -> Variant:
    fit = draw(st.sampled_from(Fit))
    width = height = 0
    if fit is Fit.WIDTH:
        width = draw(OUT)
    elif fit is Fit.FILL:
        width = draw(OUT)
        height = width if draw(st.booleans()) else draw(OUT)
    return Variant("v.jpg", fit, width, height, 75, "jpg")


def fill(width: int, height: int) -> Variant:
    return Variant(f"{width}x{height}.jpg", Fit.FILL, width, height, 75, "jpg")


def rounded(value: Fraction) -> int:
    """Half up, computed independently of the code under test."""
    return max(1, int(value + Fraction(1, 2)))


class PlanProperties(SynchronousTestCase):
    @given(SIDES, SIDES, variants())
    @example(523, 426, fill(300, 300))
    @example(4000, 3000, fill(49, 49))
    @example(1040, 780, fill(200, 200))
    @example(1002, 751, fill(300, 200))
    def test_box_lies_inside_the_source(self, w: int, h: int, v: Variant) -> None:
        left, top, right, bottom = geometry.plan(v, w, h).box
        for value in (left, top, right, bottom):
            self.assertIsInstance(value, int)
        self.assertTrue(0 <= left < right <= w, (left, right, w))
        self.assertTrue(0 <= top < bottom <= h, (top, bottom, h))

    @given(SIDES, SIDES, variants())
    @example(640, 427, Variant("w200.jpg", Fit.WIDTH, 200, 0, 75, "jpg"))
    @example(640, 427, Variant("w77.jpg", Fit.WIDTH, 77, 0, 75, "jpg"))
    @example(640, 427, Variant("w300.jpg", Fit.WIDTH, 300, 0, 75, "jpg"))
    def test_output_size_comes_from_the_source(
        self, w: int, h: int, v: Variant
    ) -> None:
        expected = {
            Fit.FULL: (w, h),
            Fit.WIDTH: (v.width, rounded(Fraction(h * v.width, w))),
            Fit.FILL: (v.width, v.height),
        }[v.fit]
        self.assertEqual(geometry.output_size(v, w, h), expected)
        self.assertEqual(geometry.plan(v, w, h).size, expected)

    def test_width_variant_heights_of_a_640x427_source(self) -> None:
        # What thumbor, libvips and ImageMagick make of it.
        for width, height in ((200, 133), (77, 51), (300, 200)):
            v = Variant(f"w{width}.jpg", Fit.WIDTH, width, 0, 75, "jpg")
            self.assertEqual(geometry.output_size(v, 640, 427), (width, height))

    @given(SIDES, SIDES, OUT, OUT)
    def test_cover_box_is_the_largest_centred_box_of_the_ratio(
        self, w: int, h: int, out_w: int, out_h: int
    ) -> None:
        left, top, right, bottom = geometry.plan(fill(out_w, out_h), w, h).box
        box_w, box_h = right - left, bottom - top
        # One side is whole; the other is the nearest whole number of pixels
        # to the output's ratio (or the whole side, when that is shorter).
        if Fraction(w, h) > Fraction(out_w, out_h):
            self.assertEqual(box_h, h)
            self.assertEqual(box_w, min(w, rounded(Fraction(h * out_w, out_h))))
        else:
            self.assertEqual(box_w, w)
            self.assertEqual(box_h, min(h, rounded(Fraction(w * out_h, out_w))))
        self.assertEqual((left, top), ((w - box_w) // 2, (h - box_h) // 2))

    @given(SIDES, SIDES, variants())
    def test_decode_size_keeps_enough_pixels(self, w: int, h: int, v: Variant) -> None:
        plan = geometry.plan(v, w, h)
        decode_w, decode_h = plan.decode_size(w, h)
        left, top, right, bottom = plan.box
        # The box, scaled into an image decoded at that size, is no smaller
        # than the output.
        self.assertGreaterEqual(Fraction((right - left) * decode_w, w), plan.size[0])
        self.assertGreaterEqual(Fraction((bottom - top) * decode_h, h), plan.size[1])

    def test_no_pixels_is_an_error(self) -> None:
        with self.assertRaises(ValueError):
            geometry.plan(fill(10, 10), 0, 10)
