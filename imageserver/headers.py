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
    read: later pages are never decoded), classic TIFF or BigTIFF; for a
    tiled page, the extent of its tiles.

    A decoder works tile by tile, each of TileWidth x TileLength whatever the
    image's size: a 16x16 image of one 16384x16384 tile cost 769 MB. So a
    tiled page counts as its tiles cover (its size rounded up to whole tiles).
    Each of these four tags is read in any integer type a decoder takes
    (signed, 8 bytes, stored out of line), and a page that gives one twice,
    or not as one integer, is refused: a decoder may read it otherwise.
    """
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 16:
        return None
    magic = struct.unpack_from(order + "H", data, 2)[0]
    if magic == 42:
        offset = struct.unpack_from(order + "I", data, 4)[0]
        count_fmt, entry, inline, pointer = "H", 12, 4, "I"
    elif magic == 43:
        offset = struct.unpack_from(order + "Q", data, 8)[0]
        count_fmt, entry, inline, pointer = "Q", 20, 8, "Q"
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
        if tag in _TIFF_SIZES:
            values = struct.unpack_from(order + pointer, data, pos + 4)[0]
            value_fmt = _TIFF_INTEGERS.get(kind)
            if tag in found or value_fmt is None or values != 1:
                raise UnsupportedImage(
                    f"the TIFF gives its tag {tag} twice or not as one integer"
                )
            at = pos + 4 + inline
            if struct.calcsize(value_fmt) > inline:
                at = struct.unpack_from(order + pointer, data, at)[0]
            if at + struct.calcsize(value_fmt) > len(data):
                return None
            found[tag] = struct.unpack_from(order + value_fmt, data, at)[0]
        pos += entry
    if _WIDTH not in found or _LENGTH not in found:
        return None
    width, height = found[_WIDTH], found[_LENGTH]
    if _TILE_WIDTH in found or _TILE_LENGTH in found:
        tile_w, tile_h = found.get(_TILE_WIDTH, 0), found.get(_TILE_LENGTH, 0)
        if tile_w < 1 or tile_h < 1:
            return None
        width, height = -(-width // tile_w) * tile_w, -(-height // tile_h) * tile_h
    return width, height


#: TIFF field types that are integers, and their struct formats: BYTE,
#: SHORT, LONG, SBYTE, SSHORT, SLONG, LONG8, SLONG8, IFD8.
_TIFF_INTEGERS = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 13: "I",
                  16: "Q", 17: "q", 18: "Q"}  # fmt: skip
#: TIFF tags: ImageWidth, ImageLength, TileWidth, TileLength.
_WIDTH, _LENGTH, _TILE_WIDTH, _TILE_LENGTH = 256, 257, 322, 323
_TIFF_SIZES = frozenset({_WIDTH, _LENGTH, _TILE_WIDTH, _TILE_LENGTH})


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
#: payload those start: ``meta`` is a full box, ``stsd`` a full box and an
#: entry count, ``av01`` a visual sample entry).
_BMFF_PARENTS = {b"meta": 4, b"iprp": 0, b"ipco": 0, b"moov": 0, b"trak": 0,
                 b"mdia": 0, b"minf": 0, b"stsd": 8, b"av01": 78}  # fmt: skip
#: Samples of an image sequence whose AV1 data is read (more frames than
#: --max_animation_frames are never decoded: the first is served alone).
MAX_SAMPLES = 4096
#: Bytes of an item or sample looked through for its sequence header (which
#: comes before its first frame: a few dozen bytes in).
AV1_HEAD = 4096


def bmff(data: bytes) -> Size | None:
    """AVIF and HEIF: the largest image any ``ispe`` property or track header
    (``tkhd``) declares, so that neither a grid, nor a secondary image, nor
    an image sequence can be larger than what is checked; for AV1, also the
    largest frame any sequence header allows.

    An ``ispe`` only describes: the AV1 decoder allocates what the coded
    sequence header says, which a 3.4 KB file set to 16000x16000 under an
    ``ispe`` of 1000x1000 (530 MB). So every AV1 sequence header is read: in
    the codec configurations (``av1C``), at the start of every AV1 image
    item's data and of every sample of an AV1 track.
    """
    found = _Bmff(data)
    found.walk()
    sizes = found.sizes
    for item in found.av1_items:
        head = found.item_head(item)
        if head is None:
            continue
        coded = _av1_sizes(head)
        if not coded:
            raise UnsupportedImage(
                "an AV1 image in the file has no sequence header before its "
                "frame: it cannot be decoded"
            )
        sizes += coded
    for offset, length in found.samples:
        sizes += _av1_sizes(data[offset : offset + min(length, AV1_HEAD)])
    return _largest(sizes)


class _Bmff:
    """What `bmff` needs of an ISO BMFF file, found by one bounded walk."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sizes: list[Size] = []
        #: IDs of the ``av01`` items (``iinf``).
        self.av1_items: list[int] = []
        #: Each item's construction method and extents (``iloc``).
        self.locations: dict[int, tuple[int, list[tuple[int, int]]]] = {}
        #: Where the ``idat`` payload starts.
        self.idat = 0
        #: (offset, length) of the samples of AV1 tracks.
        self.samples: list[tuple[int, int]] = []

    def walk(self) -> None:
        data = self.data
        pending = [(0, len(data))]
        visited = 0
        while pending and visited < MAX_BOXES:
            start, end = pending.pop()
            for kind, begin, stop in _boxes(data, start, end):
                visited += 1
                if kind in _BMFF_PARENTS:
                    pending.append((begin + _BMFF_PARENTS[kind], stop))
                elif kind == b"ispe" and stop - begin >= 12:
                    self.sizes.append(struct.unpack_from(">II", data, begin + 4))
                elif kind == b"tkhd" and stop - begin >= 84:
                    width, height = struct.unpack_from(">II", data, stop - 8)
                    self.sizes.append((width >> 16, height >> 16))
                elif kind == b"av1C" and stop - begin > 4:
                    self.sizes += _av1_sizes(data[begin + 4 : stop])
                elif kind == b"iinf":
                    self._items(begin, stop)
                elif kind == b"iloc":
                    self._locations(begin, stop)
                elif kind == b"idat":
                    self.idat = begin
                elif kind == b"stbl":
                    self._samples(begin, stop)
                    pending.append((begin, stop))

    def _items(self, begin: int, stop: int) -> None:
        version = self.data[begin] if begin < stop else 0
        first = begin + (6 if version == 0 else 8)
        for kind, at, end in _boxes(self.data, first, stop):
            if kind != b"infe" or end - at < 12:
                continue
            version = self.data[at]
            if version == 2:
                item, item_type = struct.unpack_from(">H2x4s", self.data, at + 4)
            elif version == 3:
                item, item_type = struct.unpack_from(">I2x4s", self.data, at + 4)
            else:
                continue
            if item_type == b"av01":
                self.av1_items.append(item)

    def _locations(self, begin: int, stop: int) -> None:
        reader = _Reader(self.data, begin, stop)
        version = reader.int(1)
        reader.int(3)
        sizes = reader.int(1)
        offset_size, length_size = sizes >> 4, sizes & 15
        sizes = reader.int(1)
        base_size, index_size = sizes >> 4, (sizes & 15 if version else 0)
        count = reader.int(2 if version < 2 else 4)
        for _ in range(min(count, MAX_BOXES)):
            item = reader.int(2 if version < 2 else 4)
            method = reader.int(2) & 15 if version else 0
            reader.int(2)  # data_reference_index
            base = reader.int(base_size)
            extents = []
            for _ in range(min(reader.int(2), MAX_BOXES)):
                reader.int(index_size)
                start = reader.int(offset_size)
                extents.append((base + start, reader.int(length_size)))
            if reader.short:
                return
            self.locations[item] = (method, extents)

    def item_head(self, item: int) -> bytes | None:
        """The first `AV1_HEAD` bytes of an item's data, or None when it is
        not in this file."""
        method, extents = self.locations.get(item, (None, []))
        if method not in (0, 1):
            return None
        origin = 0 if method == 0 else self.idat
        head = b""
        for offset, length in extents:
            if length == 0:  # to the end of the file
                length = len(self.data)
            head += self.data[origin + offset : origin + offset + length]
            if len(head) >= AV1_HEAD:
                break
        return head[:AV1_HEAD]

    def _samples(self, begin: int, stop: int) -> None:
        """The samples of a track whose sample entry is ``av01``."""
        boxes = {kind: (at, end) for kind, at, end in _boxes(self.data, begin, stop)}
        if not all(k in boxes for k in (b"stsd", b"stsz", b"stsc")):
            return
        at, end = boxes[b"stsd"]
        if not any(k == b"av01" for k, _, _ in _boxes(self.data, at + 8, end)):
            return
        if b"stco" in boxes:
            chunks = _table(self.data, *boxes[b"stco"], 4)
        elif b"co64" in boxes:
            chunks = _table(self.data, *boxes[b"co64"], 8)
        else:
            return
        reader = _Reader(self.data, *boxes[b"stsz"])
        reader.int(4)
        uniform, count = reader.int(4), reader.int(4)
        lengths = [uniform or reader.int(4) for _ in range(min(count, MAX_SAMPLES))]
        reader = _Reader(self.data, *boxes[b"stsc"])
        reader.int(4)
        runs = [
            (reader.int(4), reader.int(4), reader.int(4))
            for _ in range(min(reader.int(4), MAX_SAMPLES))
        ]
        sample = 0
        for index, offset in enumerate(chunks, start=1):
            per_chunk = next((n for first, n, _ in reversed(runs) if first <= index), 0)
            for _ in range(min(per_chunk, MAX_SAMPLES)):
                if sample >= len(lengths):
                    return
                self.samples.append((offset, lengths[sample]))
                offset += lengths[sample]
                sample += 1


