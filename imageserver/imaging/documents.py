"""Originals that are drawn rather than decoded (SVG, PDF, video), as Pillow
images whose pixels come from the rasteriser process at the size asked for.

A `Document` is opened with what the rasteriser's probe read (size, pages,
duration): no pixel is made until the renderer loads it, after `draft` has
said the size it needs, so a vector or a page is drawn at the resolution the
variant needs, and a video's frame is scaled in the codec's own scaler. The
renderer treats it as any other image from there (it crops, turns, encodes);
`opened` picks the page or the time first. The rasteriser runs in child
processes (`rasteriser` says why), kept in a `Rasteriser` pool: one child per
processing thread at most, started on first use, replaced after a job that
broke a limit.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from PIL import Image

from imageserver.errors import (
    ImageServerError,
    ImageTooLarge,
    InvalidRequest,
    Overloaded,
    UnsupportedImage,
)
from imageserver.imaging.svg import SvgLimits
from imageserver.naming import Variant

#: Video codecs decoded by default (FFmpeg's codec names).
VIDEO_CODECS = ("h264", "hevc", "vp8", "vp9", "av1")


@dataclass(frozen=True, slots=True)
class DocumentLimits:
    """What drawing one original may cost (docs/security.md)."""

    #: CPU seconds of one rasteriser job (--rasterise_seconds).
    seconds: float = 10.0
    #: Address space of a rasteriser process, bytes (--rasterise_memory).
    memory: int = 2 * 1024**3
    #: Pages a PDF may have (--max_pdf_pages).
    pages: int = 2000
    #: Seconds a video may last (--max_video_seconds).
    video_seconds: float = 4 * 3600.0
    #: Frames decoded for one picture or preview (--max_video_decoded_frames).
    decoded: int = 120
    #: Video codecs decoded (--video_codecs).
    codecs: tuple[str, ...] = VIDEO_CODECS
    #: Frames of an animated preview of a video (--video_preview_frames).
    preview_frames: int = 10
    svg: SvgLimits = field(default_factory=SvgLimits)


#: How long each frame of a video's preview is shown.
PREVIEW_FRAME_MS = 500
#: The pipes' size (Linux's most for an unprivileged process by default).
PIPE_BYTES = 1024 * 1024
#: Wall-clock seconds a job may take per CPU second it is allowed (a job
#: waits for nothing but the CPU: past this, it is stuck).
WALL_PER_CPU = 3.0
#: And this many seconds more (a process started for the job loads first).
WALL_SLACK = 5.0


@dataclass(frozen=True, slots=True)
class Probe:
    """What the rasteriser read of an original without drawing it."""

    kind: str
    #: As shown, in CSS pixels (SVG), points (PDF) or pixels (video).
    width: float
    height: float
    pages: int | None = None
    seconds: float | None = None
    frame_rate: float | None = None
    frames: int | None = None
    codec: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        """Whole pixels, at least 1 a side."""
        return max(1, round(self.width)), max(1, round(self.height))


class RasteriserFailed(UnsupportedImage):
    """A rasteriser process that died in a job (a limit, or a crash)."""


class _CpuLimit(RasteriserFailed):
    """A rasteriser killed at its job's CPU allowance (--rasterise_seconds)."""


class _Crashed(RasteriserFailed):
    """A rasteriser that ended in a job otherwise than at a limit (most
    often its memory: what it held from jobs before may count)."""


class _OutOfMemory(ImageTooLarge):
    """A job that ran out of the rasteriser's memory (what the process held
    from jobs before may count)."""


class RasteriserLate(Overloaded):
    """A job still running at its wall-clock deadline: within its CPU
    allowance (else SIGXCPU had ended it), so it waited for a CPU; the
    server is busy (503), the file is not to blame."""


class _Gone(RasteriserFailed):
    """A rasteriser killed from outside (not by a limit): its job is not to
    blame, and is given to another."""


