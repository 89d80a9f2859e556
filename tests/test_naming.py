import os
import re
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from twisted.trial.unittest import SynchronousTestCase

from imageserver import config, formats
from imageserver.access import signing
from imageserver.config import Config
from imageserver.errors import InvalidRequest, NotCanonical, NotFound
from imageserver.imaging import geometry
from imageserver.naming import (
    AUTO,
    GRAVITIES,
    QUALITY_LEVELS,
    Fit,
    ImageId,
    Variant,
    VariantRules,
    ascii_digits,
    check_file_name,
    check_namespace,
    is_file_name,
    original_digest,
)
from imageserver.negotiation import accepted_types
from tests import CHECKOUT_DIR

RULES = VariantRules(frozenset({"jpg", "png", "webp"}), 75, 1000)
HASH = "6e0072682e66287b662827da75b244a3"


class OriginalDigestTests(SynchronousTestCase):
    def test_an_originals_key_spells_its_md5(self) -> None:
        self.assertEqual(original_digest(ImageId("p", HASH).key("original")), HASH)

    def test_other_keys_have_none(self) -> None:
        for key in (
            ImageId("p", HASH).key("w200.jpg"),
            ImageId("p", HASH).key("info.json"),
            "p/6e0/072/682/original",
            "original",
            "p/batch/abc/original",
        ):
            self.assertIsNone(original_digest(key), key)


class VariantNameTests(SynchronousTestCase):
    def test_width(self) -> None:
        self.assertEqual(
            RULES.parse("w200.jpg"), Variant("w200.jpg", Fit.WIDTH, 200, 0, 75, "jpg")
        )

    def test_square(self) -> None:
        self.assertEqual(
            RULES.parse("x200.png"), Variant("x200.png", Fit.FILL, 200, 200, 0, "png")
        )

    def test_rectangle(self) -> None:
        self.assertEqual(
            RULES.parse("300x200.webp"),
            Variant("300x200.webp", Fit.FILL, 300, 200, 75, "webp"),
        )

    def test_full_size(self) -> None:
        self.assertEqual(
            RULES.parse("full_size.webp"),
            Variant("full_size.webp", Fit.FULL, 0, 0, 75, "webp"),
        )

    def test_quality(self) -> None:
        for name in (
            "w200-q30.jpg",
            "x200-q30.jpg",
            "30x20-q30.jpg",
            "full_size-q30.jpg",
        ):
            variant = RULES.parse(name)
            assert variant is not None
            self.assertEqual(variant.quality, 30, name)
        self.assertEqual(RULES.parse("x1-q1.jpg").quality, 1)  # type: ignore[union-attr]
        self.assertEqual(RULES.parse("x1-q100.jpg").quality, 100)  # type: ignore[union-attr]

    def test_content_type(self) -> None:
        self.assertEqual(RULES.parse("w1.jpg").content_type, "image/jpeg")  # type: ignore[union-attr]
        self.assertEqual(RULES.parse("w1.webp").content_type, "image/webp")  # type: ignore[union-attr]

    def test_other_names_are_not_variants(self) -> None:
        for name in (
            "info.json",
            "original",
            "my-file.png",
            "w200",
            "x.jpg",
            "w-1.jpg",
            "full.jpg",
            "w200.q30.jpg",
            "W200.jpg",
            "w200.jpg.exe",
        ):
            self.assertIsNone(RULES.parse(name), name)

    def test_bad_numbers_are_400(self) -> None:
        for name in (
            "w0.jpg",
            "x0.jpg",
            "0x10.jpg",
            "10x0.jpg",
            "w200-q0.jpg",
            "w200-q101.jpg",
            "w0200.jpg",
            "w200-q075.jpg",
            "w99999999999.jpg",
            "w1001.jpg",
            "1001x10.jpg",
            "10x1001.jpg",
            "x1001.jpg",
        ):
            with self.assertRaises(InvalidRequest, msg=name):
                RULES.parse(name)

    def test_maximum_width_is_allowed(self) -> None:
        self.assertEqual(RULES.parse("x1000.jpg").width, 1000)  # type: ignore[union-attr]
        self.assertEqual(RULES.parse("1000x999.jpg").width, 1000)  # type: ignore[union-attr]

    def test_extension_not_served_is_404(self) -> None:
        for name in ("w200.gif", "w200.bmp", "w200.JPG", "full_size.exe"):
            with self.assertRaises(NotFound, msg=name):
                RULES.parse(name)

    def test_outputs(self) -> None:
        variants = RULES.parse_outputs(" x300.jpg,x300.webp,,x300.jpg ")
        self.assertEqual([v.name for v in variants], ["x300.jpg", "x300.webp"])
        self.assertEqual(RULES.parse_outputs(None), ())
        self.assertEqual(RULES.parse_outputs(""), ())

    def test_outputs_must_all_be_variants(self) -> None:
        for value in (
            "x300.jpg,info.json",
            "w0.jpg",
            "x300.gif",
            ",".join(f"w{n}.jpg" for n in range(1, 40)),
        ):
            with self.assertRaises(InvalidRequest, msg=value):
                RULES.parse_outputs(value)