def _table(data: bytes, begin: int, stop: int, width: int) -> list[int]:
    """A full box's table of ``width``-byte integers (``stco``, ``co64``)."""
    reader = _Reader(data, begin, stop)
    reader.int(4)
    return [reader.int(width) for _ in range(min(reader.int(4), MAX_SAMPLES))]


class _Reader:
    """Big-endian integers from ``data[pos:stop]``; past the end, zeros and
    ``short`` set."""

    def __init__(self, data: bytes, pos: int, stop: int) -> None:
        self.data, self.pos, self.stop = data, pos, stop
        self.short = False

    def int(self, size: int) -> int:
        if self.pos + size > self.stop:
            self.short = True
            return 0
        value = int.from_bytes(self.data[self.pos : self.pos + size], "big")
        self.pos += size
        return value


#: OBUs walked before a frame (real streams: a temporal delimiter, a
#: sequence header, perhaps metadata).
MAX_OBUS = 64
#: AV1 OBU types: sequence header; frame header, frame (the first frame
#: ends the search: a sequence header comes before it).
_OBU_SEQUENCE_HEADER, _OBU_FRAME_HEADER, _OBU_FRAME = 1, 3, 6


def _av1_sizes(data: bytes) -> list[Size]:
    """The largest frame each AV1 sequence header before the first frame in
    ``data`` (OBUs with size fields) allows."""
    sizes: list[Size] = []
    pos = 0
    for _ in range(MAX_OBUS):
        if pos >= len(data):
            break
        header = data[pos]
        kind, extension, has_size = (header >> 3) & 15, header & 4, header & 2
        pos += 2 if extension else 1
        if has_size:
            length = 0
            for shift in range(0, 56, 7):
                if pos >= len(data):
                    return sizes
                byte = data[pos]
                pos += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
        else:
            length = len(data) - pos
        if kind == _OBU_SEQUENCE_HEADER:
            size = _av1_sequence_size(data[pos : pos + length])
            if size is not None:
                sizes.append(size)
        elif kind in (_OBU_FRAME_HEADER, _OBU_FRAME):
            break
        pos += length
    else:
        # A sequence header could hide behind more: not walked, refused.
        raise UnsupportedImage(
            f"an AV1 stream in the file has more than {MAX_OBUS} OBUs before "
            "its first frame"
        )
    return sizes


