"""Videos, PDFs and SVGs made by the tests: each frame, page and shape of a
known colour, so a test can tell which one an output shows.

Videos are encoded by PyAV (the binding the server decodes with), PDFs
written by hand (vector pages, any size) or by Pillow (raster pages), SVGs
by hand.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import av
import numpy as np
from PIL import Image

#: Encoders and containers of the videos tests make, by name.
VIDEO_KINDS = {
    "h264.mp4": ("libx264", "mp4", {"preset": "ultrafast"}),
    "hevc.mp4": (
        "libx265",
        "mp4",
        {"preset": "ultrafast", "x265-params": "log-level=none"},
    ),
    "h264.mov": ("libx264", "mov", {"preset": "ultrafast"}),
    "vp9.webm": ("libvpx-vp9", "webm", {"deadline": "realtime", "cpu-used": "8"}),
    "vp8.webm": ("libvpx", "webm", {"deadline": "realtime", "cpu-used": "8"}),
    "av1.mp4": ("libsvtav1", "mp4", {"preset": "12"}),
}


def frame_colour(index: int) -> tuple[int, int, int]:
    """Frame ``index``'s colour: red counts frames in steps of 16, green
    counts sixteens, so any of 224 frames in a row can be told from every
    other after lossy coding (they differ by 16 in a channel at least)."""
    return (16 * (index % 16) + 8, 24 + 16 * ((index // 16) % 14), 64)


def video(kind: str = "h264.mp4", *args: Any, **options: Any) -> bytes:
    """`_video`, tried again where the encoder fails: PyAV's libx265 fails
    about one encode in three here with EINVAL or ENOSYS (the same options
    and frames succeed the next time)."""
    for _ in range(9):
        try:
            return _video(kind, *args, **options)
        except av.FFmpegError:
            continue
    return _video(kind, *args, **options)


def _video(
    kind: str = "h264.mp4",
    size: tuple[int, int] = (320, 240),
    frames: int = 30,
    rate: int = 10,
    key_every: int = 10,
    dark: int = 0,
    rotation: int = 0,
) -> bytes:
    """A video of ``frames`` frames at ``rate`` per second: frame i is
    `frame_colour` (i), with a white top-left quarter; the first ``dark``
    frames are black (a fade-in). Key frames every ``key_every`` frames."""
    codec, container_format, options = VIDEO_KINDS[kind]
    out = io.BytesIO()
    container = av.open(out, "w", format=container_format)
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.options = {**options, "g": str(key_every)}
    if codec == "libx264":
        stream.options["x264-params"] = (
            f"keyint={key_every}:min-keyint={key_every}:scenecut=0"
        )
    if rotation:
        stream.set_display_rotation(rotation)
    width, height = size
    for index in range(frames):
        picture = np.zeros((height, width, 3), np.uint8)
        if index >= dark:
            picture[:] = frame_colour(index)
            picture[: height // 2, : width // 2] = 255
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return out.getvalue()


def pdf(
    pages: Sequence[tuple[float, float, tuple[int, int, int]]], rotate: int = 0
) -> bytes:
    """A PDF of vector pages: each ``(width, height, colour)`` in points,
    its left half filled with ``colour`` and its right half black. Written
    by hand (cross-reference table and all), so a page may be any size."""
    objects: list[bytes] = []
    kids = []
    for index, (width, height, colour) in enumerate(pages):
        page_number = 3 + 2 * index
        kids.append(f"{page_number} 0 R")
        r, g, b = (c / 255 for c in colour)
        content = (
            f"{r:.4f} {g:.4f} {b:.4f} rg 0 0 {width / 2:g} {height:g} re f "
            f"0 0 0 rg {width / 2:g} 0 {width / 2:g} {height:g} re f"
        ).encode()
        rotation = f" /Rotate {rotate}" if rotate else ""
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width:g} {height:g}]"
            f"{rotation} /Contents {page_number + 1} 0 R >>".encode()
        )
        objects.append(
            b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream"
        )
    head = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode(),
    ]
    return _pdf_file(head + objects)


def _pdf_file(objects: list[bytes]) -> bytes:
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def raster_pdf(colours: Sequence[tuple[int, int, int]], size: tuple[int, int]) -> bytes:
    """A PDF Pillow writes: one page of each colour, ``size`` at 72 dpi."""
    images = [Image.new("RGB", size, colour) for colour in colours]
    out = io.BytesIO()
    images[0].save(out, "PDF", save_all=True, append_images=images[1:], resolution=72)
    return out.getvalue()


def svg(width: str = "100", height: str = "50", view_box: str = "0 0 100 50",
        body: str = "") -> bytes:  # fmt: skip
    """An SVG whose left half is red and right half blue (in a 100x50 view
    box), with ``body`` drawn after."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" '
        f'xmlns:xlink="http://www.w3.org/1999/xlink" width="{width}" '
        f'height="{height}" viewBox="{view_box}">'
        '<rect width="50" height="50" fill="#ff0000"/>'
        '<rect x="50" width="50" height="50" fill="#0000ff"/>'
        f"{body}</svg>"
    ).encode()


def busy_pdf(shapes: int, side: int = 1) -> bytes:
    """A one-page PDF (1000 points square) whose content fills ``shapes``
    squares of ``side`` points: few bytes compressed, much to parse (many
    shapes) or to draw (large ones)."""
    import zlib

    square = b"0 0 %d %d re f " % (side, side)
    content = zlib.compress(b"0 0 0 rg " + square * shapes, 9)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 1000 1000] /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content)
        + content
        + b"\nendstream",
    ]
    return _pdf_file(objects)


def junk_pdf(entries: int) -> bytes:
    """A one-page PDF whose page carries an array of ``entries`` empty
    arrays: 2 bytes each in the file, about 100 in PDFium's memory once the
    page tree is read (3,000,000: 6 MB, 300 MB)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 100] /Junk ["
        + b"[]" * entries
        + b"] >>",
    ]
    return _pdf_file(objects)