class PathTests(SynchronousTestCase):
    def test_partitioned_folder(self) -> None:
        image = ImageId("p", HASH)
        self.assertEqual(image.folder, "p/6e0/072/682/e66287b662827da75b244a3")
        self.assertEqual(
            image.key("w200.jpg"), "p/6e0/072/682/e66287b662827da75b244a3/w200.jpg"
        )

    def test_from_folder(self) -> None:
        image = ImageId.from_folder("p/6e0/072/682/e66287b662827da75b244a3")
        self.assertEqual(image, ImageId("p", HASH))
        self.assertEqual(ImageId.from_folder(image.folder), image)

    def test_bad_paths_are_404(self) -> None:
        for parts in (
            ("P", "6e0", "072", "682", "e66287b662827da75b244a3"),
            ("..", "6e0", "072", "682", "e66287b662827da75b244a3"),
            ("p", "6e0", "072", "68", "2e66287b662827da75b244a3"),
            ("p", "6E0", "072", "682", "e66287b662827da75b244a3"),
            ("p", "..", "072", "682", "e66287b662827da75b244a3"),
            ("p", "6e0", "072", "682", "e66287b662827da75b244a"),
        ):
            with self.assertRaises(NotFound, msg=parts):
                ImageId.from_folder("/".join(parts))

    def test_namespaces(self) -> None:
        for ok in ("p", "avatars_2", "0b5e4c1a-8f7e-4f3a-9a53-0c1b3a2d1e4f"):
            self.assertEqual(check_namespace(ok), ok)
        for bad in ("", "P", "a/b", "a.b", "..", "a" * 129, "é"):
            with self.assertRaises(NotFound, msg=bad):
                check_namespace(bad)


class FileNameTests(SynchronousTestCase):
    def test_client_file_names(self) -> None:
        for ok in ("notes.txt", "my-file.png", "a", "original.png", "doc_1.pdf"):
            self.assertEqual(check_file_name(ok), ok)
            self.assertTrue(is_file_name(ok))

    def test_unsafe_or_reserved_names_are_refused(self) -> None:
        for bad in (
            "",
            ".hidden",
            "..",
            "a..b",
            "a/b",
            "a b",
            "info.json",
            "original",
            "process",
            "w200.jpg",
            "x10-q5.png",
            "full_size.gif",
            "w200.jpg.quality",
            # Read as variants (of an extension not served): never a file's.
            "w200-qgood.quality",
            "w200.txt",
            "a" * 200,
        ):
            with self.assertRaises(InvalidRequest, msg=bad):
                check_file_name(bad)
            self.assertFalse(is_file_name(bad), bad)


V2 = VariantRules(frozenset({"jpg", "png", "webp", "auto"}), 75, 1000)


def canonical_of(name: str) -> str:
    """The name ``name``'s output is stored under."""
    variant = V2.canonical(name)
    assert variant is not None
    return variant.name


class QualityLevelTests(SynchronousTestCase):
    """``-qhigh``, ``-qgood``, ``-qeco`` in place of ``-qN``."""

    def test_each_level_is_a_name_of_its_own(self) -> None:
        for level in QUALITY_LEVELS:
            for fmt in ("jpg", "webp", "auto"):
                variant = V2.parse(f"w200-q{level}.{fmt}")
                assert variant is not None
                self.assertEqual(
                    (variant.level, variant.quality, variant.named_quality),
                    (level, 0, True),
                )
                self.assertEqual(variant.name, f"w200-q{level}.{fmt}")

    def test_auto_is_good(self) -> None:
        with self.assertRaises(NotCanonical) as caught:
            V2.parse("x100-smart-qauto@2x.jpg")
        self.assertEqual(caught.exception.canonical, "x100-smart-qgood@2x.jpg")

    def test_a_lossless_format_has_no_level(self) -> None:
        """As -qN is: folded away (a 301), and .auto's png drops it."""
        with self.assertRaises(NotCanonical) as caught:
            V2.parse("w200-qgood.png")
        self.assertEqual(caught.exception.canonical, "w200.png")
        variant = V2.parse("w200-qgood.auto")
        assert variant is not None
        self.assertEqual(V2.negotiated(variant, frozenset(), True).name, "w200.png")
        avif = V2.negotiated(variant, frozenset({"image/webp"}), True)
        self.assertEqual((avif.name, avif.level), ("w200-qgood.webp", "good"))

    def test_the_default_level(self) -> None:
        """--default_quality auto:LEVEL: names without -qN take it (under
        their own names); a -qN or another level in the name wins."""
        rules = replace(V2, default_level="eco")
        plain = rules.parse("w200.jpg")
        assert plain is not None
        self.assertEqual((plain.name, plain.level, plain.named_quality),
                         ("w200.jpg", "eco", False))  # fmt: skip
        fixed = rules.parse("w200-q50.jpg")
        assert fixed is not None
        self.assertEqual((fixed.level, fixed.quality), ("", 50))
        high = rules.parse("w200-qhigh.jpg")
        assert high is not None
        self.assertEqual(high.level, "high")
        png = rules.parse("w200.png")
        assert png is not None
        self.assertEqual(png.level, "")

    def test_with_a_byte_budget(self) -> None:
        variant = V2.parse("w200-maxbytes9000-qgood.jpg")
        assert variant is not None
        self.assertEqual((variant.level, variant.max_bytes), ("good", 9000))

    def test_the_option_is_read_from_config(self) -> None:
        for value, level, quality in (
            ("0", "", 0),
            ("60", "", 60),
            ("auto:good", "good", 0),
            ("auto:high", "high", 0),
        ):
            rules = Config(default_quality=value).rules
            self.assertEqual((rules.default_level, rules.default_quality),
                             (level, quality))  # fmt: skip
        for wrong in ("auto", "auto:best", "good", "101", "-1", "060", "٦٠", "auto:"):
            with self.assertRaises(ValueError, msg=wrong) as caught:
                Config(default_quality=wrong)
            self.assertIn("auto:LEVEL with LEVEL one of high, good, eco",
                          str(caught.exception))  # fmt: skip