class _Child:
    """One rasteriser process and its pipes."""

    def __init__(self, memory: int) -> None:
        package_root = os.path.dirname(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        )
        path = os.pathsep.join(
            filter(None, (package_root, os.environ.get("PYTHONPATH")))
        )
        env = {
            **os.environ,
            "PYTHONPATH": path,
            "IMAGESERVER_RASTERISER_MEMORY": str(memory),
            # One thread each, and no arenas per thread: the address-space
            # limit is on what the job uses, not on what is reserved.
            "MALLOC_ARENA_MAX": "2",
            # What a job freed is kept for the next (blocks under 32 MB
            # from the heap, not mapped and unmapped each time; up to 64 MB
            # free at its top): with glibc's defaults a 1080p poster
            # faulted in 900 new pages. `rasteriser` gives the rest back
            # past KEEP_RESIDENT.
            "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),
            "MALLOC_TRIM_THRESHOLD_": str(64 * 1024 * 1024),
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imageserver.imaging.rasteriser"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # What a library prints (a Rust panic's backtrace) is no log
            # line of the server's; the job's answer says what failed.
            stderr=subprocess.DEVNULL,
            env=env,
            cwd="/",
        )
        for pipe in (self.process.stdin, self.process.stdout):
            # A file or its pixels in 1 MiB steps, not the 64 KiB of a
            # default pipe: a switch between the processes for each.
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)  # type: ignore[union-attr]
        self.timed_out = False
        #: Jobs it was sent.
        self.jobs = 0
        #: The digest of the file it keeps from its last job (sent once for
        #: a probe and the drawings after it).
        self.holds = ""

    def ask(
        self, header: Mapping[str, Any], payload: bytes, deadline: float
    ) -> tuple[dict[str, Any], bytes]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        digest = header["digest"]
        if digest == self.holds:  # it has the file from the job before
            payload = b""
        self.jobs += 1
        timer = threading.Timer(deadline, self._stop)
        timer.start()
        try:
            self.holds = digest
            encoded = json.dumps({**header, "bytes": len(payload)}).encode()
            stdin.write(struct.pack(">I", len(encoded)) + encoded)
            stdin.write(payload)
            stdin.flush()
            answer = _read(stdout)
        except (BrokenPipeError, OSError):
            answer = None
        finally:
            timer.cancel()
        if answer is None:
            raise self._died(header, deadline)
        return answer

    def _stop(self) -> None:
        self.timed_out = True
        self.process.kill()

    def _died(
        self, header: Mapping[str, Any], deadline: float
    ) -> RasteriserFailed | RasteriserLate:
        self.process.kill()
        code = self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # lost with the process
                    pipe.close()
        seconds = header.get("seconds")
        if code == -signal.SIGXCPU:
            return _CpuLimit(
                f"drawing the {header['kind']} took more than {seconds:g} s of "
                "CPU (--rasterise_seconds)"
            )
        if code == -signal.SIGKILL and not self.timed_out:
            return _Gone("the rasteriser was killed by someone else")
        if code == -signal.SIGKILL:
            return RasteriserLate(
                f"drawing the {header['kind']} took more than {deadline:g} s: the "
                "server is busy, try again shortly"
            )
        return _Crashed(
            f"drawing the {header['kind']} failed (the rasteriser ended with "
            f"{code}): it may have run out of its memory (--rasterise_memory)"
        )

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def _read(source: IO[bytes]) -> tuple[dict[str, Any], bytes] | None:
    head = source.read(4)
    if len(head) < 4:
        return None
    (length,) = struct.unpack(">I", head)
    header = json.loads(source.read(length))
    size = int(header.get("bytes", 0))
    payload = source.read(size)
    if len(payload) < size:
        return None
    return header, payload


@functools.lru_cache(maxsize=8)
def _told(limits: DocumentLimits) -> dict[str, Any]:
    """The limits as a job's header tells them (made once per limits)."""
    return {
        "pages": limits.pages,
        "seconds": limits.video_seconds,
        "decoded": limits.decoded,
        "codecs": list(limits.codecs),
        "svg": asdict(limits.svg),
    }


#: Failed jobs remembered by each pool (each process), by all a job says
#: (the file's digest, the job, its size and pick, the limits): asked again,
#: the failure is answered without drawing (docs/security.md).
FAILURES_KEPT = 1024
#: Jobs of one file past the rasteriser's limits (killed at the CPU limit,
#: out of memory, crashed), after which none of its jobs is run again.
COSTLY_AFTER = 3
#: Failures what a process held from jobs before may have caused: memory
#: run out, a crash (`Rasteriser._run`).
_NOT_OURS = (_Crashed, _OutOfMemory)
#: Failures past the rasteriser's limits, counted towards `COSTLY_AFTER`.
_PAST_LIMITS = (_CpuLimit, _Crashed, _OutOfMemory)


