"""Each input format's width and height, read from its header by a bounded
walk in plain Python, before any decoder sees the file.

Pillow's plug-ins do not all wait for ``load()`` to decode: JPEG XL's decodes
every pixel in ``Image.open``, so a 26 KB file declaring 14000x14000 cost
3.8 GB before its size could be checked. The size is therefore read here,
from the bytes, for every format the server accepts (the format table names
each row's reader), and checked against the limits before Pillow opens the
file; Pillow's own idea of the size is then held to it (imaging). Every walk
stops after a fixed number of steps; None means the header could not be read.
Plain Python on bytes, no Pillow.
"""

from __future__ import annotations

import struct

from imageserver.errors import UnsupportedImage

Size = tuple[int, int]

#: Boxes of an ISO BMFF (AVIF, HEIF) or JPEG XL container walked at most.
MAX_BOXES = 4096
#: Extension sub-blocks a GIF may have before its first image (real files:
#: a handful).
MAX_GIF_BLOCKS = 65_536
#: Segments walked to a JPEG's frame header (containers caps them too).
MAX_JPEG_SEGMENTS = 1024
#: Entries of a TIFF's first directory (real files: a few dozen).
MAX_TIFF_ENTRIES = 4096

_JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA,
                          0xCB, 0xCD, 0xCE, 0xCF})  # fmt: skip
_JPEG_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})


def _largest(sizes: list[Size]) -> Size | None:
    return max(sizes, key=lambda s: s[0] * s[1], default=None)


def jpeg(data: bytes) -> Size | None:
    """The largest frame header (SOFn) before the first scan: Pillow takes
    the last one it meets."""
    pos, sizes = 2, []
    for _ in range(MAX_JPEG_SEGMENTS):
        while pos < len(data) and data[pos] == 0xFF:
            pos += 1
        if pos + 3 > len(data):
            break
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):
            break
        length = int.from_bytes(data[pos : pos + 2], "big")
        if marker in _JPEG_FRAMES and pos + 7 <= len(data):
            height, width = struct.unpack_from(">HH", data, pos + 3)
            sizes.append((width, height))
        pos += length
    return _largest(sizes)


def png(data: bytes) -> Size | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    return width, height


def gif(data: bytes) -> Size | None:
    """The logical screen, grown to the first image's extent (as Pillow grows
    it; later frames are checked as they are read)."""
    if len(data) < 13:
        return None
    width, height = struct.unpack_from("<HH", data, 6)
    pos = 13
    if data[10] & 0x80:
        pos += 3 << ((data[10] & 7) + 1)
    blocks = 0
    while pos < len(data):
        kind = data[pos]
        if kind == 0x2C:
            if pos + 9 > len(data):
                return None
            left, top, w, h = struct.unpack_from("<HHHH", data, pos + 1)
            return max(width, left + w), max(height, top + h)
        if kind != 0x21:
            break
        pos += 2
        while pos < len(data) and data[pos]:
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                return None
            pos += 1 + data[pos]
        pos += 1
    return width, height


def webp(data: bytes) -> Size | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        return width, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def bmp(data: bytes) -> Size | None:
    if len(data) < 26:
        return None
    header = int.from_bytes(data[14:18], "little")
    if header == 12:
        width, height = struct.unpack_from("<HH", data, 18)
        return width, height
    width, height = struct.unpack_from("<ii", data, 18)
    return abs(width), abs(height)


def tiff(data: bytes) -> Size | None:
    """The first page's ImageWidth and ImageLength (only the first page is
    read: later pages are never decoded), classic TIFF or BigTIFF."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 16:
        return None
    magic = struct.unpack_from(order + "H", data, 2)[0]
    if magic == 42:
        offset = struct.unpack_from(order + "I", data, 4)[0]
        count_fmt, entry, value_at, long_fmt = "H", 12, 8, "I"
    elif magic == 43:
        offset = struct.unpack_from(order + "Q", data, 8)[0]
        count_fmt, entry, value_at, long_fmt = "Q", 20, 12, "Q"
    else:
        return None
    count_size = struct.calcsize(count_fmt)
    if offset + count_size > len(data):
        return None
    count = struct.unpack_from(order + count_fmt, data, offset)[0]
    found: dict[int, int] = {}
    pos = offset + count_size
    for _ in range(min(count, MAX_TIFF_ENTRIES)):
        if pos + entry > len(data):
            break
        tag, kind = struct.unpack_from(order + "HH", data, pos)
        if tag in (256, 257):
            if kind == 3:
                found[tag] = struct.unpack_from(order + "H", data, pos + value_at)[0]
            elif kind == 4:
                found[tag] = struct.unpack_from(order + "I", data, pos + value_at)[0]
            elif kind == 16:
                found[tag] = struct.unpack_from(order + long_fmt, data, pos + value_at)[
                    0
                ]
        pos += entry
    if 256 not in found or 257 not in found:
        return None
    return found[256], found[257]


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the boxes in ``data[start:end]``."""
    boxes: list[tuple[bytes, int, int]] = []
    pos = start
    while pos + 8 <= end and len(boxes) < MAX_BOXES:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1 and pos + 16 <= end:
            size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < header:
            break
        boxes.append((kind, pos + header, min(pos + size, end)))
        pos += size
    return boxes


