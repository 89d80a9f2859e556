"""Hostile files, made on the fly: cheap bytes that would cost a decoder dearly;
and `cost`, which measures what one costs in a fresh process.

``python -m tests.hostile`` is that process: it reads a job (JSON on its
command line, the file on stdin), warms every codec up on a tiny image,
renders, and prints the peak RSS growth and the CPU time.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from tests import CHECKOUT_DIR
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


def avif_coded(width: int, height: int, declared: int) -> bytes:
    """A flat ``width`` x ``height`` AVIF whose ``ispe`` boxes declare
    ``declared`` x ``declared``: the decoder allocates the coded size."""
    flat = Image.new("RGB", (width, height), (10, 200, 30))
    avif = bytearray(encode(flat, "AVIF"))
    ispe = avif.find(b"ispe")
    while ispe > 0:
        avif[ispe + 8 : ispe + 16] = struct.pack(">II", declared, declared)
        ispe = avif.find(b"ispe", ispe + 4)
    return bytes(avif)


def webp_with_canvas(width: int, height: int) -> bytes:
    """An animation of two 1x1 frames on a ``width`` x ``height`` canvas."""
    frames = [Image.new("RGBA", (1, 1), (255, 0, 0, 255)), Image.new("RGBA", (1, 1))]
    out = io.BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    return _on_canvas(out.getvalue(), width, height)


def _on_canvas(webp: bytes, width: int, height: int) -> bytes:
    """An animated WebP's bytes with its canvas (VP8X) said to be ``width`` x
    ``height``."""
    patched = bytearray(webp)
    vp8x = patched.index(b"VP8X")
    patched[vp8x + 12 : vp8x + 18] = (width - 1).to_bytes(3, "little") + (
        height - 1
    ).to_bytes(3, "little")
    return bytes(patched)


def flat(fmt: str, width: int, height: int, mode: str = "RGBA") -> bytes:
    """A real ``fmt`` file of one colour: many pixels in few bytes."""
    from imageserver import formats
    from tests import documents

    drawn = {
        "SVG": lambda: documents.svg(str(width), str(height)),
        "PDF": lambda: documents.pdf([(width, height, (128, 128, 128))]),
        "MP4": lambda: documents.video("h264.mp4", (width, height), frames=2),
        "MOV": lambda: documents.video("h264.mov", (width, height), frames=2),
        "WEBM": lambda: documents.video("vp9.webm", (width, height), frames=2),
    }
    if fmt in drawn:
        return drawn[fmt]()
    formats.register_plugins()
    image = Image.new(mode, (width, height), 128)
    if fmt in ("JPEG", "BMP") and mode == "RGBA":
        image = image.convert("RGB")
    options = {
        "GIF": {}, "PNG": {}, "BMP": {}, "TIFF": {"compression": "tiff_adobe_deflate"},
        "JXL": {"quality": 50, "effort": 1},
        "HEIF": {"quality": 10, "enc_params": {"preset": "ultrafast"}},
    }  # fmt: skip
    out = io.BytesIO()
    image.save(out, fmt, **options.get(fmt, {"quality": 50}))
    return out.getvalue()


def apng(width: int, height: int, frames: int) -> bytes:
    """An APNG of a flat ``width`` x ``height`` first frame and ``frames`` - 1
    more frames of one changed pixel each: the canvas x frames in a few KB."""
    row = b"\0" + b"\0" * (width * 4)
    body = zlib.compress(row * height, 9)
    chunks = [
        png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)),
        png_chunk(b"acTL", struct.pack(">II", frames, 0)),
    ]
    sequence = 0
    for index in range(frames):
        w, h = (width, height) if index == 0 else (1, 1)
        control = struct.pack(">IIIIIHHBB", sequence, w, h, 0, 0, 10, 100, 0, 0)
        chunks.append(png_chunk(b"fcTL", control))
        sequence += 1
        if index == 0:
            chunks.append(png_chunk(b"IDAT", body))
        else:
            pixel = zlib.compress(b"\0" + bytes((index % 256, 0, 0, 255)))
            chunks.append(png_chunk(b"fdAT", struct.pack(">I", sequence) + pixel))
            sequence += 1
    chunks.append(png_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def gif_animation(width: int, height: int, frames: int) -> bytes:
    """A GIF of a flat ``width`` x ``height`` first frame and ``frames`` - 1
    frames of one pixel."""
    first = encode(Image.new("P", (width, height), 0), "GIF")
    pixel = (
        b"\x21\xf9\x04\x04\x0a\x00\x00\x00"  # graphic control: 100 ms
        + b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00"  # 1x1 at 0,0
        + b"\x02\x02\x44\x01\x00"  # LZW: one pixel of colour 0
    )
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    header = 13 + (3 << ((first[10] & 7) + 1) if first[10] & 0x80 else 0)
    return first[:header] + loop + first[header:-1] + pixel * (frames - 1) + b";"


def webp_animation(width: int, height: int, frames: int) -> bytes:
    """An animated WebP of ``frames`` 1x1 frames on a ``width`` x ``height``
    canvas."""
    images = [Image.new("RGBA", (1, 1), (i % 256, 0, 0, 255)) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "WEBP", save_all=True, append_images=images[1:],
                   lossless=True, duration=100)  # fmt: skip
    return _on_canvas(out.getvalue(), width, height)


def avif_animation(width: int, height: int, frames: int) -> bytes:
    """A real animated AVIF of ``frames`` flat frames (AVIF frames have the
    canvas' size)."""
    images = [
        Image.new("RGB", (width, height), (i * 40 % 256, 0, 0)) for i in range(frames)
    ]
    out = io.BytesIO()
    images[0].save(out, "AVIF", save_all=True, append_images=images[1:],
                   duration=100, speed=10, quality=10)  # fmt: skip
    return out.getvalue()


def tiff_pages(
    pages: int, width: int = 1, height: int = 1, data: bytes = b"\0"
) -> bytes:
    """A greyscale TIFF of ``pages`` pages: the first 1x1, the others
    ``width`` x ``height`` with ``data`` (deflated) as their one strip."""
    out = bytearray(b"II*\x00\x08\x00\x00\x00")
    for index in range(pages):
        w, h, strip = (1, 1, b"\0") if index == 0 else (width, height, data)
        compression = 1 if index == 0 else 8
        entries = [(256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, compression),
                   (262, 3, 1), (273, 4, 0), (278, 4, h),
                   (279, 4, len(strip))]  # fmt: skip
        ifd_size = 2 + 12 * len(entries) + 4
        strip_at = len(out) + ifd_size
        following = strip_at + len(strip) + (len(strip) & 1)
        out += struct.pack("<H", len(entries))
        for tag, kind, value in entries:
            out += struct.pack("<HHII", tag, kind, 1, strip_at if tag == 273 else value)
        out += struct.pack("<I", following if index < pages - 1 else 0)
        out += strip + b"\0" * (len(strip) & 1)
    return bytes(out)


def tiled_tiff(width: int, height: int, tile_width: int, tile_length: int) -> bytes:
    """A greyscale TIFF of ``width`` x ``height`` in deflated tiles of
    ``tile_width`` x ``tile_length`` (Pillow writes strips only)."""
    across, down = -(-width // tile_width), -(-height // tile_length)
    tile = zlib.compress(b"\x80" * (tile_width * tile_length), 9)
    count = across * down
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8),
               (259, 3, 1, 8), (262, 3, 1, 1), (322, 4, 1, tile_width),
               (323, 4, 1, tile_length), (324, 4, count, 0),
               (325, 4, count, 0)]  # fmt: skip
    ifd_size = 2 + 12 * len(entries) + 4
    arrays_at = 8 + ifd_size
    tiles_at = arrays_at + 8 * count
    offsets = [tiles_at + i * len(tile) for i in range(count)]
    out = bytearray(b"II*\x00\x08\x00\x00\x00")
    out += struct.pack("<H", len(entries))
    for tag, kind, n, value in entries:
        if tag in (324, 325):
            value = arrays_at if tag == 324 and n > 1 else value
            value = arrays_at + 4 * count if tag == 325 and n > 1 else value
            if n == 1:
                value = offsets[0] if tag == 324 else len(tile)
        out += struct.pack("<HHII", tag, kind, n, value)
    out += struct.pack("<I", 0)
    if count > 1:
        out += struct.pack(f"<{count}I", *offsets)
        out += struct.pack(f"<{count}I", *[len(tile)] * count)
    else:
        out += b"\0" * 8
    return bytes(out + tile * count)


