"""A file's structure, walked before any decoder sees it: where the image ends,
and whether its parts cost more than a real image's would.

Decoders trust what a file declares. Pillow reads a JPEG's segments and a
PNG's chunks in Python, one object per segment, so millions of empty ones
cost seconds and gigabytes before a pixel is decoded; libjpeg fills a scan
that ends early with grey, so 600 bytes can claim 7000x7000 pixels; data after
the image's end is stored for nothing. Each walk here is bounded (it stops
after a fixed number of steps) and costs microseconds on a real photo.
Plain Python on bytes, no Pillow.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from imageserver.errors import UnsupportedImage

#: Segments a JPEG may hold in all (real files: under 50, a few hundred with
#: a large ICC profile split in chunks).
MAX_JPEG_SEGMENTS = 1024
#: Scans of a progressive JPEG (encoders write about 10): each one is a pass
#: over every coefficient of the image.
MAX_JPEG_SCANS = 100
#: Chunks a PNG may hold (a 50 MB PNG in 8 KiB IDAT chunks has 6,400).
MAX_PNG_CHUNKS = 65_536
#: Deflate's largest possible ratio: 258 bytes from two 1-bit codes.
DEFLATE_MAX_RATIO = 1032

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
#: A marker inside entropy-coded data: 0xFF not followed by a stuffed zero, a
#: restart marker or another (fill) 0xFF. (``\xff+`` would also take the
#: fill bytes in, at 15 times the cost: a regular expression starting with a
#: repeat is not searched for as a literal.)
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
#: Start-of-frame markers of Huffman-coded DCT images, where every 8x8 block
#: costs at least one bit of compressed data (arithmetic coding can go below).
_HUFFMAN_DCT_FRAMES = frozenset({0xC0, 0xC1, 0xC2})
_OTHER_FRAMES = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})


@dataclass(frozen=True, slots=True)
class Layout:
    """What the walk found."""

    #: Where the image ends: a JPEG's EOI, a PNG's IEND, a WebP's RIFF size;
    #: the whole file when it is cut short or of another format.
    end: int
    #: Why the compressed data is too short for the pixels it declares (no
    #: encoder writes less), or None.
    too_short: str | None = None


def layout(data: bytes) -> Layout:
    """Walk ``data``'s structure; UnsupportedImage for one no real image has."""
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg(data)
    if data[:8] == _PNG_SIGNATURE:
        return _png(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        end = 8 + int.from_bytes(data[4:8], "little")
        return Layout(min(len(data), end + (end & 1)))  # RIFF pads to even
    return Layout(len(data))


def image_bytes(data: bytes) -> bytes:
    """``data`` up to the end of its image, once its structure is checked.

    Bytes after the image's end are not part of the image and are dropped. A
    file cut short is returned whole: the decoder says what is wrong with it.
    """
    return data[: layout(data).end]


def _jpeg(data: bytes) -> Layout:
    size = len(data)
    pos = 2
    segments = scans = entropy = 0
    frame: tuple[int, int, int] | None = None
    while pos < size:
        if data[pos] != 0xFF:
            return Layout(size)  # no marker where one must be: the decoder decides
        while pos < size and data[pos] == 0xFF:
            pos += 1
        if pos >= size:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            break
        if marker in _STANDALONE:
            continue
        if pos + 2 > size:
            break
        length = int.from_bytes(data[pos : pos + 2], "big")
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise UnsupportedImage(
                f"the JPEG has more than {MAX_JPEG_SEGMENTS} segments"
            )
        if marker in _HUFFMAN_DCT_FRAMES:
            frame = _dct_frame(data[pos + 2 : pos + length])
        elif marker in _OTHER_FRAMES:
            frame = None
        pos += length
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise UnsupportedImage(f"the JPEG has more than {MAX_JPEG_SCANS} scans")
            found = _MARKER.search(data, pos)
            end = size if found is None else found.start()
            entropy += end - pos
            pos = end
    end = min(pos, size)
    if frame is not None and entropy * 8 < frame[2]:
        width, height, _ = frame
        return Layout(
            end,
            f"the JPEG's compressed data ({entropy} bytes) is too short for its "
            f"{width}x{height} pixels: it is cut short or corrupt",
        )
    return Layout(end)


def _dct_frame(frame: bytes) -> tuple[int, int, int] | None:
    """Width, height and 8x8 blocks of a DCT frame header (SOFn).

    Every block costs at least one bit of Huffman-coded data (its DC code).
    """
    if len(frame) < 6:
        return None
    height, width, count = struct.unpack_from(">HHB", frame, 1)
    components = [frame[6 + 3 * i + 1] for i in range(count) if 8 + 3 * i < len(frame)]
    if not components or width == 0 or height == 0:
        return None
    h_max = max(c >> 4 for c in components) or 1
    v_max = max(c & 15 for c in components) or 1
    total = 0
    for sampling in components:
        comp_w = -(-width * (sampling >> 4) // h_max)
        comp_h = -(-height * (sampling & 15) // v_max)
        total += -(-comp_w // 8) * -(-comp_h // 8)
    return width, height, total


def _png(data: bytes) -> Layout:
    size = len(data)
    pos = 8
    chunks = compressed = width = height = 0
    raw: int | None = None
    kind = b""
    while pos + 12 <= size:
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise UnsupportedImage(f"the PNG has more than {MAX_PNG_CHUNKS} chunks")
        if kind == b"IHDR" and length >= 13 and pos + 21 <= size:
            width, height, depth, colour = struct.unpack_from(">IIBB", data, pos + 8)
            bits = depth * _PNG_CHANNELS.get(colour, 1)
            raw = height * (1 + -(-width * bits // 8))
        elif kind == b"IDAT":
            compressed += length
        pos += 12 + length
        if kind == b"IEND":
            break
    end = min(pos, size) if kind == b"IEND" else size
    if raw is not None and compressed * DEFLATE_MAX_RATIO < raw:
        return Layout(
            end,
            f"the PNG's compressed data ({compressed} bytes) is too short "
            f"for its {width}x{height} pixels: it is cut short or corrupt",
        )
    return Layout(end)


def frame_durations(data: bytes, cap: int) -> list[int] | None:
    """The durations (ms) of an animation's frames, read from the file's
    structure without decoding: GIF graphic controls, WebP ANMF chunks, APNG
    fcTL chunks. At most ``cap`` + 1 are read (enough to tell it is over
    ``cap``). None when the format keeps them elsewhere (AVIF)."""
    if data[:4] == b"GIF8":
        return _gif_durations(data, cap)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_durations(data, cap)
    if data[:8] == _PNG_SIGNATURE:
        return _apng_durations(data, cap)
    return None


def _gif_durations(data: bytes, cap: int) -> list[int]:
    size = len(data)
    pos = 13
    if size > 10 and data[10] & 0x80:  # a global colour table
        pos += 3 << ((data[10] & 7) + 1)
    durations: list[int] = []
    delay = 0
    while pos < size and len(durations) <= cap:
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            if pos + 1 < size and data[pos + 1] == 0xF9 and pos + 6 <= size:
                delay = int.from_bytes(data[pos + 4 : pos + 6], "little") * 10
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # an image: a frame
            durations.append(delay)
            delay = 0
            if pos + 10 > size:
                break
            flags = data[pos + 9]
            pos += 10
            if flags & 0x80:  # a local colour table
                pos += 3 << ((flags & 7) + 1)
            pos = _skip_sub_blocks(data, pos + 1)  # after the LZW code size
        else:
            break
    return durations


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    size = len(data)
    while pos < size:
        length = data[pos]
        pos += 1 + length
        if length == 0:
            break
    return pos


def _webp_durations(data: bytes, cap: int) -> list[int]:
    durations: list[int] = []
    pos = 12
    size = min(len(data), 8 + int.from_bytes(data[4:8], "little"))
    while pos + 8 <= size and len(durations) <= cap:
        kind = data[pos : pos + 4]
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if kind == b"ANMF" and pos + 24 <= size:
            durations.append(int.from_bytes(data[pos + 20 : pos + 23], "little"))
        pos += 8 + length + (length & 1)
    return durations


def _apng_durations(data: bytes, cap: int) -> list[int]:
    durations: list[int] = []
    pos = 8
    size = len(data)
    while pos + 12 <= size and len(durations) <= cap:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"fcTL" and length >= 26 and pos + 8 + 26 <= size:
            numerator, denominator = struct.unpack_from(">HH", data, pos + 8 + 20)
            durations.append(numerator * 1000 // (denominator or 100))
        if kind == b"IEND":
            break
        pos += 12 + length
    return durations