#: Boxes that hold the boxes describing images (and how far into their
#: payload those start: ``meta`` is a full box).
_BMFF_PARENTS = {b"meta": 4, b"iprp": 0, b"ipco": 0, b"moov": 0, b"trak": 0}


def bmff(data: bytes) -> Size | None:
    """AVIF and HEIF: the largest image any ``ispe`` property or track header
    (``tkhd``) declares, so that neither a grid, nor a secondary image, nor
    an image sequence can be larger than what is checked."""
    sizes: list[Size] = []
    pending = [(0, len(data))]
    visited = 0
    while pending and visited < MAX_BOXES:
        start, end = pending.pop()
        for kind, begin, stop in _boxes(data, start, end):
            visited += 1
            if kind in _BMFF_PARENTS:
                pending.append((begin + _BMFF_PARENTS[kind], stop))
            elif kind == b"ispe" and stop - begin >= 12:
                sizes.append(struct.unpack_from(">II", data, begin + 4))
            elif kind == b"tkhd" and stop - begin >= 84:
                width, height = struct.unpack_from(">II", data, stop - 8)
                sizes.append((width >> 16, height >> 16))
    return _largest(sizes)


_JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9),
               6: (5, 4), 7: (2, 1)}  # fmt: skip


def jxl(data: bytes) -> Size | None:
    """The SizeHeader at the start of the codestream, bare or in the
    container's ``jxlc`` box or first ``jxlp`` boxes."""
    if data.startswith(_JXL_CONTAINER):
        stream = b""
        for kind, begin, stop in _boxes(data, 0, len(data)):
            if kind == b"jxlc":
                stream += data[begin:stop]
            elif kind == b"jxlp":
                stream += data[begin + 4 : stop]
            if len(stream) >= 16:
                break
        data = stream
    if not data.startswith(b"\xff\x0a") or len(data) < 4:
        return None
    bits = _Bits(data[2:18])
    width, height = _jxl_size(bits)
    if _jxl_animated(bits):
        raise UnsupportedImage(
            "animated JPEG XL is not accepted: its frames are all decoded at "
            "once and it declares no frame count to bound them by"
        )
    return width, height


def _jxl_size(bits: _Bits) -> Size:
    """A SizeHeader."""
    small = bits.read(1)
    height = (bits.read(5) + 1) * 8 if small else bits.u32(_JXL_SIZES)
    ratio = bits.read(3)
    if ratio:
        numerator, denominator = _JXL_RATIOS[ratio]
        return height * numerator // denominator, height
    width = (bits.read(5) + 1) * 8 if small else bits.u32(_JXL_SIZES)
    return width, height


def _jxl_animated(bits: _Bits) -> bool:
    """Whether the ImageMetadata after the SizeHeader says ``have_animation``.

    pillow-jxl decodes every frame of an animation in ``Image.open`` (into
    one picture), and JPEG XL declares no frame count: the frames' cost
    cannot be bounded from the header, so such a file is refused."""
    if bits.read(1) or not bits.read(1):  # all_default, extra_fields
        return False
    bits.read(3)  # orientation
    if bits.read(1):  # have_intr_size
        _jxl_size(bits)
    if bits.read(1):  # have_preview: a PreviewHeader
        div8 = bits.read(1)
        sizes = _JXL_PREVIEW_DIV8 if div8 else _JXL_PREVIEW
        bits.u32(sizes)
        if not bits.read(3):
            bits.u32(sizes)
    return bool(bits.read(1))


class _Bits:
    """JPEG XL's bit reader: least significant bit first."""

    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "little")
        self.pos = 0

    def read(self, count: int) -> int:
        value = (self.value >> self.pos) & ((1 << count) - 1)
        self.pos += count
        return value

    def u32(self, choices: tuple[tuple[int, int], ...]) -> int:
        """A U32 field: a 2-bit selector of (offset, bits)."""
        offset, count = choices[self.read(2)]
        return offset + self.read(count)


#: U32 distributions as (offset, bits): SizeHeader's, PreviewHeader's.
_JXL_SIZES = ((1, 9), (1, 13), (1, 18), (1, 30))
_JXL_PREVIEW_DIV8 = ((16, 0), (32, 0), (1, 5), (33, 9))
_JXL_PREVIEW = ((1, 6), (65, 8), (321, 10), (1345, 12))
