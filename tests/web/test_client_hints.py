"""Client hints (--client_hints): ``-ch`` names whose density and width the
client's Sec-CH-DPR and Sec-CH-Width choose, within --maximum_width. The
browser's side is in tests/test_browser.py."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imageserver.config import Config
from imageserver.errors import InvalidRequest, NotCanonical
from imageserver.naming import (
    DPR_HINTS,
    HINT_WIDTH_STEP,
    WIDTH_HINTS,
    hinted,
    with_hints,
)
from imageserver.negotiation import ClientHints, client_hints
from tests.support import AppHarness, decode, encode, quadrants

RULES = Config(extensions=("jpg", "png", "webp")).rules
SIZES = st.one_of(
    st.integers(1, 1000).map(lambda n: f"w{n}"),
    st.integers(1, 1000).map(lambda n: f"h{n}"),
    st.integers(1, 1000).map(lambda n: f"x{n}"),
    st.tuples(st.integers(1, 1000), st.integers(1, 1000)).map(
        lambda wh: f"{wh[0]}x{wh[1]}"
    ),
)


class NameTests(SynchronousTestCase):
    @given(
        size=SIZES,
        ext=st.sampled_from(["jpg", "png", "auto"]),
        dpr=st.one_of(st.none(), st.floats(0.1, 20)),
        width=st.one_of(st.none(), st.integers(1, 10**6)),
        maximum=st.integers(1000, 4000),
    )
    def test_every_hint_gives_a_name_within_the_maximum(
        self,
        size: str,
        ext: str,
        dpr: float | None,
        width: int | None,
        maximum: int,
    ) -> None:
        asks = hinted(f"{size}-ch.{ext}")
        assert asks is not None
        self.assertEqual(asks.base, f"{size}.{ext}")
        names = with_hints(asks, dpr, width, maximum)
        self.assertEqual(names[-1], asks.base)  # the name's own, at last
        chosen = names[0]
        rules = Config(extensions=("jpg", "png", "webp"), maximum_width=maximum).rules
        variant = rules.canonical(chosen)  # parses: a name of the grammar
        assert variant is not None
        self.assertLessEqual(max(variant.width, variant.height), maximum)
        if width is not None and size.startswith("w"):
            self.assertEqual(asks.headers, DPR_HINTS + WIDTH_HINTS)
            expected = min(-(-width // HINT_WIDTH_STEP) * HINT_WIDTH_STEP, maximum)
            self.assertEqual(chosen, f"w{expected}.{ext}")
            return
        if not size.startswith("w"):
            self.assertEqual(asks.headers, DPR_HINTS)
        if dpr is None or dpr < 1.5:
            self.assertEqual(chosen, asks.base)
        else:
            density = int(chosen.partition("@")[2].partition("x")[0] or 1)
            self.assertLessEqual(density, min(4, round(dpr + 0.001)))

    def test_examples(self) -> None:
        for name, dpr, width, chosen in (
            ("w400-ch.auto", None, None, "w400.auto"),
            ("w400-ch.auto", 2.0, None, "w400@2x.auto"),
            ("w400-ch.auto", 1.49, None, "w400.auto"),
            ("w400-ch.auto", 3.0, None, "w400@2x.auto"),  # 1200 > 1000
            ("w400-ch.auto", 2.0, 801, "w850.auto"),  # width wins, rounded up
            ("w400-ch.auto", None, 99999, "w1000.auto"),
            ("x100-smart-ch.jpg", 3.0, 640, "x100-smart@3x.jpg"),
            ("300x200-fit-ch.webp", 9.0, None, "300x200-fit@3x.webp"),
        ):
            asks = hinted(name)
            assert asks is not None
            self.assertEqual(with_hints(asks, dpr, width, 1000)[0], chosen, name)

    def test_misspellings(self) -> None:
        self.assertIsNone(hinted("w400.auto"))
        self.assertIsNone(hinted("thumb.auto"))
        with self.assertRaises(NotCanonical) as moved:
            hinted("w400-ch-q50.auto")
        self.assertEqual(moved.exception.canonical, "w400-q50-ch.auto")
        for name in ("w400-ch@2x.auto", "full_size-ch.png"):
            with self.assertRaises(InvalidRequest, msg=name):
                hinted(name)

    def test_reading_hints(self) -> None:
        for headers, hints in (
            ({}, ClientHints()),
            ({"Sec-CH-DPR": "2", "Sec-CH-Width": "640"}, ClientHints(2.0, 640)),
            ({"DPR": "1.5", "Width": "300"}, ClientHints(1.5, 300)),
            ({"Sec-CH-DPR": "3", "DPR": "1"}, ClientHints(3.0, None)),
            ({"Sec-CH-DPR": "abc", "DPR": "2"}, ClientHints(2.0, None)),
            ({"Sec-CH-DPR": "0"}, ClientHints()),
            ({"Sec-CH-DPR": "nan", "Sec-CH-Width": "inf"}, ClientHints()),
            ({"Sec-CH-Width": "\u0661\u0662"}, ClientHints()),  # Arabic digits
            ({"Sec-CH-Width": "-5"}, ClientHints()),
            ({"Sec-CH-Width": "1" * 7}, ClientHints()),
        ):
            self.assertEqual(client_hints(headers.get), hints, headers)


class AppTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.app = AppHarness(self, client_hints=True)
        self.folder = self.app.upload(encode(quadrants((800, 600))))

    def get(self, name: str, **headers: str) -> tuple[int, Any, bytes]:
        response, body = self.app.request(
            "GET",
            f"{self.folder}/{name}",
            headers={k.replace("_", "-"): v for k, v in headers.items()},
            allow_redirects=False,
        )
        return response.code, response.headers, body

    def test_hints_choose_the_stored_variant(self) -> None:
        for name, headers, stored, size in (
            ("w100-ch.png", {}, "w100.png", (100, 75)),
            ("w100-ch.png", {"Sec_CH_DPR": "2"}, "w200.png", (200, 150)),
            ("w100-ch.png", {"DPR": "3"}, "w300.png", (300, 225)),
            ("w100-ch.png", {"Sec_CH_Width": "333"}, "w350.png", (350, 263)),
            ("w100-ch.png", {"Sec_CH_Width": "5000"}, "w1000.png", (1000, 750)),
            ("x50-ch.png", {"Sec_CH_DPR": "2", "Width": "600"}, "x100.png", (100, 100)),
            ("w100-ch.auto", {"Sec_CH_DPR": "2", "Accept": "image/webp"},
             "w200.webp", (200, 150)),
            # The derived side would pass --maximum_width at 3x: 2x serves.
            ("h300-ch.png", {"Sec_CH_DPR": "3"}, "h600.png", (800, 600)),
            # What a density multiplies would pass its bound: 1x serves.
            ("w400-blur60-ch.png", {"Sec_CH_DPR": "2"}, "w400-blur60.png",
             (400, 300)),
            # What folds at the hinted size is served, not redirected to.
            ("w100-round80-ch.png", {"Sec_CH_Width": "800"}, "w800-round80.png",
             (800, 600)),
            ("w100-round80-ch.png", {}, "w100-round50.png", (100, 75)),
            ("w10-noup-ch.png", {"Sec_CH_Width": "1000"}, "w1000-noup.png",
             (800, 600)),
        ):  # fmt: skip
            code, got, body = self.get(name, **headers)
            self.assertEqual(code, 200, (name, headers))
            self.assertEqual(decode(body).size, size, (name, headers))
            self.assertEqual(
                got.getRawHeaders("Content-Location"), [f"{self.folder}/{stored}"]
            )
            varies = set(got.getRawHeaders("Vary")[0].split(", "))
            hints = {"Sec-CH-DPR", "DPR"} | (
                {"Sec-CH-Width", "Width"} if name.startswith("w") else set()
            )
            accept = {"Accept"} if name.endswith(".auto") else set()
            self.assertEqual(varies, hints | accept, name)
            self.assertEqual(
                got.getRawHeaders("Cache-Control"), ["public, max-age=3600"]
            )
            # The stored variant is the one its own name serves.
            code, _, same = self.get(stored)
            self.assertEqual((code, same), (200, body), stored)

    def test_misspelt_and_refused_names_vary_too(self) -> None:
        code, got, _ = self.get("w100-ch-q50.jpg")
        self.assertEqual(code, 301)
        self.assertEqual(
            got.getRawHeaders("Location"), [f"{self.folder}/w100-q50-ch.jpg"]
        )
        code, _, body = self.get("w100-ch@2x.jpg")
        self.assertEqual(code, 400)
        self.assertIn(b"DPR", body)

    def test_off_by_default(self) -> None:
        app = AppHarness(self)
        folder = app.upload(encode(quadrants((80, 60))))
        response, body = app.request("GET", f"{folder}/w40-ch.png")
        self.assertEqual(response.code, 400)
        self.assertIn(b"--client_hints", body)