def retiled(tiff: bytes, kind: int, repeat: bool = False) -> bytes:
    """A classic little-endian TIFF's TileWidth and TileLength given as
    field type ``kind`` (8 SSHORT and 9 SLONG inline; 16 LONG8, eight bytes,
    out of line), or with ``repeat``, TileWidth given again as 16 after it."""
    out = bytearray(tiff)
    (count,) = struct.unpack_from("<H", out, 8)
    entries = [out[10 + 12 * i : 22 + 12 * i] for i in range(count)]
    tail = bytearray()
    for index, entry in enumerate(entries):
        tag, _, number, value = struct.unpack("<HHII", entry)
        if tag in (322, 323):
            if kind == 16:
                value = len(out) + 12 * repeat + len(tail)
                tail += struct.pack("<Q", struct.unpack_from("<I", entry, 8)[0])
            entries[index] = bytearray(struct.pack("<HHII", tag, kind, number, value))
    if repeat:
        entries.insert(
            next(i for i, e in enumerate(entries) if e[:2] == b"\x42\x01") + 1,
            bytearray(struct.pack("<HHII", 322, 3, 1, 16)),
        )
    shift = 12 * repeat
    ifd = bytearray(struct.pack("<H", len(entries)))
    for entry in entries:
        tag, kind_, number, value = struct.unpack("<HHII", entry)
        if tag in (273, 279, 324, 325) or (tag in (322, 323) and kind_ == 16):
            value += shift if value >= 10 + 12 * count else 0
        ifd += struct.pack("<HHII", tag, kind_, number, value)
    rest = out[10 + 12 * count :]
    return bytes(out[:8] + ifd + rest + tail)


