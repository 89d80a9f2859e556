from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imageserver.errors import InvalidRequest, NotCanonical, NotFound
from imageserver.naming import (
    Fit,
    ImageId,
    Variant,
    VariantRules,
    check_file_name,
    check_namespace,
    is_file_name,
    original_digest,
)

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
            RULES.parse("x200.png"), Variant("x200.png", Fit.FILL, 200, 200, 75, "png")
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
        self.assertEqual(RULES.parse("1000x1000.jpg").width, 1000)  # type: ignore[union-attr]

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
            "a" * 200,
        ):
            with self.assertRaises(InvalidRequest, msg=bad):
                check_file_name(bad)
            self.assertFalse(is_file_name(bad), bad)


V2 = VariantRules(frozenset({"jpg", "png", "webp", "auto"}), 75, 1000)


def canonical_of(name: str) -> str:
    try:
        variant = V2.parse(name)
    except NotCanonical as e:
        return e.canonical
    assert variant is not None
    return variant.name


class GrammarV2Tests(SynchronousTestCase):
    def test_every_option(self) -> None:
        v = V2.parse(
            "x200-pad00ff00-noup-trim-r90-flip-flop-blur4-sharp-gray-q60@2x.png"
        )
        assert v is not None
        self.assertEqual(
            (v.fit, v.width, v.height, v.dpr, v.quality, v.pad, v.noup, v.trim),
            (Fit.PAD, 400, 400, 2, 60, (0, 255, 0, 255), True, True),
        )
        self.assertEqual(
            (v.rotate, v.flip, v.flop, v.blur, v.sharp, v.gray),
            (90, True, True, 4, True, True),
        )
        for name, field, value in (
            ("h200.jpg", "fit", Fit.HEIGHT),
            ("x200-fit.jpg", "fit", Fit.FIT),
            ("x200-gse.jpg", "gravity", "gse"),
            ("x200-fp10_90.jpg", "focus", (10, 90)),
            ("x200-smart.jpg", "smart", True),
            ("w200@3x.jpg", "width", 600),
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
            ("x200-flop-flip.jpg", "x200-flip-flop.jpg"),
            ("w200-r90-trim.jpg", "w200-trim-r90.jpg"),
        ):
            with self.assertRaises(NotCanonical, msg=name) as caught:
                V2.parse(name)
            self.assertEqual(caught.exception.canonical, canonical, name)
            self.assertEqual(V2.parse(canonical).name, canonical)  # type: ignore[union-attr]
        # auto has no default pad colour of its own: white stays spelled.
        self.assertEqual(V2.parse("x200-padffffff.auto").name, "x200-padffffff.auto")  # type: ignore[union-attr]

    def test_wrong_names_are_400s_that_name_the_option(self) -> None:
        for name, words in (
            ("w200-fit.jpg", "fit applies only to xN and WxH sizes"),
            ("h200-pad.jpg", "pad applies only to xN and WxH sizes"),
            ("x200-fit-gn.jpg", "gn applies only to cover crops"),
            ("w200-smart.jpg", "smart applies only to cover crops"),
            ("x200-pad-fp10_10.jpg", "fp10_10 applies only to cover crops"),
            ("full_size-gs.jpg", "gs applies only to cover crops"),
            ("x200-fit-pad.jpg", "fit and pad cannot be used together"),
            ("x200-gn-smart.jpg", "only one of a gravity, fp and smart"),
            ("x200-gn-gs.jpg", "only one of a gravity, fp and smart"),
            ("x200-gray-gray.jpg", "gray is given twice"),
            ("x200-r90-r180.jpg", "a rotation is given twice"),
            ("x200-q10-q20.jpg", "the quality is given twice"),
            ("x200-foo.jpg", "unknown option 'foo'"),
            ("x200-r45.jpg", "unknown option 'r45'"),
            ("x200-padfff.jpg", "unknown option 'padfff'"),
            ("x200-fp101_5.jpg", "a focal point is 0 to 100 per cent"),
            ("x200-fp05_5.jpg", "'05' is not a plain number"),
            ("x200-blur0.jpg", "blur must be at least 1"),
            ("x200-blur101.jpg", "blur must be between 1 and 100"),
            ("w200@5x.jpg", "the density must be 1x to 4x"),
            ("w200@0x.jpg", "density must be at least 1"),
            ("w600@2x.jpg", "larger than the maximum of 1000 pixels"),
            ("h0.jpg", "height must be at least 1"),
        ):
            with self.assertRaises(InvalidRequest, msg=name) as caught:
                V2.parse(name)
            self.assertIn(words, str(caught.exception), name)

    def test_density_multiplies_every_pixel_number(self) -> None:
        for name, double in (("w100@2x.jpg", "w200.jpg"), ("h50@2x.jpg", "h100.jpg"),
                             ("x25-pad@4x.png", "x100-pad.png"),
                             ("30x20-gn@3x.jpg", "90x60-gn.jpg")):  # fmt: skip
            a, b = V2.parse(name), V2.parse(double)
            assert a is not None and b is not None
            self.assertEqual((a.width, a.height, a.fit), (b.width, b.height, b.fit))

    def test_outputs_take_v2_names_and_refuse_other_spellings(self) -> None:
        self.assertEqual(
            [v.name for v in V2.parse_outputs("x300-smart.jpg,w200@2x.webp")],
            ["x300-smart.jpg", "w200@2x.webp"],
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
                "fp20_70", "fp50_50", "trim", "r90", "r180", "flip", "flop", "blur3",
                "sharp", "gray", "q40",
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
            self.assertEqual(e.canonical, canonical)
        else:
            self.assertEqual(again, variant)
