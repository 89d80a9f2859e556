"""Walking a file's structure: where its image ends, and what no real image has."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from twisted.trial.unittest import SynchronousTestCase

from imageserver.errors import UnsupportedImage
from imageserver.imaging import containers
from tests import hostile
from tests.support import encode, noise, quadrants


class RealFilesTests(SynchronousTestCase):
    @settings(
        max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(
        st.integers(1, 700),
        st.integers(1, 700),
        st.sampled_from(
            [
                ("JPEG", {}),
                ("JPEG", {"progressive": True}),
                ("JPEG", {"subsampling": 0}),
                ("JPEG", {"quality": 1}),
                ("PNG", {}),
                ("PNG", {"optimize": True}),
                ("WEBP", {}),
                ("WEBP", {"lossless": True}),
            ]
        ),
        st.sampled_from(["RGB", "L", "noise"]),
        st.binary(min_size=1, max_size=64),
    )
    def test_every_real_image_is_whole_and_trailing_bytes_go(
        self, w: int, h: int, how: tuple[str, dict[str, object]], kind: str, junk: bytes
    ) -> None:
        fmt, options = how
        image = noise((w, h)) if kind == "noise" else quadrants((w, h)).convert(kind)
        data = encode(image, fmt, **options)
        self.assertEqual(containers.layout(data), containers.Layout(len(data)))
        self.assertEqual(containers.image_bytes(data + junk), data)

    def test_a_thumbnail_inside_exif_does_not_end_the_image(self) -> None:
        thumbnail = encode(quadrants((32, 24)))
        exif = Image.Exif()
        exif[0x010E] = "a photo"
        # A JPEG thumbnail (with its own EOI) inside the APP1 segment.
        app1 = b"Exif\0\0" + exif.tobytes()[6:] + thumbnail
        photo = encode(quadrants((300, 200)))
        data = photo[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1
        data += photo[2:]
        self.assertEqual(containers.image_bytes(data + b"junk"), data)

    def test_files_cut_short_are_left_to_the_decoder(self) -> None:
        grain = noise((300, 200))
        for fmt in ("JPEG", "PNG"):
            data = encode(grain, fmt)
            cut = data[: len(data) * 3 // 4]
            self.assertEqual(containers.image_bytes(cut), cut, fmt)

    def test_other_formats_are_kept_whole(self) -> None:
        for fmt in ("GIF", "TIFF", "BMP"):
            data = encode(quadrants((30, 20)), fmt) + b"trailing"
            self.assertEqual(containers.image_bytes(data), data, fmt)


class HostileStructureTests(SynchronousTestCase):
    def assertRefused(self, data: bytes, message: str) -> None:
        with self.assertRaises(UnsupportedImage) as caught:
            containers.image_bytes(data)
        self.assertEqual(str(caught.exception), message)

    def test_segment_floods(self) -> None:
        containers.image_bytes(hostile.jpeg_segment_flood(900))
        self.assertRefused(
            hostile.jpeg_segment_flood(12_000_000 // 1000),
            "the JPEG has more than 1024 segments",
        )
        self.assertRefused(
            hostile.png_chunk_flood(70_000), "the PNG has more than 65536 chunks"
        )

    def test_scan_floods(self) -> None:
        containers.image_bytes(hostile.jpeg_scan_flood(80))
        self.assertRefused(
            hostile.jpeg_scan_flood(101), "the JPEG has more than 100 scans"
        )

    def test_data_too_short_for_the_pixels_declared(self) -> None:
        self.assertEqual(
            containers.layout(hostile.jpeg_with_short_scan(7000, 7000)).too_short,
            "the JPEG's compressed data (4 bytes) is too short for its 7000x7000 "
            "pixels: it is cut short or corrupt",
        )
        self.assertEqual(
            containers.layout(hostile.png_claiming(7000, 7000)).too_short,
            "the PNG's compressed data (12 bytes) is too short for its 7000x7000 "
            "pixels: it is cut short or corrupt",
        )

    def test_the_smallest_real_files_pass(self) -> None:
        # Flat images: the least data a real encoder writes for their pixels.
        for fmt, mode in (("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "1"), ("PNG", "L")):
            data = encode(Image.new(mode, (4000, 3000)), fmt)
            self.assertEqual(containers.layout(data), containers.Layout(len(data)))

    @settings(max_examples=500)
    @given(
        st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBP"]),
        st.binary(max_size=400),
    )
    def test_any_bytes_give_a_prefix_or_a_refusal(
        self, prefix: bytes, rest: bytes
    ) -> None:
        data = prefix + rest
        try:
            kept = containers.image_bytes(data)
        except UnsupportedImage:
            return
        self.assertEqual(kept, data[: len(kept)])