def heif_images(count: int, side: int) -> bytes:
    """A HEIF with ``count`` top-level images (not an animation)."""
    from imageserver import formats

    formats.register_plugins()
    images = [
        Image.new("RGB", (side, side), (i * 20 % 256, 90, 0)) for i in range(count)
    ]
    out = io.BytesIO()
    images[0].save(out, "HEIF", save_all=True, append_images=images[1:],
                   quality=10, enc_params={"preset": "ultrafast"})  # fmt: skip
    return out.getvalue()


def mpo(width: int, height: int) -> bytes:
    """An MPO (a JPEG with more pictures appended) of a 16x16 picture and a
    ``width`` x ``height`` one."""
    images = [
        Image.new("RGB", (16, 16), "red"),
        Image.new("RGB", (width, height), "blue"),
    ]
    out = io.BytesIO()
    images[0].save(out, "MPO", save_all=True, append_images=images[1:])
    return out.getvalue()


@dataclass(frozen=True)
class Cost:
    #: Growth of the peak resident set (VmHWM) over the warmed-up process, MB.
    rss_mb: float
    #: CPU time of the work, all threads, seconds.
    cpu_s: float
    #: "ok", or the error's class and message.
    outcome: str


@dataclass(frozen=True)
class Job:
    """One measurement: probe (``upload``) and render ``variants`` (a
    comma-separated ``?outputs=`` list) of ``data`` under ``limits``
    (renderer.Limits' fields; the server's defaults otherwise)."""

    data: bytes
    variants: str = ""
    upload: bool = True
    limits: dict[str, Any] | None = None
    #: Watermarks the variants may name, and their originals' bytes.
    marks: dict[str, bytes] | None = None


def cost(data: bytes, variants: str = "", upload: bool = True, **limits: Any) -> Cost:
    """What one job costs, measured in a fresh process."""
    return costs([Job(data, variants, upload, limits)])[0]


def costs(jobs: list[Job], code: str | None = None) -> list[Cost]:
    """What each job costs, in one fresh process (so nothing of the test's own
    is counted), one after the other, the peak reset before each; ``code``:
    a folder whose ``imageserver`` to measure instead (an older one)."""
    root = CHECKOUT_DIR
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (code, root)))}
    with tempfile.TemporaryDirectory() as folder:
        described = []
        for index, job in enumerate(jobs):
            path = os.path.join(folder, str(index))
            with open(path, "wb") as f:
                f.write(job.data)
            marks = {}
            for name, mark in (job.marks or {}).items():
                marks[name] = f"{path}.{name}"
                with open(marks[name], "wb") as f:
                    f.write(mark)
            described.append(
                {"path": path, "variants": job.variants, "upload": job.upload,
                 "limits": job.limits or {}, "marks": marks}
            )  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "tests.hostile"],
            input=json.dumps(described).encode(), capture_output=True, env=env,
            check=True, timeout=600, cwd=code or root,
        )  # fmt: skip
    return [Cost(**json.loads(line)) for line in done.stdout.decode().splitlines()]