class Rasteriser:
    """A pool of rasteriser processes: each job takes an idle one or starts
    one, and gives it back when the job is done; one that died is replaced
    by the next job. Failures caused by the file are remembered: a job that
    failed is not run again, nor any job of a file that went past the
    rasteriser's limits `COSTLY_AFTER` times (a popular page's image that
    costs 10 s to fail would cost that for each visitor)."""

    def __init__(self) -> None:
        self._idle: list[_Child] = []
        self._lock = threading.Lock()
        self._memory = 0
        #: Jobs sent to a process (what a test counts).
        self.jobs = 0
        #: Failures by job: the class and message (not the exception: its
        #: traceback holds the file's bytes).
        self._failed: OrderedDict[str, tuple[type[ImageServerError], str]] = (
            OrderedDict()
        )
        #: Jobs past the limits, by the file's digest and the limits.
        self._kills: OrderedDict[tuple[str, float, int], int] = OrderedDict()

    def ask(
        self,
        kind: str,
        job: str,
        data: bytes,
        limits: DocumentLimits,
        **fields: Any,
    ) -> tuple[dict[str, Any], bytes]:
        """The answer to one job; the error it raised, as the server's."""
        header = {
            "kind": kind,
            "job": job,
            "digest": fields.pop("digest", None) or _digest(data),
            "seconds": limits.seconds,
            "limits": _told(limits),
            **fields,
        }
        key = json.dumps([header, limits.memory], sort_keys=True)
        costly = (header["digest"], limits.seconds, limits.memory)
        with self._lock:
            known = self._failed.get(key)
            kills = self._kills.get(costly, 0)
        if known is not None:
            failure, message = known
            raise failure(message)
        if kills >= COSTLY_AFTER:
            raise RasteriserFailed(
                f"drawing this {kind} went past the rasteriser's limits {kills} "
                "times: it is not drawn again (--rasterise_seconds, "
                "--rasterise_memory)"
            )
        try:
            answer, payload = self._run(header, data, limits)
        except (RasteriserLate, _Gone):
            raise  # the server was busy, or someone killed the process
        except (UnsupportedImage, ImageTooLarge, InvalidRequest) as e:
            with self._lock:
                _keep(self._failed, key, (type(e), str(e)))
                if isinstance(e, _PAST_LIMITS):  # counted now: others may have
                    _keep(self._kills, costly, self._kills.get(costly, 0) + 1)
            raise
        return answer, payload

    def _run(
        self, header: dict[str, Any], data: bytes, limits: DocumentLimits
    ) -> tuple[dict[str, Any], bytes]:
        """The job's answer. A job that runs out of memory or crashes in a
        process that ran jobs before is run again in a new one: what the
        process held from them (another tenant's libraries, memory not
        given back) may have counted. A failure is the file's, and
        remembered, where nothing else ran before."""
        with self._lock:
            if self._memory != limits.memory:  # other limits: other children
                self._retire()
                self._memory = limits.memory
            child = self._idle.pop() if self._idle else None
        if child is None or child.process.poll() is not None:
            child = _Child(limits.memory)
        fresh = child.jobs == 0
        try:
            return self._on(child, header, data, limits)
        except _NOT_OURS:
            if fresh:
                raise
            return self._on(_Child(limits.memory), header, data, limits)

    def _on(
        self,
        child: _Child,
        header: dict[str, Any],
        data: bytes,
        limits: DocumentLimits,
    ) -> tuple[dict[str, Any], bytes]:
        """The job's answer from ``child``, which goes back to the idle
        unless it ran out of memory (what it holds is not to be trusted)."""
        with self._lock:
            self.jobs += 1
        deadline = limits.seconds * WALL_PER_CPU + WALL_SLACK
        try:
            answer, payload = child.ask(header, data, deadline)
        except _Gone:
            child = _Child(limits.memory)
            answer, payload = child.ask(header, data, deadline)
        error = answer.get("error")
        if error == "OutOfMemory":
            child.close()
            raise _OutOfMemory(answer.get("message", error))
        with self._lock:
            self._idle.append(child)
        if error is not None:
            kinds = {
                "ImageTooLarge": ImageTooLarge,
                "InvalidRequest": InvalidRequest,
            }
            raise kinds.get(error, UnsupportedImage)(answer.get("message", error))
        return answer, payload

    def pids(self) -> list[int]:
        """The idle processes' ids (what a test measures)."""
        with self._lock:
            return [child.process.pid for child in self._idle]

    def _retire(self) -> None:
        for child in self._idle:
            child.close()
        self._idle.clear()

    def close(self) -> None:
        """End every idle child (a busy one ends with its job's pipe)."""
        with self._lock:
            self._retire()


