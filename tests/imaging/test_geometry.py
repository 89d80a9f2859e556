"""The pure geometry: every box inside its source, every size exact, for all sizes
and every mode, anchor, rotation and trim."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imageserver.imaging import geometry
from imageserver.naming import GRAVITIES, Fit, Variant

SIDES = st.integers(min_value=1, max_value=70_000)
OUT = st.integers(min_value=1, max_value=20_000)


@st.composite
def variants(draw: st.DrawFn) -> Variant:
    fit = draw(st.sampled_from(Fit))
    width = height = 0
    if fit is Fit.WIDTH:
        width = draw(OUT)
    elif fit is Fit.HEIGHT:
        height = draw(OUT)
    elif fit is not Fit.FULL:
        width = draw(OUT)
        height = width if draw(st.booleans()) else draw(OUT)
    anchor: dict[str, object] = {}
    if fit is Fit.FILL:
        anchor = draw(
            st.one_of(
                st.just({}),
                st.sampled_from(sorted(GRAVITIES)).map(lambda g: {"gravity": g}),
                st.tuples(st.integers(0, 100), st.integers(0, 100)).map(
                    lambda xy: {"focus": xy}
                ),
            )
        )
    return Variant(
        "v.jpg",
        fit,
        width,
        height,
        75,
        "jpg",
        noup=draw(st.booleans()),
        rotate=draw(st.sampled_from([0, 90, 180, 270])),
        flip=draw(st.booleans()),
        flop=draw(st.booleans()),
        **anchor,  # type: ignore[arg-type]
    )


@st.composite
def sources(draw: st.DrawFn) -> tuple[int, int, geometry.Box | None]:
    """A source size and, sometimes, the content box a trim kept."""
    w, h = draw(SIDES), draw(SIDES)
    if not draw(st.booleans()):
        return w, h, None
    left, top = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
    right, bottom = draw(st.integers(left + 1, w)), draw(st.integers(top + 1, h))
    return w, h, (left, top, right, bottom)


def fill(width: int, height: int, **options: object) -> Variant:
    name = f"{width}x{height}.jpg"
    return Variant(name, Fit.FILL, width, height, 75, "jpg", **options)  # type: ignore[arg-type]


def rounded(value: Fraction) -> int:
    """Half up, computed independently of the code under test."""
    return max(1, int(value + Fraction(1, 2)))


def turned_size(
    v: Variant, w: int, h: int, content: geometry.Box | None
) -> tuple[int, int]:
    if content is not None:
        w, h = content[2] - content[0], content[3] - content[1]
    return (h, w) if v.rotate in (90, 270) else (w, h)


def expected_size(v: Variant, rw: int, rh: int) -> tuple[int, int]:
    """The image's size (before any pad canvas), from the spec's words."""
    if v.fit is Fit.FULL:
        return rw, rh
    if v.fit is Fit.WIDTH:
        out = min(v.width, rw) if v.noup else v.width
        return out, rounded(Fraction(rh * out, rw))
    if v.fit is Fit.HEIGHT:
        out = min(v.height, rh) if v.noup else v.height
        return rounded(Fraction(rw * out, rh)), out
    if v.fit is Fit.FILL:
        if Fraction(rw, rh) > Fraction(v.width, v.height):
            crop = (min(rw, rounded(Fraction(rh * v.width, v.height))), rh)
        else:
            crop = (rw, min(rh, rounded(Fraction(rw * v.height, v.width))))
        if v.noup and (v.width > crop[0] or v.height > crop[1]):
            return crop
        return v.width, v.height
    if Fraction(rw, rh) >= Fraction(v.width, v.height):
        size = (v.width, min(v.height, rounded(Fraction(rh * v.width, rw))))
    else:
        size = (min(v.width, rounded(Fraction(rw * v.height, rh))), v.height)
    if v.noup and (size[0] > rw or size[1] > rh):
        return rw, rh
    return size


class PlanProperties(SynchronousTestCase):
    @given(sources(), variants())
    @example((523, 426, None), fill(300, 300))
    @example((4000, 3000, None), fill(49, 49))
    @example((1040, 780, None), fill(200, 200))
    @example((1002, 751, None), fill(300, 200))
    def test_boxes_lie_inside_what_they_are_taken_from(
        self, source: tuple[int, int, geometry.Box | None], v: Variant
    ) -> None:
        w, h, content = source
        plan = geometry.plan(v, w, h, content)
        rw, rh = turned_size(v, w, h, content)
        left, top, right, bottom = plan.region
        self.assertTrue(0 <= left < right <= w and 0 <= top < bottom <= h)
        left, top, right, bottom = plan.box
        for value in (*plan.box, *plan.size):
            self.assertIsInstance(value, int)
        self.assertTrue(0 <= left < right <= rw, (left, right, rw))
        self.assertTrue(0 <= top < bottom <= rh, (top, bottom, rh))

    @given(sources(), variants())
    @example((640, 427, None), Variant("w200.jpg", Fit.WIDTH, 200, 0, 75, "jpg"))
    @example((640, 427, None), Variant("w77.jpg", Fit.WIDTH, 77, 0, 75, "jpg"))
    @example((640, 427, None), Variant("w300.jpg", Fit.WIDTH, 300, 0, 75, "jpg"))
    def test_sizes_come_from_the_source(
        self, source: tuple[int, int, geometry.Box | None], v: Variant
    ) -> None:
        w, h, content = source
        plan = geometry.plan(v, w, h, content)
        rw, rh = turned_size(v, w, h, content)
        self.assertEqual(plan.size, expected_size(v, rw, rh))
        if v.fit is Fit.PAD:
            self.assertEqual(plan.canvas, (v.width, v.height))
            free_w, free_h = v.width - plan.size[0], v.height - plan.size[1]
            self.assertEqual(plan.offset, (free_w // 2, free_h // 2))
            self.assertGreaterEqual(min(free_w, free_h), 0)
        else:
            self.assertIsNone(plan.canvas)
        if v.noup:  # never larger than the (turned, trimmed) source
            self.assertLessEqual(plan.size[0], rw)
            self.assertLessEqual(plan.size[1], rh)

    def test_every_small_size_exhaustively(self) -> None:
        """Tiny sources and outputs, where rounding decides: all of them."""
        for fit in Fit:
            for noup in (False, True):
                for w in range(1, 9):
                    for h in range(1, 9):
                        for out_w in range(1, 10):
                            for out_h in range(1, 10):
                                v = Variant(
                                    "v.jpg", fit,
                                    0 if fit is Fit.HEIGHT else out_w,
                                    0 if fit is Fit.WIDTH else out_h,
                                    75, "jpg", noup=noup,
                                )  # fmt: skip
                                size = geometry.plan(v, w, h).size
                                self.assertEqual(size, expected_size(v, w, h), v)

    def test_width_variant_heights_of_a_640x427_source(self) -> None:
        # What thumbor, libvips and ImageMagick make of it.
        for width, height in ((200, 133), (77, 51), (300, 200)):
            v = Variant(f"w{width}.jpg", Fit.WIDTH, width, 0, 75, "jpg")
            self.assertEqual(geometry.output_size(v, 640, 427), (width, height))

    @given(SIDES, SIDES, OUT, OUT, st.sampled_from(sorted(GRAVITIES)))
    def test_gravity_keeps_its_edges(
        self, w: int, h: int, out_w: int, out_h: int, gravity: str
    ) -> None:
        left, top, right, bottom = geometry.plan(
            fill(out_w, out_h, gravity=gravity), w, h
        ).box
        centre = geometry.plan(fill(out_w, out_h), w, h).box
        ax, ay = GRAVITIES[gravity]
        for fraction, low, high, free, centred in (
            (ax, left, right, w, centre[0]),
            (ay, top, bottom, h, centre[1]),
        ):
            if fraction == 0:
                self.assertEqual(low, 0)
            elif fraction == 1:
                self.assertEqual(high, free)
            else:
                self.assertLessEqual(abs(low - centred), 1)

    @given(SIDES, SIDES, OUT, OUT, st.integers(0, 100), st.integers(0, 100))
    def test_a_focal_point_is_as_central_as_the_crop_allows(
        self, w: int, h: int, out_w: int, out_h: int, x: int, y: int
    ) -> None:
        left, top, right, bottom = geometry.plan(
            fill(out_w, out_h, focus=(x, y)), w, h
        ).box
        for point, low, high, side in (
            (Fraction(x * w, 100), left, right, w),
            (Fraction(y * h, 100), top, bottom, h),
        ):
            half = Fraction(high - low, 2)
            wanted = min(max(point, half), side - half)  # the centre, kept inside
            self.assertLessEqual(abs((low + high) / Fraction(2) - wanted), 1)

    @given(SIDES, SIDES, OUT, OUT)
    def test_cover_box_is_the_largest_centred_box_of_the_ratio(
        self, w: int, h: int, out_w: int, out_h: int
    ) -> None:
        left, top, right, bottom = geometry.plan(fill(out_w, out_h), w, h).box
        box_w, box_h = right - left, bottom - top
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
        box_w, box_h = right - left, bottom - top
        if plan.turned:
            box_w, box_h = box_h, box_w
            out_w, out_h = plan.size[1], plan.size[0]
        else:
            out_w, out_h = plan.size
        # The box, scaled into an image decoded at that size, is no smaller
        # than the output.
        self.assertGreaterEqual(Fraction(box_w * decode_w, w), out_w)
        self.assertGreaterEqual(Fraction(box_h * decode_h, h), out_h)

    def test_no_pixels_is_an_error(self) -> None:
        with self.assertRaises(ValueError):
            geometry.plan(fill(10, 10), 0, 10)