def _status(field: str, pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def _measure(jobs: list[dict[str, Any]]) -> None:
    from imageserver import formats
    from imageserver.imaging import renderer
    from imageserver.naming import VariantRules

    rules = VariantRules(frozenset(formats.OUTPUTS), 0, 100_000)
    formats.register_plugins()
    warm = rules.parse_outputs(
        ",".join(f"w4.{ext}" for ext, row in formats.OUTPUTS.items() if not row.markup)
    )
    default = renderer.Limits(pixels=50_000_000, pixels_per_byte=1000, side=100_000)
    for fmt in (name for name, row in formats.INPUTS.items() if not row.drawn):
        tiny = io.BytesIO()
        image = Image.new("RGB", (8, 8), "red")
        image.save(tiny, fmt, **({"quality": 50} if fmt in ("HEIF", "JXL") else {}))
        renderer.render_many(tiny.getvalue(), warm, default, with_placeholders=True)
    # The face detector loaded (once per process, for the first crop that
    # looks: not a cost of any one file).
    renderer.render_many(tiny.getvalue(), (), default, with_faces=True)
    # And the quality levels' metric (OpenCV's filters, once per process).
    renderer.render_many(tiny.getvalue(), rules.parse_outputs("w8-qgood.jpg"), default)
    for job in jobs:
        # Each job in a fork of the warmed-up process: it starts from the
        # same state whatever the jobs before it left behind.
        reader, writer = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(reader)
            try:
                _warm_rasteriser(rules, default)
                measured = _one(job, default, rules)
            except BaseException as e:  # said in the answer, not a blank line
                measured = {"rss_mb": 0, "cpu_s": 0, "outcome": f"job failed: {e!r}"}
            os.write(writer, json.dumps(measured).encode())
            os._exit(0)
        os.close(writer)
        with os.fdopen(reader) as answer:
            result = answer.read()
        os.waitpid(child, 0)
        print(result, flush=True)


def _warm_rasteriser(rules: Any, default: Any) -> None:
    """A rasteriser process of this fork's own, its libraries loaded (by a
    drawing of each kind): its start is no cost of the job."""
    from imageserver import formats
    from imageserver.imaging import documents, renderer

    documents._shared = None  # the parent's children are not this fork's
    documents._probes.clear()
    warm = rules.parse_outputs("w4.png")
    for name, row in formats.INPUTS.items():
        if row.drawn:
            renderer.render_many(flat(name, 16, 16), warm, default)


def _children() -> dict[int, tuple[float, int, int]]:
    """Each live rasteriser process: its CPU seconds, resident and peak KB."""
    from imageserver.imaging import documents

    found = {}
    for pid in documents.shared().pids():
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
            ticks = os.sysconf("SC_CLK_TCK")
            cpu = (int(fields[11]) + int(fields[12])) / ticks
            found[pid] = (cpu, _status("VmRSS", pid), _status("VmHWM", pid))
        except (OSError, LookupError):
            continue
    return found


def _one(job: dict[str, Any], default: Any, rules: Any) -> dict[str, Any]:
    from imageserver.errors import ImageServerError
    from imageserver.imaging import renderer

    with open(job["path"], "rb") as f:
        data = f.read()
    fields = dict(job["limits"])
    if "documents" in fields:  # the rasteriser's limits, by their fields
        fields["documents"] = replace(default.documents, **fields["documents"])
    limits = replace(default, **fields)
    marks = {}
    for name, path in job["marks"].items():
        with open(path, "rb") as f:
            marks[name] = f.read()
    hashes = {name: hashlib.md5(mark).hexdigest() for name, mark in marks.items()}
    if hashes:
        rules = replace(rules, watermarks=tuple(hashes.items()))
    variants = rules.parse_outputs(job["variants"]) if job["variants"] else ()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # the peak restarts from what is resident now
    for pid in _children():
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
    children = _children()
    before = _status("VmRSS")
    start = resource.getrusage(resource.RUSAGE_SELF)
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        renderer.render_many(
            data,
            variants,
            limits,
            with_placeholders=job["upload"],
            marks={hashes[name]: mark for name, mark in marks.items()},
        )
        outcome = "ok"
    except ImageServerError as e:  # named by its public class
        public = next(c for c in type(e).__mro__ if not c.__name__.startswith("_"))
        outcome = f"{public.__name__}: {e}"
    end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = end.ru_utime + end.ru_stime - start.ru_utime - start.ru_stime
    growth = (_status("VmHWM") - before) / 1024
    # The rasteriser's part: what its live processes grew and spent, and
    # what those that ended in the job (killed at a limit) peaked at.
    for pid, (spent, _, peak) in _children().items():
        was_cpu, was_rss, _ = children.get(pid, (0.0, 0, 0))
        cpu += spent - was_cpu
        growth = max(growth, (peak - was_rss) / 1024)
    gone = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu += gone.ru_utime + gone.ru_stime - ended.ru_utime - ended.ru_stime
    if gone.ru_maxrss > ended.ru_maxrss:
        growth = max(growth, gone.ru_maxrss / 1024)
    return {"rss_mb": round(growth, 1), "cpu_s": round(cpu, 2), "outcome": outcome}


if __name__ == "__main__":
    _measure(json.loads(sys.stdin.buffer.read()))
