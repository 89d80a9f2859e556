"""thumbor URLs planned into variants, over the parameter space: every URL
of the grammar makes a canonical variant name (or a 400 that says why) whose
output has the size thumbor's rules give, and whose crop box is inside the
source; thumbor's own verified examples, exactly."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imageserver.config import Config
from imageserver.errors import InvalidRequest
from imageserver.imaging import geometry
from imageserver.thumbor.plan import Settings, Source, plan
from imageserver.thumbor.urls import parse

RULES = Config(maximum_width=100_000).rules
SOURCE = Source(400, 300, "image/jpeg")


def planned(url: str, source: Source = SOURCE) -> tuple[str, tuple[int, int]]:
    result = plan(parse(url), source, Settings())
    variant = RULES.canonical(result.name)
    assert variant is not None
    return variant.name, (result.width, result.height)


class VerifiedExamplesTests(SynchronousTestCase):
    """What thumbor 7.8 answers for a 400x300 source (its /meta/, seen)."""

    def test_sizes_and_crops(self) -> None:
        for url, name, size in [
            ("200x200", "x200-crop50_0_350_300-q80.jpg", (200, 200)),
            ("200x100", "200x100-crop0_50_400_250-q80.jpg", (200, 100)),
            ("100x100/left", "x100-crop0_0_300_300-q80.jpg", (100, 100)),
            ("100x100/right", "x100-crop100_0_400_300-q80.jpg", (100, 100)),
            ("6x0", "6x4-crop0_16_400_283-q80.jpg", (6, 4)),  # 4.5 to even
            ("10x0", "10x8-crop12_0_387_300-q80.jpg", (10, 8)),  # 7.5 to even
            ("fit-in/200x200", "200x150-q80.jpg", (200, 150)),
            ("fit-in/800x800", "full_size-q80.jpg", (400, 300)),
            ("fit-in/6x6", "6x5-q80.jpg", (6, 5)),  # 4.5 half up
            ("full-fit-in/200x200", "267x200-q80.jpg", (267, 200)),
            ("adaptive-fit-in/200x300", "267x200-q80.jpg", (267, 200)),
            ("adaptive-full-fit-in/200x300", "300x225-q80.jpg", (300, 225)),
            ("10x10:9000x9000", "full_size-crop10_10_400_300-q80.jpg", (390, 290)),
            ("300x0:100x100", "full_size-q80.jpg", (400, 300)),  # an empty crop
            ("-200x-100", "200x100-crop0_50_400_250-r180-q80.jpg", (200, 100)),
            ("smart", "full_size-q80.jpg", (400, 300)),
            ("400x300/smart", "full_size-q80.jpg", (400, 300)),
        ]:
            self.assertEqual(planned(f"/unsafe/{url}/a.jpg"), (name, size), url)

    def test_what_thumbor_fails_on_is_a_400(self) -> None:
        for url in ("origx0", "0xorig", "origx100/filters:no_upscale()"):
            with self.assertRaises(InvalidRequest):
                planned(f"/unsafe/{url}/a.jpg")


_side = st.one_of(st.just("0"), st.just("orig"), st.integers(1, 3000).map(str))
_filters = st.lists(
    st.sampled_from([
        "quality(50)", "format(png)", "format(webp)", "brightness(-30)",
        "contrast(20)", "saturation(0.5)", "grayscale()", "blur(3)",
        "round_corner(10,0,0,0)", "fill(red)", "background_color(00ff00)",
        "no_upscale()", "upscale()", "proportion(0.5)", "rotate(90)",
        "rotate(180)", "focal(10x10:50x50)", "max_bytes(5000)", "noise(5)",
    ]),
    max_size=4,
)  # fmt: skip


@st.composite
def thumbor_urls(draw: st.DrawFn) -> tuple[str, Source]:
    width, height = draw(st.integers(1, 2000)), draw(st.integers(1, 2000))
    parts = ["unsafe"]
    if draw(st.booleans()):
        left, top = draw(st.integers(0, width)), draw(st.integers(0, height))
        right, bottom = (
            draw(st.integers(0, 2 * width)),
            draw(st.integers(0, 2 * height)),
        )
        parts.append(f"{left}x{top}:{right}x{bottom}")
    fit = draw(st.sampled_from(["", "fit-in", "full-fit-in", "adaptive-fit-in",
                                "adaptive-full-fit-in"]))  # fmt: skip
    if fit:
        parts.append(fit)
    w, h = draw(_side), draw(_side)
    if fit and w in ("0", "orig") and h in ("0", "orig"):
        w = "100"
    parts.append(
        f"{draw(st.sampled_from(['', '-']))}{w}x{draw(st.sampled_from(['', '-']))}{h}"
    )
    parts += draw(
        st.lists(st.sampled_from(["left", "right", "top", "bottom"]), max_size=1)
    )
    filters = draw(_filters)
    if filters:
        parts.append("filters:" + ":".join(filters))
    parts.append("a.jpg")
    return "/" + "/".join(parts), Source(width, height, "image/jpeg")


class PlanPropertyTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(thumbor_urls())
    def test_every_url_makes_a_variant_of_the_planned_size(
        self, drawn: tuple[str, Source]
    ) -> None:
        url, source = drawn
        try:
            result = plan(parse(url), source, Settings())
        except InvalidRequest as e:
            # origx0, orig with no_upscale(), or a size past any this server makes
            self.assertRegex(str(e), "orig|--maximum_width")
            return
        try:
            variant = RULES.canonical(result.name)
        except InvalidRequest as e:
            # Only sizes past the largest this server makes.
            self.assertRegex(str(e), "maximum|at most|larger than")
            return
        assert variant is not None
        made = geometry.plan(variant, source.width, source.height)
        self.assertEqual(made.canvas or made.size, (result.width, result.height), url)
        self.assertTrue(variant.name == RULES.canonical(variant.name).name)  # type: ignore[union-attr]


class HostileArgumentsTests(SynchronousTestCase):
    """Numbers no filter can use are ignored as thumbor ignores them, or
    clamped: never an overflow, never a name the grammar refuses."""

    def test_numbers_past_any_use(self) -> None:
        huge = "9" * 5000
        for filters in (
            f"focal({huge}x1:{huge}x2)", f"focal(1x1:{'9' * 300}x{'9' * 300})",
            "saturation(1e400)", "saturation(nan)", "saturation(-1e400)",
            "blur(5,1e400)", "blur(5,nan)", f"blur({huge})", "proportion(1e-400)",
            f"rotate({huge})", f"quality({huge})", "max_bytes(999999999)",
            f"round_corner({huge},1,2,3)", "round_corner(999999999,1,2,3)",
            f"brightness(-{huge})", "contrast(999999999):brightness(5)",
        ):  # fmt: skip
            _, size = planned(f"/unsafe/100x50/filters:{filters}/a.jpg")
            self.assertEqual(size, (100, 50), filters)
