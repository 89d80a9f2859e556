"""Hostile files, made on the fly: cheap bytes that would cost a decoder dearly."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from tests.support import encode, noise, quadrants


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + data))
    return struct.pack(">I", len(data)) + kind + data + crc


def png_with_garbage_pixels() -> bytes:
    """Valid chunks and CRCs around pixel data that does not inflate."""
    pixels = noise((200, 200)).tobytes()
    raw = b"".join(b"\0" + pixels[y * 600 : (y + 1) * 600] for y in range(200))
    packed = zlib.compress(raw)
    half = len(packed) // 2
    garbage = packed[:half] + bytes(b ^ 0x5A for b in packed[half:])
    header = struct.pack(">IIBBBBB", 200, 200, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", garbage)
        + png_chunk(b"IEND", b"")
    )


def png_claiming(width: int, height: int, body: bytes = b"") -> bytes:
    """A PNG header declaring ``width`` x ``height``, with ``body`` as its IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", body or zlib.compress(b"\0" * 100))
        + png_chunk(b"IEND", b"")
    )


def png_chunk_flood(chunks: int) -> bytes:
    """A small PNG with ``chunks`` empty private chunks before its pixels."""
    png = encode(quadrants((16, 16)), "PNG")
    flood = png_chunk(b"prVt", b"") * chunks
    return png[:33] + flood + png[33:]


def rle_bmp(width: int, height: int) -> bytes:
    """An 8-bit RLE BMP of one pixel and an end-of-line per row.

    Pillow's RLE decoder runs in Python and pads each row a byte at a time:
    29 KB at 7000x7000 cost 11 s of CPU.
    """
    rows = b"\x01\x00\x00\x00" * height + b"\x00\x01"
    palette = b"\x00\x00\x00\x00" * 256
    info = struct.pack(
        "<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 2835, 2835, 256, 0
    )
    offset = 14 + len(info) + len(palette)
    header = b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset)
    return header + info + palette + rows


def jpeg_segment_flood(segments: int) -> bytes:
    """A small JPEG with ``segments`` empty APP0 segments after its SOI."""
    jpeg = encode(quadrants((64, 48)))
    return jpeg[:2] + b"\xff\xe0\x00\x02" * segments + jpeg[2:]


def jpeg_scan_flood(scans: int) -> bytes:
    """A progressive JPEG whose last scan is repeated ``scans`` times."""
    jpeg = encode(noise((64, 48)), progressive=True)
    last = jpeg.rindex(b"\xff\xda")
    return jpeg[:last] + jpeg[last:-2] * scans + b"\xff\xd9"


def jpeg_with_short_scan(width: int, height: int) -> bytes:
    """A 16x16 JPEG whose frame header claims ``width`` x ``height``."""
    jpeg = bytearray(encode(Image.new("RGB", (16, 16), (128, 128, 128)), quality=10))
    frame = jpeg.index(b"\xff\xc0")
    jpeg[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def avif_claiming(width: int, height: int) -> bytes:
    """A 16x16 AVIF whose ``ispe`` box claims ``width`` x ``height``."""
    avif = bytearray(encode(Image.new("RGB", (16, 16), (128, 128, 128)), "AVIF"))
    ispe = avif.index(b"ispe")
    avif[ispe + 8 : ispe + 16] = struct.pack(">II", width, height)
    return bytes(avif)


def webp_with_canvas(width: int, height: int) -> bytes:
    """An animation of two 1x1 frames on a ``width`` x ``height`` canvas."""
    frames = [Image.new("RGBA", (1, 1), (255, 0, 0, 255)), Image.new("RGBA", (1, 1))]
    out = io.BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    webp = bytearray(out.getvalue())
    vp8x = webp.index(b"VP8X")
    webp[vp8x + 12 : vp8x + 18] = (width - 1).to_bytes(3, "little") + (
        height - 1
    ).to_bytes(3, "little")
    return bytes(webp)