def _keep(kept: OrderedDict[Any, Any], key: Any, value: Any) -> None:
    """Keep ``value`` as the newest of at most `FAILURES_KEPT`."""
    kept[key] = value
    kept.move_to_end(key)
    while len(kept) > FAILURES_KEPT:
        kept.popitem(last=False)


_shared: Rasteriser | None = None
_shared_lock = threading.Lock()


def shared() -> Rasteriser:
    """This process's pool (started on first use; `close` ends it)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Rasteriser()
            atexit.register(close)
        return _shared


def close() -> None:
    """End this process's rasteriser children, if any were started."""
    with _shared_lock:
        if _shared is not None:
            _shared.close()


def _digest(data: bytes) -> str:
    """What names a file to the rasteriser and the probes kept: SHA-256,
    the fastest collision-resistant hash here (1.8 GB/s)."""
    return hashlib.sha256(data).hexdigest()


#: Probes kept, by the original's hash, kind and page: a variant made
#: later of the same original is drawn without reading it twice.
PROBES_KEPT = 256
_probes: dict[tuple[str, str, int], Probe] = {}
_probes_lock = threading.Lock()


def probe(
    data: bytes,
    kind: str,
    limits: DocumentLimits,
    page: int,
    most: int,
    digest: str = "",
) -> Probe:
    """What the original is, read without drawing it (a video's first frame
    is decoded, to know it decodes and how it is turned); ``most``: the
    pixels a video's frames may have (--max_source_pixels)."""
    digest = digest or _digest(data)
    key = (digest, kind, page)
    with _probes_lock:
        known = _probes.get(key)
    if known is not None:
        return known
    answer, _ = shared().ask(
        kind, "probe", data, limits, page=page, pixels=most, digest=digest
    )
    found = Probe(
        kind,
        float(answer["width"]),
        float(answer["height"]),
        pages=answer.get("pages"),
        seconds=answer.get("seconds"),
        frame_rate=answer.get("frame_rate"),
        frames=answer.get("frames"),
        codec=answer.get("codec"),
    )
    with _probes_lock:
        if len(_probes) >= PROBES_KEPT:
            del _probes[next(iter(_probes))]
        _probes[key] = found
    return found


def cleaned_svg(data: bytes, limits: DocumentLimits) -> bytes:
    """The sanitised SVG of an SVG original (what an ``.svg`` variant is)."""
    _, payload = shared().ask("SVG", "clean", data, limits)
    return payload


@dataclass(frozen=True, slots=True)
class Pick:
    """Which picture of a document a variant is made of."""

    #: A PDF's page, from 1.
    page: int = 1
    #: A video's time, in milliseconds, or per cent of its length; None for
    #: the default poster.
    time_ms: int | None = None
    time_percent: int | None = None

    @classmethod
    def of(cls, variant: Variant) -> Pick:
        return cls(variant.page, variant.time_ms, variant.time_percent)

    def seconds(self, probe: Probe) -> float | None:
        if self.time_percent is not None:
            return (probe.seconds or 0.0) * self.time_percent / 100
        return None if self.time_ms is None else self.time_ms / 1000


