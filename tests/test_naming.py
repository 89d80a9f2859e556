from twisted.trial.unittest import SynchronousTestCase

from imageserver.errors import InvalidRequest, NotFound
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
