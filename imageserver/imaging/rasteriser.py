"""The rasteriser: a child process that turns SVG, PDF and video originals
into pixels, one job at a time, under limits the kernel enforces.

Measured here: resvg's and PyAV's bindings hold the GIL while they work (a
thread counting in Python got 0.2 % of its idle pace through a 2 s SVG
render), PDFium is not thread-safe, and none of them can be stopped part way
in-process. So they run in this process, which the server's processing
threads talk to through pipes (`documents`): while one waits, the server
runs. Each job gets a CPU allowance (RLIMIT_CPU raised by it before the job:
past it the kernel kills the process); the whole process an address-space
limit (RLIMIT_AS); the parent also kills a job that outlives its wall-clock
deadline. Codecs run on one thread, as every decode of the server does.

Messages both ways are a 4-byte big-endian length and a JSON header, then
the header's ``bytes`` of payload: the file in a request, the pixels (raw,
each image's ``mode`` and size in the header) in an answer.
Run as ``python -m imageserver.imaging.rasteriser``; no Twisted.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import json
import math
import os
import re
import resource
import struct
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

from PIL import Image

from imageserver.errors import ImageTooLarge, InvalidRequest, UnsupportedImage
from imageserver.imaging import svg

#: Demuxers FFmpeg is told to use, by kind: nothing else probes the bytes
#: (no playlist or concat demuxer that would open files or URLs).
DEMUXERS = {"MP4": "mov", "MOV": "mov", "WEBM": "matroska"}
#: FFmpeg's decoders by the codec they decode (the external libraries'
#: names are the library's).
CODECS = {"libdav1d": "av1", "libaom-av1": "av1", "libvpx": "vp8", "libvpx-vp9": "vp9"}
#: Decoders that read ``skip_frame`` at each packet (dav1d's reads it once,
#: when it starts: set for a probe, it would skip for the jobs after).
SKIPS = frozenset({"h264", "hevc"})
#: The font SVG text is drawn with (no system fonts are read).
FONT = os.path.join(os.path.dirname(__file__), "fonts", "DejaVuSans-Bold.ttf")
FONT_FAMILY = "DejaVu Sans"
#: A frame judged for the default poster is "something": not near black or
#: near flat (mean and spread of its luma, 0-255).
LIVELY_MEAN = 24
LIVELY_SPREAD = 12
#: Key frames looked at for the default poster, and how far into the video.
POSTER_CANDIDATES = 6
POSTER_SECONDS = 10.0


_OUT_OF_MEMORY = (
    "drawing it needs more memory than the rasteriser may have (--rasterise_memory)"
)


def main() -> None:
    """Serve jobs from stdin until it closes."""
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing a library prints reaches the pipe
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    memory = int(os.environ.get("IMAGESERVER_RASTERISER_MEMORY", "0"))
    if memory:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    kept = ("", b"")  # the last file, by its digest: sent once for its jobs
    while True:
        request = _read(source)
        if request is None:
            return
        header, payload = request
        if payload or header["digest"] != kept[0]:
            kept = (header["digest"], payload)
        payload = kept[1]
        _allow_cpu(float(header.get("seconds", 0)))
        try:
            answer, data = _run(header, payload)
        except (UnsupportedImage, ImageTooLarge, InvalidRequest) as e:
            answer, data = {"error": type(e).__name__, "message": str(e)}, b""
            if _of_memory(e.__context__):  # a library's allocation failed
                answer["error"] = "OutOfMemory"
        except (MemoryError, ImportError):  # ImportError: a library that
            # could not be loaded in the space left
            answer, data = {"error": "OutOfMemory", "message": _OUT_OF_MEMORY}, b""
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # a library's own failure (resvg panics)
            answer = {"error": "UnsupportedImage", "message": _reason(header)}
            data = b""
        _write(sink, answer, data)
        _release()


#: Resident bytes past which a process gives back what it holds between
#: jobs: an idle one held 220 MB after a large drawing, and 1.9 GB with the
#: document of a 40 MB PDF kept open. Below, the memory is kept for the next
#: job (given back after every job, small posters cost 30 % more CPU,
#: faulting their pages in again).
KEEP_RESIDENT = 192 * 1024 * 1024


def _release() -> None:
    """Past `KEEP_RESIDENT`, close the document or container kept for the
    next job and give back to the system what was freed (glibc keeps freed
    memory for the next allocation)."""
    with contextlib.suppress(OSError, AttributeError, ValueError):  # not glibc
        with open("/proc/self/statm") as statm:
            resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        if resident > KEEP_RESIDENT:
            _forget()
            ctypes.CDLL(None).malloc_trim(0)


def _forget() -> None:
    """Close what is kept open for the jobs that follow (the file stays);
    a library's failure to close is no job's."""
    for document in _pdf_opened.values():
        with contextlib.suppress(Exception):
            document.close()
    _pdf_opened.clear()
    for container, _ in _opened.values():
        with contextlib.suppress(Exception):
            container.close()
    _opened.clear()
    _first_frames.clear()


#: What a library's message says that is no business of a client's: FFmpeg's
#: error numbers and its empty file name, paths on the server.
_INTERNALS = re.compile(r"\[Errno -?[0-9]+\]\s*|:\s*'<none>'|(?:/[A-Za-z0-9_.+-]+){2,}")


def _said(e: BaseException) -> str:
    """What a library's error says, without its internals."""
    return (_INTERNALS.sub("", str(e)).strip(" :") or type(e).__name__)[:300]


