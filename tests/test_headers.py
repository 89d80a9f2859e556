"""Each input format's size from its header, without a decoder: it agrees
with what Pillow reads for every real file."""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from twisted.trial.unittest import SynchronousTestCase

from imageserver import formats, headers
from imageserver.errors import UnsupportedImage
from imageserver.imaging import renderer
from tests import hostile

#: Modes each format can be written in here.
MODES = {
    "JPEG": ("RGB", "L", "CMYK"),
    "PNG": ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"),
    "GIF": ("P", "L", "RGB"),
    "WEBP": ("RGB", "RGBA"),
    "AVIF": ("RGB", "RGBA"),
    "TIFF": ("RGB", "RGBA", "L", "1", "CMYK"),
    "BMP": ("RGB", "L", "P", "1"),
    "HEIF": ("RGB", "RGBA"),
    "JXL": ("RGB", "RGBA", "L", "LA"),
}
#: Options that change how the header is written.
OPTIONS = {
    "JPEG": ({}, {"progressive": True}),
    "WEBP": ({}, {"lossless": True}),
    "TIFF": ({}, {"big_tiff": True}, {"compression": "tiff_adobe_deflate"}),
    "JXL": ({}, {"use_container": True}),
}


#: The input formats Pillow decodes, whose size a header reader gives.
DECODED = {name for name, row in formats.INPUTS.items() if not row.drawn}


class HeaderSizeTests(SynchronousTestCase):
    def test_every_input_format_has_a_mode_list(self) -> None:
        """Every format Pillow decodes: a drawn one's size is the rasteriser's
        probe's (tests/imaging/test_documents.py sweeps it)."""
        self.assertEqual(set(MODES), DECODED)

    @settings(
        max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(
        name=st.sampled_from(sorted(DECODED)),
        width=st.integers(1, 300),
        height=st.integers(1, 300),
        data=st.data(),
    )
    def test_the_header_size_is_what_pillow_reads(
        self, name: str, width: int, height: int, data: st.DataObject
    ) -> None:
        formats.register_plugins()
        mode = data.draw(st.sampled_from(MODES[name]))
        options = data.draw(st.sampled_from(OPTIONS.get(name, ({},))))
        if name in ("HEIF", "AVIF"):
            options = {**options, "quality": 10}
        out = io.BytesIO()
        Image.new(mode, (width, height), 1).save(out, name, **options)
        file = out.getvalue()
        opened = Image.open(io.BytesIO(file))
        size = formats.INPUTS[name].size(file)
        if name == "HEIF":
            # x265 codes whole blocks (64x64 at the least) and the file crops
            # them (clap): the header's is the coded size, never smaller.
            assert size is not None
            self.assertTrue(0 <= size[0] - width < 64 and 0 <= size[1] - height < 64)
            self.assertEqual(opened.size, (width, height))
        else:
            self.assertEqual(size, opened.size)

    def test_unreadable_headers_are_none(self) -> None:
        for name, row in formats.INPUTS.items():
            self.assertIsNone(row.size(b""), name)

    def test_a_gif_grows_to_its_first_image(self) -> None:
        gif = bytearray(hostile.gif_animation(10, 10, 1))
        first = gif.index(b"\x2c", 13)
        gif[first + 1 : first + 9] = bytes([5, 0, 6, 0, 20, 0, 30, 0])
        self.assertEqual(headers.gif(bytes(gif)), (25, 36))

    def test_an_animated_jpeg_xl_is_refused(self) -> None:
        """JPEG XL declares no frame count and pillow-jxl decodes every frame
        when it opens the file: an animation's cost cannot be bounded."""
        # small, 8 high, ratio 1:1; not all_default, extra fields, orientation
        # 1, no intrinsic size, no preview, have_animation.
        bits = "1" + "00000" + "100" + "0" + "1" + "000" + "0" + "0" + "1"
        value = int(bits[::-1], 2)  # the first bit is the least significant
        stream = b"\xff\x0a" + value.to_bytes(16, "little")
        with self.assertRaises(UnsupportedImage) as caught:
            renderer.probe(stream, renderer.Limits(50_000_000))
        self.assertEqual(
            str(caught.exception),
            "animated JPEG XL is not accepted: its frames are all decoded at once "
            "and it declares no frame count to bound them by",
        )
        # The same header without have_animation is an 8x8 still.
        still = int(bits[:-1][::-1], 2).to_bytes(16, "little")
        self.assertEqual(headers.jxl(b"\xff\x0a" + still), (8, 8))


def sequence_header(width: int, height: int) -> bytes:
    """An AV1 sequence header OBU (reduced still-picture header)."""
    bits = "000" + "1" + "1" + "00000" + "1111" + "1111"
    bits += f"{width - 1:016b}{height - 1:016b}"
    bits += "0" * (-len(bits) % 8)
    payload = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return bytes([1 << 3 | 2, len(payload)]) + payload


class Av1SequenceHeaderTests(SynchronousTestCase):
    PADDING = bytes([15 << 3 | 2, 0])  # an empty padding OBU
    FRAME = bytes([6 << 3 | 2, 1, 0])

    def test_the_largest_frame_before_the_first_frame(self) -> None:
        stream = self.PADDING * 3 + sequence_header(9000, 700) + self.FRAME
        self.assertEqual(headers._av1_sizes(stream), [(9000, 700)])
        # After the first frame it would be a new sequence: another sample's.
        late = self.FRAME + sequence_header(9000, 700)
        self.assertEqual(headers._av1_sizes(late), [])

    def test_a_header_behind_more_obus_than_walked_is_refused(self) -> None:
        """It was not counted: behind 64 OBUs a sequence header went unseen."""
        stream = self.PADDING * headers.MAX_OBUS + sequence_header(9000, 9000)
        with self.assertRaises(UnsupportedImage) as caught:
            headers._av1_sizes(stream)
        self.assertIn("more than 64 OBUs before its first frame", str(caught.exception))
