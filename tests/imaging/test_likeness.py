"""The perceptual hash: imagehash's own, alike for copies, apart for others."""

from __future__ import annotations

import io
import itertools

import imagehash
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageEnhance
from twisted.trial.unittest import SynchronousTestCase

from benchmarks import corpus
from imageserver.imaging import likeness, renderer
from imageserver.naming import VariantRules
from tests.support import encode

LIMITS = renderer.Limits(50_000_000, 1000, 4000)


class LikenessTests(SynchronousTestCase):
    def test_it_is_imagehashs_phash(self) -> None:
        for name in (*corpus.BACKGROUNDS, "astronaut", "camera"):
            picture = corpus.photo(name)
            self.assertEqual(
                likeness.phash(picture), str(imagehash.phash(picture)), name
            )

    def test_info_carries_it_from_the_uploads_decode(self) -> None:
        picture = corpus.photo("astronaut")
        info, _ = renderer.render_many(
            encode(picture, "PNG"), [], LIMITS, with_placeholders=True
        )
        self.assertEqual(info.phash, likeness.phash(picture))
        # A JPEG decoded at a reduced scale: within a couple of bits.
        big = picture.resize((4096, 4096))
        info, _ = renderer.render_many(
            encode(big, "JPEG", quality=90), [], LIMITS, with_placeholders=True
        )
        assert info.phash is not None
        parsed = likeness.parse(info.phash)
        assert parsed is not None
        whole = likeness.parse(likeness.phash(picture))
        assert whole is not None
        self.assertLessEqual(likeness.distance(parsed, whole), 2)

    def test_the_same_bytes_get_the_same_hash_whatever_else_is_decoded(self) -> None:
        # Outputs or faces that make a JPEG decode at a larger scale: the
        # hash and placeholders are those of the plain upload's decode.
        two = Image.new("RGB", (1600, 512))
        two.paste(corpus.photo("astronaut"), (0, 0))
        two.paste(corpus.photo("astronaut"), (1088, 0))
        data = encode(two, "JPEG", quality=90)
        rules = VariantRules(frozenset({"jpg"}), 0, 4000)
        plain, _ = renderer.render_many(data, [], LIMITS, with_placeholders=True)
        for variants, faces in (
            ([], True),
            (["w1600.jpg"], False),
            (["w400.jpg"], True),
        ):
            parsed = [rules.canonical(n) for n in variants]
            info, _ = renderer.render_many(
                data, [v for v in parsed if v], LIMITS, with_placeholders=True,
                with_faces=faces,
            )  # fmt: skip
            self.assertEqual(
                (info.phash, info.placeholders), (plain.phash, plain.placeholders)
            )

    def test_copies_are_near_and_other_pictures_far(self) -> None:
        names = (
            "astronaut",
            "coffee",
            "rocket",
            "chelsea",
            "camera",
            "immunohistochemistry",
        )
        hashes = {}
        for name in names:
            picture = corpus.photo(name)
            h = likeness.parse(likeness.phash(picture))
            assert h is not None
            hashes[name] = h
            w, height = picture.size
            for copy in (
                picture.resize((w // 3, height // 3), Image.Resampling.BICUBIC),
                Image.open(io.BytesIO(encode(picture, "JPEG", quality=30))),
                ImageEnhance.Brightness(picture).enhance(1.15),
                ImageEnhance.Color(picture).enhance(1.3),
            ):
                c = likeness.parse(likeness.phash(copy))
                assert c is not None
                self.assertLessEqual(likeness.distance(h, c), 6, name)
        for a, b in itertools.combinations(names, 2):
            self.assertGreater(likeness.distance(hashes[a], hashes[b]), 16, (a, b))

    @given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
    def test_distance_is_the_bits_that_differ(self, a: int, b: int) -> None:
        self.assertEqual(likeness.distance(a, b), likeness.distance(b, a))
        self.assertEqual(likeness.distance(a, b), bin(a ^ b).count("1"))
        self.assertEqual(likeness.parse(f"{a:016x}"), a)

    def test_parse_takes_16_lower_case_hex_digits_only(self) -> None:
        for text in ("", "0" * 15, "0" * 17, "ABCDEF0123456789", "g" * 16,
                     " " + "0" * 15, "\u0661" * 16):  # fmt: skip
            self.assertIsNone(likeness.parse(text), text)