#: What a library's own failure in a job is said to be, by kind (its own
#: text is no client's business: FFmpeg's error numbers, a Rust panic's).
_FAILURES = {
    "SVG": "the SVG could not be drawn",
    "PDF": "the PDF could not be drawn: it is corrupt",
}
_VIDEO_FAILURE = (
    "the video could not be decoded: it is cut short or corrupt, or a frame "
    "is past the pixel limit (--max_source_pixels)"
)


def _of_memory(cause: BaseException | None) -> bool:
    """Whether a library's failure was an allocation's: a MemoryError,
    FFmpeg's ENOMEM, or libxml2's own words at the start of its message
    (never a word anywhere in it: the file's text appears there too)."""
    if cause is None:
        return False
    return (
        isinstance(cause, MemoryError)
        or getattr(cause, "errno", None) == errno.ENOMEM
        or str(cause).startswith("Memory allocation failed")
    )


def _reason(header: dict[str, Any]) -> str:
    return _FAILURES.get(str(header.get("kind")), _VIDEO_FAILURE)


def _allow_cpu(seconds: float) -> None:
    """Let the coming job use ``seconds`` more of CPU; past it, SIGXCPU."""
    if seconds <= 0:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    soft = math.ceil(used + seconds)  # whole seconds: up to one more
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _read(source: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    head = source.read(4)
    if len(head) < 4:
        return None
    (length,) = struct.unpack(">I", head)
    header = json.loads(source.read(length))
    payload = source.read(int(header.get("bytes", 0)))
    return header, payload


def _write(sink: BinaryIO, header: dict[str, Any], payload: bytes) -> None:
    header = {**header, "bytes": len(payload)}
    encoded = json.dumps(header).encode()
    sink.write(struct.pack(">I", len(encoded)) + encoded)
    sink.write(payload)
    sink.flush()


def _run(header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    kind, job = header["kind"], header["job"]
    if kind == "SVG":
        return _svg(job, data, header)
    if kind == "PDF":
        return _pdf(job, data, header)
    if kind in DEMUXERS:
        return _video(kind, job, data, header)
    raise UnsupportedImage(f"no rasteriser for {kind}")


def _pictures(images: list[Image.Image], **more: Any) -> tuple[dict[str, Any], bytes]:
    described = [{"mode": i.mode, "size": list(i.size)} for i in images]
    return {"images": described, **more}, b"".join(i.tobytes() for i in images)


def _need(header: dict[str, Any], width: float, height: float) -> tuple[int, int]:
    """The size to draw a ``width`` x ``height`` picture at: the box the
    job asks for, ratio kept (at least 1 pixel a side)."""
    box_w, box_h = header["size"]
    scale = min(box_w / width, box_h / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


# SVG


def _svg_limits(header: dict[str, Any]) -> svg.SvgLimits:
    return svg.SvgLimits(**header["limits"]["svg"])


def _svg(job: str, data: bytes, header: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    cleaned = svg.clean(data, _svg_limits(header))
    if job == "probe":
        return {"width": cleaned.width, "height": cleaned.height}, b""
    if job == "clean":
        return {"width": cleaned.width, "height": cleaned.height}, cleaned.data
    import resvg_py  # type: ignore[import-untyped]

    width, height = _need(header, cleaned.width, cleaned.height)
    try:
        png = resvg_py.svg_to_bytes(
            svg_string=cleaned.at(width, height).decode(),
            skip_system_fonts=True,
            font_files=[FONT],
            # Every family, generic or named, falls back to the one font.
            font_family=FONT_FAMILY,
            serif_family=FONT_FAMILY,
            sans_serif_family=FONT_FAMILY,
            cursive_family=FONT_FAMILY,
            fantasy_family=FONT_FAMILY,
            monospace_family=FONT_FAMILY,
        )
    except ValueError:
        raise UnsupportedImage("the SVG could not be drawn") from None
    image = Image.open(io.BytesIO(png))
    image.load()
    return _pictures([image.convert("RGBA")])


# PDF


#: The document opened last, by the file's digest (its cross-reference
#: read once for the probe and the drawings after it).
_pdf_opened: dict[str, Any] = {}


def _pdf_document(data: bytes, header: dict[str, Any]) -> Any:
    key = json.dumps([header["digest"], header["limits"]["pages"]])
    if key not in _pdf_opened:
        for document in _pdf_opened.values():
            document.close()
        _pdf_opened.clear()
        _pdf_opened[key] = _pdf_read(data, header)
    return _pdf_opened[key]


def _pdf_read(data: bytes, header: dict[str, Any]) -> Any:
    import pypdfium2 as pdfium  # type: ignore[import-untyped]

    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as e:
        raise UnsupportedImage(f"the PDF could not be read: {_said(e)}") from None
    pages = len(document)
    most = header["limits"]["pages"]
    if pages > most:
        raise ImageTooLarge(
            f"the PDF has {pages} pages, more than {most} (--max_pdf_pages)"
        )
    if pages < 1:
        raise UnsupportedImage("the PDF has no pages")
    return document


def _page_size(page: Any) -> tuple[float, float]:
    """A page's size in points as shown (its rotation applied)."""
    width, height = page.get_size()  # PDFium's: already turned
    return float(width), float(height)


def _pdf(job: str, data: bytes, header: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    document = _pdf_document(data, header)
    pages = len(document)
    index = int(header.get("page", 1))
    if index > pages:
        raise InvalidRequest(
            f"page {index} was asked for, and the PDF has {pages} "
            f"page{'s' if pages > 1 else ''}"
        )
    if job == "probe":  # the size from the page tree, the page not loaded
        width, height = document.get_page_size(index - 1)
        return {"width": width, "height": height, "pages": pages}, b""
    page = document[index - 1]
    try:
        width, height = _page_size(page)
        need_w, need_h = _need(header, width, height)
        bitmap = page.render(
            scale=min(need_w / width, need_h / height),
            fill_color=(255, 255, 255, 255),
            may_draw_forms=True,
        )
        image = bitmap.to_pil().convert("RGB")
        bitmap.close()
    finally:
        page.close()  # its parsed content: not kept with the document
    if image.size != (need_w, need_h):
        image = image.resize((need_w, need_h), Image.Resampling.BICUBIC)
    return _pictures([image])


# Video


#: The container opened last, by the file's digest: opening one reads its
#: first frames (FFmpeg's stream probe: as much CPU as decoding a frame), so
#: the drawings that follow a probe use it again.
_opened: dict[str, tuple[Any, Any]] = {}


def _no_other_file(url: str, flags: int, options: dict[str, str]) -> Any:
    """What FFmpeg is given when a demuxer asks to open another file or URL
    (a playlist's, a reference's): nothing."""
    raise UnsupportedImage("the video refers to another file")


def _video_open(kind: str, data: bytes, header: dict[str, Any]) -> tuple[Any, Any]:
    # Checked at the open: kept for the same file under the same limits.
    key = json.dumps([kind, header["digest"], header["pixels"], header["limits"]])
    if key in _opened:
        return _opened[key]
    for container, _ in _opened.values():
        container.close()
    _opened.clear()
    import av

    limits = header["limits"]
    try:
        container = av.open(
            io.BytesIO(data),
            format=DEMUXERS[kind],
            options={"enable_drefs": "0", "probesize": "5000000"},
            io_open=_no_other_file,
        )
    except av.FFmpegError as e:
        raise UnsupportedImage(f"the video could not be read: {_said(e)}") from None
    if not container.streams.video:
        raise UnsupportedImage("the file has no video stream")
    stream = container.streams.video[0]
    codec = codec_name(stream)
    if codec not in limits["codecs"]:
        raise UnsupportedImage(
            f"the video is coded in {codec}; accepted: "
            f"{', '.join(limits['codecs'])} (--video_codecs)"
        )
    width, height = stream.codec_context.width, stream.codec_context.height
    if width < 1 or height < 1:
        raise UnsupportedImage("the video has no picture size")
    if width * height > header["pixels"]:
        raise ImageTooLarge(
            f"the image is {width}x{height}, over the limit of "
            f"{header['pixels']} pixels"
        )
    stream.codec_context.thread_count = 1
    stream.codec_context.thread_type = "NONE"
    # The decoder refuses a frame past the limit: a stream whose frames
    # grow after the first (the container's size is the first's).
    stream.codec_context.options = {"max_pixels": str(header["pixels"])}
    _opened[key] = container, stream
    return container, stream


def codec_name(stream: Any) -> str:
    name = str(stream.codec_context.name)
    return CODECS.get(name, name)


def _seconds(container: Any, stream: Any) -> float | None:
    """The video's length as its container declares it; None where it
    declares none that is positive."""
    seconds = None
    if stream.duration is not None and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        # Matroska's is the last time, counted from zero, not from the first
        # frame (a clip cut from 10 s declares 13 s for its 3).
        seconds = container.duration / 1_000_000 - _start(stream)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds


def _start(stream: Any) -> float:
    """When the stream's first frame is shown: times are counted from it."""
    if stream.start_time is not None and stream.time_base:
        return float(stream.start_time * stream.time_base)
    return 0.0


def _video(
    kind: str, job: str, data: bytes, header: dict[str, Any]
) -> tuple[dict[str, Any], bytes]:
    container, stream = _video_open(kind, data, header)
    try:
        return _video_job(container, stream, job, header)
    except BaseException:
        container.close()  # in whatever state the failure left it
        _opened.clear()
        raise


def _video_job(
    container: Any, stream: Any, job: str, header: dict[str, Any]
) -> tuple[dict[str, Any], bytes]:
    limits = header["limits"]
    seconds = _seconds(container, stream)
    if seconds is not None and seconds > limits["seconds"]:
        raise ImageTooLarge(
            f"the video is {seconds:.0f} s long, over the limit of "
            f"{limits['seconds']:g} s (--max_video_seconds)"
        )
    budget = [int(limits["decoded"])]
    if job == "probe":
        # The first key frame: a decoder that holds frames back to reorder
        # them (HEVC's) decodes the frames after it before giving it out.
        # (Theirs give out no frame before a key frame anyway.)
        if codec_name(stream) in SKIPS:
            stream.codec_context.skip_frame = "NONKEY"
        try:
            first = next(_decoded(container, stream, 0.0, budget), None)
        finally:
            stream.codec_context.skip_frame = "DEFAULT"
        if first is None:
            raise UnsupportedImage("the video has no frame that decodes")
        _first_frames.clear()
        if first.key_frame and _lively(first):  # the poster, most often
            _first_frames[header["digest"]] = first
        width, height = _shown_size(stream, first)
        rate = stream.average_rate or stream.guessed_rate
        count = int(stream.frames or 0)
        if not count and seconds and rate:  # a container that counts none
            count = max(1, round(seconds * float(rate)))
        return {
            "width": width,
            "height": height,
            "seconds": seconds,
            "frame_rate": None if rate is None else float(rate),
            "frames": count,
            "codec": codec_name(stream),
        }, b""
    times = header.get("times")
    if times:  # a preview: the frame at or before each time
        share = max(1, budget[0] // len(times))
        frames = []
        for at in times:
            frames.append(_frame_at(container, stream, float(at), [share]))
    elif header.get("time") is not None:
        frames = [_frame_at(container, stream, float(header["time"]), budget)]
    else:
        known = _first_frames.get(header["digest"])
        frames = [known or _poster(container, stream, seconds, budget)]
    images = [_picture(stream, frame, header) for frame in frames]
    return _pictures(images)


def _shown_size(stream: Any, frame: Any) -> tuple[int, int]:
    """The picture's size as players show it: stretched by its sample aspect
    ratio, turned by its rotation."""
    width, height = frame.width, frame.height
    ratio = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    if ratio and ratio > 0 and ratio != 1:
        width = max(1, round(width * float(ratio)))
    if abs(getattr(frame, "rotation", 0) or 0) in (90, 270):
        width, height = height, width
    return width, height


def _picture(stream: Any, frame: Any, header: dict[str, Any]) -> Image.Image:
    """``frame`` at the job's size, shown as players show it."""
    width, height = _shown_size(stream, frame)
    need_w, need_h = _need(header, width, height)
    rotation = int(getattr(frame, "rotation", 0) or 0) % 360
    if rotation in (90, 270):
        need_w, need_h = need_h, need_w
    image = frame.reformat(
        width=need_w, height=need_h, format="rgb24", interpolation="AREA"
    ).to_image()
    if rotation:  # counterclockwise degrees, as the display matrix says
        image = image.rotate(rotation, expand=True)
    return image


def _decoded(
    container: Any, stream: Any, start: float, budget: list[int]
) -> Iterator[Any]:
    """Frames from the key frame at or before ``start`` on, each counted
    against ``budget`` (decoded frames left). Always sought: the container
    may have been read before (`_opened`)."""
    container.seek(
        int(start / stream.time_base), stream=stream, backward=True, any_frame=False
    )
    for frame in container.decode(stream):
        if budget[0] <= 0:
            return
        budget[0] -= 1
        yield frame


def _frame_at(container: Any, stream: Any, at: float, budget: list[int]) -> Any:
    """The frame shown at ``at`` seconds (from the first frame), or the last
    decoded within the budget on the way there."""
    at += _start(stream)
    last = None
    for frame in _decoded(container, stream, at, budget):
        if last is not None and frame.time is not None and frame.time > at + 1e-6:
            break
        last = frame
        if frame.time is not None and frame.time >= at - 1e-6:
            break
    if last is None:
        raise UnsupportedImage("the video has no frame that decodes there")
    return last


#: The probe's first frame, by the file's digest, when it is the poster
#: (a lively key frame): the drawing that follows a probe need not decode it
#: again.
_first_frames: dict[str, Any] = {}


def _spread(frame: Any) -> tuple[float, float]:
    """The mean and spread of a frame's luma, on a small copy (nearest
    samples: the default filter cost 1.1 ms more per 1080p frame, a tenth of
    the server's work on top of a poster's)."""
    import numpy as np

    luma = frame.to_ndarray(format="gray", width=64, height=36, interpolation="POINT")
    return float(np.mean(luma)), float(np.std(luma))


def _lively(frame: Any) -> bool:
    mean, spread = _spread(frame)
    return mean >= LIVELY_MEAN and spread >= LIVELY_SPREAD


def _poster(
    container: Any, stream: Any, seconds: float | None, budget: list[int]
) -> Any:
    """The first lively key frame of the first seconds (a fade from black,
    a title card of one colour, are passed over), else the liveliest: the
    key frames at or before `POSTER_CANDIDATES` times at equal steps over the
    first `POSTER_SECONDS`, each reached by a seek (some decoders, VP9's,
    decode every frame whatever ``skip_frame`` says)."""
    length = min(seconds or POSTER_SECONDS, POSTER_SECONDS)
    steps = POSTER_CANDIDATES - 1
    times = [length * index / steps for index in range(POSTER_CANDIDATES)]
    best, best_spread = None, -1.0
    seen: set[int] = set()
    stream.codec_context.skip_frame = "NONKEY"
    try:
        for at in times:
            frame = next(_decoded(container, stream, _start(stream) + at, budget), None)
            if frame is None:
                break
            if frame.pts in seen:
                continue  # the same key frame as a time before
            seen.add(frame.pts)
            mean, spread = _spread(frame)
            if mean >= LIVELY_MEAN and spread >= LIVELY_SPREAD:
                return frame
            if spread > best_spread:
                best, best_spread = frame, spread
    finally:
        stream.codec_context.skip_frame = "DEFAULT"
    if best is None:
        raise UnsupportedImage("the video has no frame that decodes")
    return best


if __name__ == "__main__":
    main()