class GrammarV2Tests(SynchronousTestCase):
    def test_every_option(self) -> None:
        v = V2.parse("x400-pad00ff00-noup-trim-r90-flip-blur4-sharp-gray-q60.webp")
        assert v is not None
        self.assertEqual(
            (v.fit, v.width, v.height, v.quality, v.pad, v.noup, v.trim),
            (Fit.PAD, 400, 400, 60, (0, 255, 0, 255), True, True),
        )
        self.assertEqual(
            (v.rotate, v.flip, v.flop, v.blur, v.sharp, v.gray),
            (90, True, False, 4, True, True),
        )
        for name, field, value in (
            ("h200.jpg", "fit", Fit.HEIGHT),
            ("x200-fit.jpg", "fit", Fit.FIT),
            ("x200-gse.jpg", "gravity", "gse"),
            ("x200-fp10_90.jpg", "focus", (10, 90)),
            ("x200-smart.jpg", "smart", True),
            ("x200-faces.jpg", "faces", True),
            ("300x200-pad.jpg", "pad", None),
            ("300x200-pad80808080.png", "pad", (128, 128, 128, 128)),
        ):
            self.assertEqual(getattr(V2.parse(name), field), value, name)

    def test_seed_names_keep_their_meaning(self) -> None:
        for name, fit, size in (
            ("w200.jpg", Fit.WIDTH, (200, 0)),
            ("x200.jpg", Fit.FILL, (200, 200)),
            ("300x200-q30.jpg", Fit.FILL, (300, 200)),
            ("w200-q75.jpg", Fit.WIDTH, (200, 0)),
            ("full_size.webp", Fit.FULL, (0, 0)),
        ):
            v = V2.parse(name)
            assert v is not None
            self.assertEqual((v.name, v.fit, (v.width, v.height)), (name, fit, size))

    def test_other_spellings_name_the_canonical_one(self) -> None:
        for name, canonical in (
            ("x200-gray-fit.jpg", "x200-fit-gray.jpg"),
            ("x200-q50-fit.jpg", "x200-fit-q50.jpg"),
            ("w200@1x.jpg", "w200.jpg"),
            ("x200-fp50_50.jpg", "x200.jpg"),
            ("x200-padFF0000.jpg", "x200-padff0000.jpg"),
            ("x200-padffffff.jpg", "x200-pad.jpg"),
            ("x200-padffffffff.jpg", "x200-pad.jpg"),
            ("x200-pad00000000.png", "x200-pad.png"),
            ("x200-padff0000ff.png", "x200-padff0000.png"),
            ("x200-flop-flip.jpg", "x200-r180.jpg"),
            # Issue 22: spellings of one output, each stored apart before.
            ("200x200.jpg", "x200.jpg"),
            ("100x100-fit@2x.jpg", "x100-fit@2x.jpg"),
            ("x100-q50-gn@2x.jpg", "x100-gn-q50@2x.jpg"),
            ("full_size@2x.jpg", "full_size.jpg"),
            ("full_size@4x.png", "full_size.png"),
            ("full_size-noup.jpg", "full_size.jpg"),
            ("w200-q40.png", "w200.png"),
            ("w200-gray-q40.png", "w200-gray.png"),
            ("full_size-q100.png", "full_size.png"),
            ("x200-flip-flop.jpg", "x200-r180.jpg"),
            ("x200-r90-flip-flop.jpg", "x200-r270.jpg"),
            ("x200-r180-flip.jpg", "x200-flop.jpg"),
            ("x200-r270-flop.jpg", "x200-r90-flip.jpg"),
            ("x200-fp50_0.jpg", "x200-gn.jpg"),
            ("x200-fp0_100.jpg", "x200-gsw.jpg"),
            ("x200-fp100_50.jpg", "x200-ge.jpg"),
            ("x200-pad-gray-q30.png", "x200-pad-gray.png"),
            ("w200-r90-trim.jpg", "w200-trim-r90.jpg"),
            # Issue 26: what leaves the output as it is goes, one order.
            ("w200-brightness0.jpg", "w200.jpg"),
            ("w200-contrastm0.jpg", "w200.jpg"),
            ("w200-cropf0_0_10000_10000.jpg", "w200.jpg"),
            ("w200-bgffffff.jpg", "w200.jpg"),
            ("w200-bgFF8800.png", "w200-bgff8800.png"),
            ("w200-trim-crop0_0_10_10.jpg", "w200-crop0_0_10_10-trim.jpg"),
            ("w200-circle-gray.png", "w200-gray-circle.png"),
            ("w200-gray-saturation10.jpg", "w200-saturation10-gray.jpg"),
            ("w200-bg000000-pixelate4.png", "w200-pixelate4-bg000000.png"),
            ("x100-round10@1x.png", "x100-round10.png"),
        ):
            with self.assertRaises(NotCanonical, msg=name) as caught:
                V2.parse(name)
            self.assertEqual(caught.exception.canonical, canonical, name)
            self.assertEqual(V2.parse(canonical), V2.canonical(name))
        # auto has no default pad colour of its own: white stays spelled.
        self.assertEqual(V2.parse("x200-padffffff.auto").name, "x200-padffffff.auto")  # type: ignore[union-attr]

    def test_wrong_names_are_400s_that_name_the_option(self) -> None:
        for name, words in (
            ("w200-fit.jpg", "fit applies only to xN and WxH sizes"),
            ("h200-pad.jpg", "pad applies only to xN and WxH sizes"),
            ("x200-fit-gn.jpg", "gn applies only to cover crops"),
            ("w200-smart.jpg", "smart applies only to cover crops"),
            ("x200-fit-faces.jpg", "faces applies only to cover crops"),
            ("x200-smart-faces.jpg", "only one of a gravity, fp, smart and faces"),
            ("x200-faces-fp10_10.jpg", "only one of a gravity, fp, smart and faces"),
            ("x200-pad-fp10_10.jpg", "fp10_10 applies only to cover crops"),
            ("full_size-gs.jpg", "gs applies only to cover crops"),
            ("x200-fit-pad.jpg", "fit and pad cannot be used together"),
            ("x200-gn-smart.jpg", "only one of a gravity, fp, smart and faces"),
            ("x200-gn-gs.jpg", "only one of a gravity, fp, smart and faces"),
            ("x200-gray-gray.jpg", "gray is given twice"),
            ("x200-r90-r180.jpg", "a rotation is given twice"),
            ("x200-q10-q20.jpg", "the quality is given twice"),
            ("x200-foo.jpg", "unknown option 'foo'"),
            ("w200-grey.jpg", "unknown option 'grey' (did you mean 'gray'?)"),
            ("x200-shrap.jpg", "unknown option 'shrap' (did you mean 'sharp'?)"),
            ("x200-r45.jpg", "unknown option 'r45'"),
            ("x200-padfff.jpg", "unknown option 'padfff'"),
            ("x200-fp101_5.jpg", "a focal point is 0 to 100 per cent"),
            ("x200-fp05_5.jpg", "'05' is not a plain number"),
            ("x200-blur0.jpg", "blur must be at least 1"),
            ("x200-blur101.jpg", "blur must be between 1 and 100"),
            ("w200@5x.jpg", "the density must be 1x to 4x"),
            ("w200@0x.jpg", "density must be at least 1"),
            ("w600@2x.jpg", "@2x makes it 1200: give at most 500"),
            ("h0.jpg", "height must be at least 1"),
            ("w200-crop10_0_10_5.jpg", "right above left and bottom above top"),
            ("w200-crop0_9_10_5.jpg", "right above left and bottom above top"),
            ("w200-cropf0_0_10001_5.jpg", "0 to 10000"),
            ("w200-crop01_0_10_5.jpg", "'01' is not a plain number"),
            ("w200-crop0_0_10_5-cropf0_0_5_5.jpg", "a crop box is given twice"),
            ("w200-brightness101.jpg", "brightness must be between m100 and 100"),
            ("w200-contrastm101.jpg", "contrast must be between m100 and 100"),
            ("w200-saturation5-saturationm5.jpg", "saturation is given twice"),
            ("w200-round4-circle.jpg", "only one of round and circle"),
            ("w200-round0.jpg", "round must be at least 1"),
            ("w200-pixelate1.jpg", "pixelate must be between 2 and 1000"),
            ("w200-pixelate1001.jpg", "pixelate must be between 2 and 1000"),
            ("w200-bgfff.jpg", "unknown option 'bgfff'"),
            ("w200-bg00000000.jpg", "unknown option 'bg00000000'"),
            ("w200-brightnes20.jpg", "(did you mean 'brightness'?)"),
            ("w200-textknauyri_s_0.jpg", "a text's size must be at least 1"),
            ("w200-textknauyri_s_101.jpg", "a text's size is 1 to 100"),
            ("w200-textknauyri_s01.jpg", "'01' is not a plain number"),
            ("w200-textea.jpg", "not only spaces"),
            ("w200-textihbkaqq.jpg", "U+00A0 (NO-BREAK SPACE) is not one"),
            ("w200-textknauyri_tile.jpg", "PLACE one of c, n, ne, e, se, s, sw, w, nw"),
            ("w200-wmlogo_q.jpg", "(a wm option is wm + a watermark's name"),
            ("w200-maxbytes0.jpg", "must be at least 1"),
            ("w200-maxbytes123456789.jpg", "is not a plain number"),
            ("w200-qbest.jpg", "qN (1-100) or a level, qhigh, qgood, qeco"),
            ("w200-q50-qgood.jpg", "the quality is given twice"),
            ("w200-qgood-qeco.jpg", "the quality is given twice"),
            ("w200-qGood.jpg", "unknown quality 'qGood': a quality is qN (1-100)"),
            ("w200-q.jpg", "unknown quality 'q': a quality is qN (1-100)"),
            # With a density, what was given and what may be.
            ("x100-blur60@2x.jpg", "@2x makes it 120: give at most 50"),
            ("w10-pixelate300@4x.jpg", "@4x makes it 1200: give at most 250"),
            ("full_size-round999999@2x.jpg", "round is at most 999999 output"),
            ("full_size-textknauyri_s500000@2x.jpg", "give at most 499999"),
        ):
            with self.assertRaises(InvalidRequest, msg=name) as caught:
                V2.parse(name)
            self.assertIn(words, str(caught.exception), name)
            # Every message names the variant it is about.
            self.assertIn(repr(name), str(caught.exception), name)

    def test_a_density_is_served_under_the_name_it_multiplies_to(self) -> None:
        for name, stored in (
            ("w200@3x.jpg", "w600.jpg"), ("x100@2x.jpg", "x200.jpg"),
            ("x50@4x.jpg", "x200.jpg"), ("x100-fit@2x.jpg", "x200-fit.jpg"),
            ("x300-smart@2x.webp", "x600-smart.webp"),
            ("w1-noup@2x.png", "w2-noup.png"),
            ("x100-gn-q50@2x.jpg", "x200-gn-q50.jpg"),
            ("30x20-pad@3x.auto", "90x60-pad.auto"),
            ("x100-round10@2x.png", "x200-round20.png"),
            ("w50-circle-pixelate4@2x.png", "w100-circle-pixelate8.png"),
            ("x50-crop0_0_20_20@2x.png", "x100-crop0_0_20_20.png"),
        ):  # fmt: skip
            variant = V2.parse(name)  # no NotCanonical: served, not redirected
            self.assertEqual(variant, V2.parse(stored), name)

    def test_density_multiplies_every_pixel_number(self) -> None:
        for name, double in (
            ("w100@2x.jpg", "w200.jpg"), ("h50@2x.jpg", "h100.jpg"),
            ("x25-pad@4x.png", "x100-pad.png"), ("30x20-gn@3x.jpg", "90x60-gn.jpg"),
            # Past its bound once multiplied, folded within it: not a 400.
            ("x100-pixelate501@2x.jpg", "x200-pixelate200.jpg"),
            ("x100-round500000@2x.jpg", "x200-circle.jpg"),
        ):  # fmt: skip
            self.assertEqual(canonical_of(name), double)

    def test_outputs_take_v2_names_and_refuse_other_spellings(self) -> None:
        self.assertEqual(
            [v.name for v in V2.parse_outputs("x300-smart.jpg,w400.webp")],
            ["x300-smart.jpg", "w400.webp"],
        )
        self.assertEqual(
            [v.name for v in V2.parse_outputs("w200@2x.webp")], ["w400.webp"]
        )
        with self.assertRaises(InvalidRequest) as caught:
            V2.parse_outputs("x300-gray-fit.jpg")
        self.assertEqual(
            str(caught.exception),
            "output 'x300-gray-fit.jpg' is spelled 'x300-fit-gray.jpg'",
        )

    @given(
        st.sampled_from(["w120", "h80", "x64", "30x20", "full_size"]),
        st.lists(
            st.sampled_from([
                "fit", "pad", "pad10ff2080", "padFFEEDD", "noup", "gn", "gse", "smart",
                "faces", "fp20_70", "fp50_50", "trim", "r90", "r180", "flip", "flop",
                "blur3", "sharp", "gray", "q40", "crop2_4_40_30",
                "cropf0_0_10000_10000", "cropf100_0_9000_10000", "brightness20",
                "brightnessm20", "brightness0", "contrastm100", "saturation5", "round6",
                "circle", "pixelate4", "bgffffff", "bgFF8800", "pixelbox1_1_9_9",
                "blurbox0_0_30_20", "pixelbox0_0_4_4", "maxbytes5000", "maxbytes1",
                "qgood", "qauto", "qeco",
            ]),
            max_size=6,
            unique=True,
        ),
        st.sampled_from(["", "@1x", "@2x", "@3x"]),
        st.sampled_from(["jpg", "png", "auto"]),
    )  # fmt: skip
    def test_any_spelling_has_one_canonical_name(
        self, size: str, options: list[str], dpr: str, ext: str
    ) -> None:
        name = size + "".join(f"-{o}" for o in options) + dpr + f".{ext}"
        try:
            canonical = canonical_of(name)
        except InvalidRequest:
            return  # a combination the grammar refuses, said with a 400
        variant = V2.parse(canonical)
        assert variant is not None
        self.assertEqual(variant.name, canonical)
        # Same meaning: parsing either spelling describes the same output.
        try:
            again = V2.parse(name)
        except NotCanonical as e:
            # Redirected to a name that is served as it is, for that output.
            self.assertEqual(V2.parse(e.canonical), variant)
        else:
            self.assertEqual(again, variant)