class Document(Image.Image):
    """A document's picture, drawn when loaded (see the module's doc)."""

    def __init__(
        self, data: bytes, probe: Probe, limits: DocumentLimits, most: int
    ) -> None:
        super().__init__()
        self.data = data
        self.probe = probe
        self.limits = limits
        self.format = probe.kind
        self._size = probe.size
        self._mode = "RGBA" if probe.kind == "SVG" else "RGB"
        self.pick = Pick()
        #: The most pixels one drawing may have (--max_source_pixels).
        self.most = most
        self._need = probe.size
        self.digest = ""

    @property
    def is_animated(self) -> bool:
        """A video with no time picked: its animated variants are previews."""
        return (
            self.probe.kind in VIDEOS
            and self.pick.time_ms is None
            and self.pick.time_percent is None
        )

    @property
    def n_frames(self) -> int:
        return self.limits.preview_frames if self.is_animated else 1

    def preview_times(self) -> list[float]:
        """The times a preview's frames show: the middles of equal parts."""
        length = self.probe.seconds or 0.0
        count = self.n_frames
        return [length * (index + 0.5) / count for index in range(count)]

    def draft(  # type: ignore[override]
        self, mode: str | None, size: tuple[int, int] | None
    ) -> None:
        """Draw at ``size`` (the box the renderer needs), ratio kept, within
        the pixel limit; for a vector, larger than declared too."""
        if size is None or self._im is not None:
            return
        self._need = self.drawing(size)
        self._size = self._need

    def drawing(self, size: tuple[int, int]) -> tuple[int, int]:
        """The size `draft` would draw at for ``size``."""
        width, height = self.probe.width, self.probe.height
        scale = min(size[0] / width, size[1] / height)
        if self.probe.kind not in VECTORS:
            scale = min(scale, 1.0)  # a video's frame is what it is
        if width * height * scale * scale > self.most:
            scale = (self.most / (width * height)) ** 0.5
        return max(1, round(width * scale)), max(1, round(height * scale))

    def load(self) -> Any:
        if self._im is None:
            (picture,) = self._draw(None)
            self.im = picture.im
            self._size = picture.size
            self._mode = picture.mode
        return super().load()

    def preview(self) -> list[Image.Image]:
        """A video's preview frames, drawn at the size `draft` set."""
        return self._draw(self.preview_times())

    def _draw(self, times: list[float] | None) -> list[Image.Image]:
        fields: dict[str, Any] = {"size": list(self._need), "pixels": self.most}
        if self.probe.kind == "PDF":
            fields["page"] = self.pick.page
        elif times is not None:
            fields["times"] = times
        elif self.probe.kind in VIDEOS:
            at = self.pick.seconds(self.probe)
            if at is not None:
                fields["time"] = at
        answer, payload = shared().ask(
            self.probe.kind,
            "draw",
            self.data,
            self.limits,
            digest=self.digest,
            **fields,
        )
        pictures, offset = [], 0
        for described in answer["images"]:
            mode, size = described["mode"], tuple(described["size"])
            length = size[0] * size[1] * len(mode)
            pictures.append(
                Image.frombytes(mode, size, payload[offset : offset + length])
            )
            offset += length
        return pictures


#: Kinds drawn from vectors (any size is sharp) and kinds that are videos.
VECTORS = frozenset({"SVG", "PDF"})
VIDEOS = frozenset({"MP4", "MOV", "WEBM"})


def opened(
    data: bytes, kind: str, limits: DocumentLimits, pick: Pick, most: int
) -> Document:
    """The picture ``pick`` names of an original of ``kind`` (a rasterised
    row of the format table), not drawn yet; ``most``: the pixels one
    drawing may have. Refuses a pick the kind has no use for."""
    if pick.page != 1 and kind != "PDF":
        raise InvalidRequest(f"the page option is for PDF originals; this is {kind}")
    timed = pick.time_ms is not None or pick.time_percent is not None
    if timed and kind not in VIDEOS:
        raise InvalidRequest(f"the t option is for video originals; this is {kind}")
    digest = _digest(data)
    found = probe(data, kind, limits, pick.page, most, digest)
    at = pick.seconds(found)
    if at is not None and found.seconds is not None and at > found.seconds:
        ms = pick.time_ms or 0
        spelled = f"t{ms // 1000}s" if ms % 1000 == 0 else f"t{ms}ms"
        raise InvalidRequest(
            f"{spelled} is past the end of the video, which is "
            f"{found.seconds:g} s long: ask for a time within it, or tNpct"
        )
    document = Document(data, found, limits, most)
    document.digest = digest
    document.pick = pick
    return document