def _av1_sequence_size(payload: bytes) -> Size | None:
    """max_frame_width and max_frame_height of a sequence header OBU (AV1
    specification 5.5.1), or None when it is too short."""
    bits = _MsbBits(payload)
    try:
        bits.read(3)  # seq_profile
        bits.read(1)  # still_picture
        if bits.read(1):  # reduced_still_picture_header
            bits.read(5)
        else:
            decoder_model = False
            delay_length = 0
            if bits.read(1):  # timing_info_present_flag
                bits.read(64)
                if bits.read(1):  # equal_picture_interval
                    bits.uvlc()
                decoder_model = bool(bits.read(1))
                if decoder_model:
                    delay_length = bits.read(5) + 1
                    bits.read(32 + 5 + 5)
            display_delay = bits.read(1)
            for _ in range(bits.read(5) + 1):  # operating points
                bits.read(12)
                if bits.read(5) > 7:  # seq_level_idx
                    bits.read(1)
                if decoder_model and bits.read(1):
                    bits.read(2 * delay_length + 1)
                if display_delay and bits.read(1):
                    bits.read(4)
        width_bits, height_bits = bits.read(4) + 1, bits.read(4) + 1
        return bits.read(width_bits) + 1, bits.read(height_bits) + 1
    except IndexError:
        return None


class _MsbBits:
    """AV1's bit reader: most significant bit first; IndexError past the end."""

    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "big")
        self.left = len(data) * 8

    def read(self, count: int) -> int:
        if count > self.left:
            raise IndexError("past the end")
        self.left -= count
        return (self.value >> self.left) & ((1 << count) - 1)

    def uvlc(self) -> int:
        zeros = 0
        while not self.read(1):
            zeros += 1
        if zeros >= 32:
            return (1 << 32) - 1
        return self.read(zeros) + (1 << zeros) - 1


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