# Issue 22: names that are one output. The model below says what a name means
# from the parts it was built from, without the canonicaliser: the pixels of
# its turns and mirrors (Pillow on a 3x2 grid), its geometry on sources of
# several shapes (geometry.plan), what its encoder is given, its other options.
SIZES = {  # spelling -> (fit, width, height), before the density
    "w2": (Fit.WIDTH, 2, 0), "w4": (Fit.WIDTH, 4, 0), "h4": (Fit.HEIGHT, 0, 4),
    "x2": (Fit.FILL, 2, 2), "2x2": (Fit.FILL, 2, 2), "x4": (Fit.FILL, 4, 4),
    "4x4": (Fit.FILL, 4, 4), "4x2": (Fit.FILL, 4, 2), "2x1": (Fit.FILL, 2, 1),
    "w1": (Fit.WIDTH, 1, 0), "x1": (Fit.FILL, 1, 1), "1x1": (Fit.FILL, 1, 1),
    "1x4": (Fit.FILL, 1, 4), "full_size": (Fit.FULL, 0, 0),
}  # fmt: skip
BOX = ["", "fit", "pad", "pad00000000", "padffffff", "pad336699"]
PLACES = ["", "gn", "gse", "gw", "fp50_0", "fp0_100", "fp100_50", "fp50_50",
          "fp20_70", "smart", "faces"]  # fmt: skip
