"""Drawn originals: CPU of a video's poster (1080p and 4K), a PDF's cover and
an SVG's drawing, against the same work done directly with the library.

    python3 benchmarks/documents.py [--rounds 25]

Each round alternates the two ways on the same file, so the machine's noise
falls on both. CPU is the whole work's: this process's (Pillow's encode, the
pipes) and the rasteriser process's (the decode or drawing, from the
scheduler's count in /proc/PID/schedstat) before and after.

- **server**: `renderer.render_many` of ``w400.jpg`` (``w400.png`` for the
  SVG) of an original the process has not seen: a probe and a drawing (two
  jobs of the rasteriser). Each round takes the next of five files, so no
  cache of the last file helps. ``then`` is a second variant (``w200``) of
  the same original right after: the probe is known, and the rasteriser
  keeps the video's container and poster frame.
- **library**: the library in this process: PyAV opens the file, decodes the
  first key frame and scales it to 400 wide in FFmpeg's scaler; PDFium opens
  the document and draws page 1 at 400 wide; resvg draws the SVG at 400
  wide; then the JPEG (the PNG) is encoded as the server encodes it
  (jpegli for JPEG).

The target is a ratio under 1.2 (docs/performance.md).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import av
import numpy as np
from PIL import Image

from imageserver.config import Config
from imageserver.imaging import documents, renderer
from imageserver.naming import VariantRules

RULES = VariantRules(frozenset({"jpg", "png"}), 0, 4000)
LIMITS = Config().decode_limits


def video(size: tuple[int, int], codec: str, frames: int = 30, seed: int = 0) -> bytes:
    """A video with a photograph's detail: a drifting noisy gradient."""
    width, height = size
    rng = np.random.default_rng(seed)
    grain = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
    ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
    out = io.BytesIO()
    container = av.open(out, "w", format="mp4")
    stream = container.add_stream(codec, rate=30)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.options = {"preset": "ultrafast", "crf": "23"}
    if codec == "libx265":  # not a line per frame on stderr
        stream.options = {**stream.options, "x265-params": "log-level=none"}
    for index in range(frames):
        picture = (ramp + index + grain).astype(np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(picture, "rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return out.getvalue()


def brochure(seed: int = 0) -> bytes:
    """A PDF whose first page is a 6 MP photograph, as a brochure's cover."""
    box = (-2.0 + seed / 100, -1.2, 1.0, 1.2)
    photo = Image.effect_mandelbrot((3000, 2000), box, 200)
    pdf = io.BytesIO()
    photo.convert("RGB").save(pdf, "PDF", resolution=300, quality=90)
    return pdf.getvalue()


def logo(seed: int = 0) -> bytes:
    """An SVG logo: gradients, paths, a stroke, text."""
    paths = "".join(
        f'<path d="M{10 + i * 7},{200 - i * 3 - seed} '
        f"C{60 + i},{20 + i} {140 - i},{20 + i} "
        f'{190 - i * 7},{200 - i * 3}" stroke="url(#g)" stroke-width="3" fill="none"/>'
        for i in range(24)
    )
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 200 220" '
        'width="200" height="220"><defs><linearGradient id="g">'
        '<stop offset="0" stop-color="#0af"/><stop offset="1" stop-color="#f0a"/>'
        '</linearGradient><radialGradient id="r"><stop offset="0" '
        'stop-color="#fff"/><stop offset="1" stop-color="#036"/></radialGradient>'
        '</defs><circle cx="100" cy="110" r="95" fill="url(#r)"/>'
        f'{paths}<text x="100" y="210" font-size="18" text-anchor="middle">'
        "imageserver</text></svg>"
    ).encode()


def server(data: bytes, name: str) -> Callable[[], None]:
    variants = [RULES.canonical(name)]

    def run() -> None:
        renderer.render_many(data, variants, LIMITS)

    return run


def direct_video(data: bytes) -> Callable[[], None]:
    def run() -> None:
        container = av.open(io.BytesIO(data), format="mov")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        stream.codec_context.skip_frame = "NONKEY"
        frame = next(container.decode(stream))
        height = round(frame.height * 400 / frame.width)
        image = frame.reformat(400, height, "rgb24", interpolation="AREA").to_image()
        container.close()
        _encode(image, "w400.jpg")

    return run


def _encode(image: Image.Image, name: str) -> None:
    """The output encoded as the server encodes it (jpegli for JPEG)."""
    variant = RULES.canonical(name)
    assert variant is not None
    renderer._encode(image, variant)


def direct_pdf(data: bytes) -> Callable[[], None]:
    import pypdfium2 as pdfium  # type: ignore[import-untyped]

    def run() -> None:
        document = pdfium.PdfDocument(data)
        page = document[0]
        width, _ = page.get_size()
        image = page.render(scale=400 / width, fill_color=(255, 255, 255, 255))
        _encode(image.to_pil().convert("RGB"), "w400.jpg")

    return run


def direct_svg(data: bytes) -> Callable[[], None]:
    import resvg_py  # type: ignore[import-untyped]

    def run() -> None:
        png = resvg_py.svg_to_bytes(svg_string=data.decode(), width=400,
                                    skip_system_fonts=True,
                                    font_files=[documents_font()])  # fmt: skip
        image = Image.open(io.BytesIO(png))
        image.load()
        _encode(image, "w400.png")

    return run


def documents_font() -> str:
    from imageserver.imaging import rasteriser

    return rasteriser.FONT


def _cpu() -> float:
    """This process's CPU and its rasteriser children's, in seconds (the
    children's from the scheduler's count in nanoseconds: /proc's ticks are
    10 ms, as much as a small poster costs)."""
    total = time.process_time()
    for pid in documents.shared().pids():
        with open(f"/proc/{pid}/schedstat") as stat:
            total += int(stat.read().split()[0]) / 1e9
    return total


def measure(work: Callable[[], None]) -> float:
    start = _cpu()
    work()
    return (_cpu() - start) * 1000


FILES = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    rounds = parser.parse_args().rounds
    hd, uhd = (1920, 1080), (3840, 2160)
    cases = {
        "video 1080p H.264 poster": (
            lambda i: video(hd, "libx264", 30, i), "jpg", direct_video),
        "video 4K H.264 poster": (
            lambda i: video(uhd, "libx264", 10, i), "jpg", direct_video),
        "video 4K HEVC poster": (
            lambda i: video(uhd, "libx265", 10, i), "jpg", direct_video),
        "PDF cover (6 MP photo page)": (brochure, "jpg", direct_pdf),
        "SVG logo at 400": (logo, "png", direct_svg),
    }  # fmt: skip
    print(
        f"CPU ms, median of {rounds} alternating rounds; ratio: the median "
        "of each round's server / library"
    )
    for name, (make, ext, direct) in cases.items():
        files = [make(seed) for seed in range(FILES)]
        server(files[-1], f"w400.{ext}")()  # the rasteriser started
        direct(files[-1])()
        times: dict[str, list[float]] = {"server": [], "then": [], "direct": []}
        for index in range(rounds):
            data = files[index % FILES]
            documents._probes.clear()  # an original this process has not seen
            times["server"].append(measure(server(data, f"w400.{ext}")))
            times["then"].append(measure(server(data, f"w200.{ext}")))
            times["direct"].append(measure(direct(data)))
        med = {k: statistics.median(v) for k, v in times.items()}
        # Each round's own ratio: a drift of the machine's pace between
        # rounds falls on both of its terms.
        ratio = statistics.median(
            s / d for s, d in zip(times["server"], times["direct"], strict=True)
        )
        print(
            f"  {name:30} server {med['server']:7.1f}  library {med['direct']:7.1f}"
            f"  ratio {ratio:.2f}  (then w200: {med['then']:6.1f})"
        )
    documents.close()


if __name__ == "__main__":
    main()
