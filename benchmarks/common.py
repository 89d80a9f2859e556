"""Parts the benchmarks share: servers as child processes, a load client, inputs.

The load client is a small asyncio HTTP/1.1 keep-alive client run in a process
of its own, so the server under test keeps a core to itself.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageFilter

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo(size: tuple[int, int] = (4000, 3000), seed: int = 0) -> bytes:
    """A photo-like JPEG: smooth shapes plus sensor-like noise, quality 90."""
    w, h = size
    colour = Image.merge(
        "RGB",
        (
            Image.radial_gradient("L").resize((w, h)),
            Image.linear_gradient("L").resize((w, h)),
            Image.effect_mandelbrot(
                (w, h), (-2.0 + (seed % 50) / 100, -1.2, 1.0, 1.2), 100
            ),
        ),
    ).filter(ImageFilter.GaussianBlur(3))
    noise = Image.effect_noise((w, h), 12).convert("RGB")
    out = io.BytesIO()
    Image.blend(colour, noise, 0.15).save(out, "JPEG", quality=90)
    return out.getvalue()


def alpha_png(size: tuple[int, int] = (2000, 2000)) -> bytes:
    image = Image.open(io.BytesIO(photo(size))).convert("RGBA")
    image.putalpha(Image.radial_gradient("L").resize(size))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def cpu_ms(f: Any, repeat: int) -> float:
    """Median CPU milliseconds of ``f()`` on this thread."""
    times = []
    for _ in range(repeat):
        start = time.thread_time()
        f()
        times.append((time.thread_time() - start) * 1000)
    return statistics.median(times)


def rss(pid: int) -> int:
    """Resident memory of a process and its children, in bytes."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(p) for p in f.read().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


class Server:
    """A server child process; ``url(path)`` reaches it."""

    def __init__(self, command: Sequence[str], port: int, cwd: str, env: Any = None):
        self.port = port
        self.peak_rss = 0
        self.process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait(self, path: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url(path), timeout=5).read()
                return
            except OSError:
                time.sleep(0.1)  # a benchmark, not a test: polling is fine
        raise RuntimeError(f"server on {self.port} did not start")

    def sample_rss(self) -> None:
        self.peak_rss = max(self.peak_rss, rss(self.process.pid))

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def twistd(*args: str) -> list[str]:
    """A twistd command line that never logs to /dev/null (twistd rotates it)."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "--logfile=server.log", *args]  # fmt: skip


# -- the load client (run in its own process) ---------------------------------


async def _client(
    host: str, port: int, paths: list[str], until: float, latencies: list[float]
) -> tuple[int, int]:
    reader, writer = await asyncio.open_connection(host, port)
    done = errors = 0
    i = 0
    while paths and time.monotonic() < until:
        path = paths.pop() if until == float("inf") else paths[i % len(paths)]
        i += 1
        start = time.perf_counter()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - start)
        if status == 200:
            done += 1
        else:
            errors += 1
    writer.close()
    return done, errors


async def _load(base: str, paths: list[str], connections: int, seconds: float) -> Any:
    host, port = base.split(":")
    until = time.monotonic() + seconds if seconds > 0 else float("inf")
    latencies: list[float] = []
    start = time.perf_counter()
    results = await asyncio.gather(
        *(_client(host, int(port), paths, until, latencies) for _ in range(connections))
    )
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "per_second": sum(r[0] for r in results) / elapsed,
        "errors": sum(r[1] for r in results),
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else 0,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else 0,
    }


def load(server: Server, paths: list[str], connections: int, seconds: float) -> Any:
    """Requests/s and latencies; ``seconds=0``: each path once, then stop."""
    out = subprocess.run(
        [sys.executable, __file__, f"127.0.0.1:{server.port}", str(connections),
         str(seconds), json.dumps(paths)],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    result = json.loads(out.stdout)
    server.sample_rss()
    if result["errors"]:
        raise RuntimeError(f"{result['errors']} requests failed on {server.port}")
    return result


def median_of(results: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


if __name__ == "__main__":
    _, base, connections, seconds, paths = sys.argv
    print(json.dumps(asyncio.run(
        _load(base, json.loads(paths), int(connections), float(seconds))
    )))  # fmt: skip