TURNS = [(r, i, o) for r in (0, 90, 180, 270) for i in (0, 1) for o in (0, 1)]
QUALITIES = ["", "q40", "q100", "qgood", "qauto", "qhigh"]
EXTS = ["png", "jpg", "webp", "gif", "auto"]
DENSITIES = ["", "@1x", "@2x", "@4x"]
SOURCES = [(9, 4), (4, 9), (5, 5), (1, 1), (2, 1), (1, 2), (300, 200), (7, 300),
           (300, 7), (1, 50), (50, 1)]  # fmt: skip
EQ_RULES = VariantRules(frozenset(EXTS), 0, 1000)


@dataclass(frozen=True)
class Parts:
    size: str
    box: str
    noup: bool
    place: str
    turn: tuple[int, int, int]
    gray: bool
    quality: str
    density: str
    ext: str

    @property
    def name(self) -> str:
        r, flip, flop = self.turn
        options = [self.box, "noup" if self.noup else "", self.place,
                   f"r{r}" if r else "", "flip" if flip else "", "flop" if flop else "",
                   "gray" if self.gray else "", self.quality]  # fmt: skip
        return (self.size + "".join(f"-{o}" for o in options if o) + self.density
                + f".{self.ext}")  # fmt: skip


def _turned(r: int, flip: int, flop: int) -> bytes:
    grid = Image.frombytes("L", (3, 2), bytes(range(6)))
    for _ in range(r // 90):
        grid = grid.transpose(Image.Transpose.ROTATE_270)  # a quarter clockwise
    if flip:
        grid = grid.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if flop:
        grid = grid.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return grid.size[0].to_bytes() + grid.tobytes()


def effect(p: Parts) -> object:
    """What the output of ``p.name`` is made of, from its parts."""
    fit, width, height = SIZES[p.size]
    dpr = int(p.density[1:-1]) if p.density else 1
    pad: tuple[int, int, int, int] | None = None
    if p.box == "fit":
        fit = Fit.FIT
    elif p.box:
        fit = Fit.PAD
        if p.box != "pad":
            pad = bytes.fromhex(p.box[3:]).ljust(4, b"\xff")  # type: ignore[assignment]
            pad = tuple(pad)  # type: ignore[arg-type,assignment]
    place: dict[str, Any] = {}
    if p.place in GRAVITIES:
        place["gravity"] = p.place
    elif p.place in ("smart", "faces"):
        place[p.place] = True
    elif p.place and p.place != "fp50_50":  # the centre, as docs/api.md says
        x, y = p.place[2:].split("_")
        place["focus"] = (int(x), int(y))
    r, flip, flop = p.turn
    model = Variant("", fit, width * dpr, height * dpr, 0, p.ext, pad=pad,
                    noup=p.noup, rotate=r, flip=bool(flip), flop=bool(flop),
                    **place)  # fmt: skip
    plans = []
    for w, h in SOURCES:
        plan = geometry.plan(model, w, h)
        plans.append((plan.region, plan.box, plan.size, plan.canvas, plan.offset))
    # docs/api.md: qauto is qgood.
    spelled = "qgood" if p.quality == "qauto" else p.quality
    level = spelled[1:] if spelled[1:].isalpha() else ""
    if p.ext == AUTO:
        encoder: object = (spelled, pad)
    else:
        row = formats.output(p.ext)
        # What the encoder is given (None: --default_quality decides).
        number = int(spelled[1:]) if spelled and not level else None
        options = row.save_options(number)
        given = tuple(sorted(options.items()))
        default = tuple(sorted(row.save_options(None).items()))
        quality: object = None if given == default or not number else given
        if level and row.lossy:
            quality = level  # chosen per output by the level
        canvas = model.pad_colour(row.alpha) if fit is Fit.PAD else None
        if canvas is not None and not row.alpha and canvas[3] == 0:
            canvas = (255, 255, 255, 255)  # flattened on white: nothing shows
        encoder = (row.content_type, row.pillow, row.encoder, quality, canvas)
    turned = _turned(r, flip, flop)
    finder = p.place if p.place in ("smart", "faces") else None
    return (encoder, turned, tuple(plans), p.gray, finder)


def outcome(name: str) -> str:
    """The name ``name``'s output is stored under, or the refusal's kind;
    asserts that a request of ``name`` is served that output, as it is or
    by one redirect to a name served as it is."""
    try:
        variant = EQ_RULES.canonical(name)
    except InvalidRequest:
        return "400"
    assert variant is not None
    try:
        served = EQ_RULES.parse(name)
    except NotCanonical as e:
        served = EQ_RULES.parse(e.canonical)
    assert served == variant, (name, served, variant)
    return variant.name


@st.composite
def parts(draw: st.DrawFn) -> Parts:
    return Parts(
        draw(st.sampled_from(sorted(SIZES))), draw(st.sampled_from(BOX)),
        draw(st.booleans()), draw(st.sampled_from(PLACES)),
        draw(st.sampled_from(TURNS)), draw(st.booleans()),
        draw(st.sampled_from(QUALITIES)), draw(st.sampled_from(DENSITIES)),
        draw(st.sampled_from(EXTS)),
    )  # fmt: skip


class OneNamePerOutputTests(SynchronousTestCase):
    """Two names whose outputs are the same by construction have one
    canonical name; two names with different outputs never share one."""

    @settings(max_examples=200, deadline=None)
    @given(parts())
    def test_names_of_one_output_have_one_canonical_name(self, base: Parts) -> None:
        # Every spelling that differs from ``base`` in one part, so that
        # names of one output are drawn together often.
        family = {base}
        for field_name, values in (
            ("size", sorted(SIZES)), ("box", BOX), ("noup", [False, True]),
            ("place", PLACES), ("turn", TURNS), ("quality", QUALITIES),
            ("density", DENSITIES), ("ext", EXTS),
        ):  # fmt: skip
            family.update(replace(base, **{field_name: v}) for v in values)
        groups: dict[str, set[object]] = {}
        by_effect: dict[object, set[str]] = {}
        for member in family:
            canonical = outcome(member.name)
            if canonical == "400":
                continue
            self.assertTrue(canonical.isascii(), canonical)
            self.assertEqual(outcome(canonical), canonical)
            groups.setdefault(canonical, set()).add(effect(member))
            by_effect.setdefault(effect(member), set()).add(canonical)
        for canonical, effects in groups.items():
            self.assertEqual(len(effects), 1, f"{canonical} names different outputs")
        for names in by_effect.values():
            self.assertEqual(len(names), 1, f"one output has names {sorted(names)}")


DIGITS = st.characters(categories=["Nd"])


class AsciiNumberTests(SynchronousTestCase):
    @given(
        st.sampled_from(["w{}.jpg", "x{}.png", "{}x20.jpg", "w20-q{}.jpg",
                         "x20-fp{}_5.jpg", "w20-blur{}.jpg", "w20@{}x.jpg"]),
        st.text(DIGITS, min_size=1, max_size=8),
    )  # fmt: skip
    def test_numbers_are_ascii_digits(self, pattern: str, digits: str) -> None:
        """``w\u0662\u0660\u0660.jpg`` is no name of the server's (it was one
        more spelling of ``w200.jpg``); an accepted name is ASCII throughout."""
        name = pattern.format(digits)
        try:
            variant = V2.canonical(name)
        except InvalidRequest:
            self.assertTrue(digits.isascii(), name)
            return
        if variant is None:
            self.assertFalse(digits.isascii(), name)
            self.assertFalse(is_file_name(name), name)
        else:
            self.assertTrue(digits.isascii(), name)
            self.assertTrue(variant.name.isascii(), variant.name)

    def test_every_number_has_a_bounded_length(self) -> None:
        """Over 4,300 digits ``int`` raises ValueError: a 400 first, saying why."""
        for pattern in ("w{}.jpg", "{}x2.jpg", "x2-fp{}_5.jpg", "x2-fp5_{}.jpg",
                        "w2-q{}.jpg", "w2-blur{}.jpg", "w2@{}x.jpg"):  # fmt: skip
            for digits in ("1" * 7, "1" * 4301, "9" * 100_000):
                name = pattern.format(digits)
                with self.assertRaises(InvalidRequest, msg=name[:40]) as caught:
                    V2.parse(name)
                self.assertIn("digits 0-9", str(caught.exception))
                self.assertLess(len(str(caught.exception)), 200)
        with self.assertRaises(InvalidRequest):
            V2.parse_outputs("x2-fp" + "1" * 5000 + "_5.jpg")


class NumberReadersTests(SynchronousTestCase):
    """Every reader of a number a client or an operator writes takes ASCII
    digits of a bounded length (issue 22): ``str.isdigit`` and ``int`` take
    other scripts' digits (``\\u00b2`` passes isdigit and fails int), and
    ``int`` raises past 4,300 digits."""

    BAD = ("\u00b2", "\u0662", "\uff12", "1_0", "1" * 5000, "nan", "inf", "")

    def test_ascii_digits(self) -> None:
        self.assertTrue(ascii_digits("7000"))
        for text in (*self.BAD, " 1", "-1"):
            self.assertFalse(ascii_digits(text), text[:10])

    def test_settings(self) -> None:
        by_name = {f.name: f for f in config.fields()}
        self.assertEqual(config.parse(by_name["maximum_width"], "2000"), 2000)
        self.assertEqual(config.parse(by_name["http_timeout"], "2.5"), 2.5)
        for name in ("maximum_width", "http_timeout"):
            for text in self.BAD:
                with self.assertRaises(ValueError, msg=(name, text[:10])):
                    config.parse(by_name[name], text)

    def test_ports_and_schedulers(self) -> None:
        self.assertEqual(config._local_workers("local:\u00b2"), None)
        self.assertEqual(config._local_workers("local:2"), 2)
        self.assertTrue(Config(admin_port="7003").admin_endpoint.startswith("tcp:7003"))
        # Not a port number: Twisted's endpoint parser refuses it at start-up
        # (it was read as 7003).
        with self.assertRaises(ValueError):
            Config(admin_port="\u0667\u0660\u0660\u0663")

    def test_signed_urls_expiry(self) -> None:
        secret = b"s" * 32
        for exp in ("\u0661\u0662", "1" * 5000):
            uri = signing.sign(secret, f"/p/x?exp={exp}", None)
            self.assertEqual(
                signing.refusal([secret], uri, 0), "exp must be Unix seconds"
            )

    def test_accept_q_values(self) -> None:
        self.assertEqual(
            accepted_types(
                "image/webp;q=0.8,image/avif;q=\u0661,image/jxl;q=nan,"
                "image/png;q=inf,image/gif;q=1"
            ),
            frozenset({"image/webp", "image/gif"}),
        )

    def test_no_unicode_classes_in_the_source(self) -> None:
        """The class of the bug, closed at the source: no ``\\d``/``\\w`` in a
        pattern, no ``isdigit``/``isdecimal``/``isnumeric`` but in
        ascii_digits."""
        root = CHECKOUT_DIR
        found = []
        for folder, _, files in os.walk(os.path.join(root, "imageserver")):
            for file_name in files:
                if not file_name.endswith(".py"):
                    continue
                path = os.path.join(folder, file_name)
                with open(path) as f:
                    for number, line in enumerate(f, 1):
                        if line.lstrip().startswith("#"):
                            continue
                        if re.search(r"\\[dwDW]|\.is(digit|decimal|numeric)\(", line):
                            found.append(f"{path}:{number}: {line.strip()}")
        self.assertEqual(
            [f for f in found if "text.isdigit()" not in f or "naming.py" not in f], []
        )
