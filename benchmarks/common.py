"""Parts the benchmarks share: servers as child processes, a load client, inputs.

The load comes from wrk when it is installed (``apt-get install wrk``: about
0.1 ms of CPU per request), else from a small asyncio HTTP/1.1 keep-alive
client in a process of its own (about ten times as much). On a 2-core machine
the client shares the cores with the server under test, so each result
includes the client's own CPU per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from PIL import Image, ImageFilter

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(within: range | None = None) -> int:
    """A loopback port nothing listens on: any, or the first free ``within``."""
    for port in within or [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free port in {within}")


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


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by a process and its children (user + system)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


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

    def sample_rss(self) -> int:
        now = rss(self.process.pid)
        self.peak_rss = max(self.peak_rss, now)
        return now

    @contextlib.contextmanager
    def sampling(self, interval: float = 0.2) -> Iterator[Peak]:
        """Polls the tree's RSS every ``interval`` seconds on a thread while
        in use (a peak between the end-of-run samples would go unseen)."""
        peak = Peak()
        stop = threading.Event()

        def poll() -> None:
            while True:
                peak.bytes = max(peak.bytes, self.sample_rss())
                if stop.wait(interval):
                    return

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield peak
        finally:
            stop.set()
            thread.join()

    def settle(self, timeout: float = 120) -> None:
        """Wait until the server is idle: work queued by a run's last requests
        (their clients gone) must not eat into the next server's run."""
        deadline = time.monotonic() + timeout
        before = cpu_seconds(self.process.pid)
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = cpu_seconds(self.process.pid)
            if now - before < 0.02:  # under 8% of a core
                return
            before = now

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # The whole tree: thumbor's forked processes outlive a SIGTERM to
        # their parent (which then waits for them).
        tree = _children(self.process.pid)
        self.process.send_signal(signal.SIGTERM)
        for pid in tree:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        deadline = time.monotonic() + 10
        for pid in tree:  # not our children: gone once /proc/PID is
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.05)
            if os.path.exists(f"/proc/{pid}"):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


class Peak:
    """The largest RSS seen by one `Server.sampling`, in bytes."""

    bytes = 0


def twistd(*args: str) -> list[str]:
    """A twistd command line that never logs to /dev/null (twistd rotates it)."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "--logfile=server.log", *args]  # fmt: skip


# -- the load client (wrk if installed, else asyncio in its own process) -------

#: ``BENCH_CLIENT=python`` forces the Python client even with wrk.
CLIENT = (
    "wrk"
    if shutil.which("wrk") and os.environ.get("BENCH_CLIENT") != "python"
    else "python"
)


class Exhausted(RuntimeError):
    """A run asked for more never-seen paths than it was given."""


class Failed(RuntimeError):
    """Some requests of a run failed; ``result`` holds the run's figures."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


async def _client(
    host: str,
    port: int,
    paths: list[str],
    next_path: Any,
    until: float,
    latencies: list[float],
    headers: str = "",
) -> tuple[int, int]:
    reader, writer = await asyncio.open_connection(host, port)
    done = errors = 0
    while time.monotonic() < until:
        path = paths[next(next_path) % len(paths)]
        start = time.perf_counter()
        head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n"
        writer.write(head.encode())
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


async def _load(
    base: str,
    paths: list[str],
    connections: int,
    seconds: float,
    headers: list[str] = [],  # noqa: B006 (never changed)
) -> Any:
    host, port = base.split(":")
    lines = "".join(f"{h}\r\n" for h in headers)
    latencies: list[float] = []
    next_path = itertools.count()
    start = time.perf_counter()
    until = time.monotonic() + seconds
    results = await asyncio.gather(*(
        _client(host, int(port), paths, next_path, until, latencies, lines)
        for _ in range(connections)
    ))  # fmt: skip
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": sum(r[0] + r[1] for r in results),
        "per_second": sum(r[0] for r in results) / elapsed,
        "errors": sum(r[1] for r in results),
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else 0,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else 0,
    }


def _wrk(
    server: Server,
    listing: str,
    connections: int,
    seconds: float,
    headers: Sequence[str] = (),
) -> Any:
    script = os.path.join(CHECKOUT, "benchmarks", "paths.lua")
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "60s",
         "-s", script,
         server.url("/"), "--", listing, *headers],
        capture_output=True, check=True, text=True,
    ).stdout  # fmt: skip
    raw = json.loads(out.strip().splitlines()[-1])
    return {
        "requests": raw["requests"],
        "per_second": (raw["requests"] - raw["errors"]) / raw["duration_us"] * 1e6,
        "errors": raw["errors"],
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
    }


def load(
    server: Server,
    paths: list[str],
    connections: int,
    seconds: float,
    unique: bool = False,
    headers: Sequence[str] = (),
) -> Any:
    """Requests/s and latencies of ``seconds`` of load over ``paths`` in turn,
    each request with ``headers`` ("Name: value") too.

    ``unique``: every request must be a path not asked for before in the run
    (never-seen variants); running out of them is an error, not a cache hit.
    The result includes the client's CPU milliseconds per request.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = cpu_seconds(server.process.pid)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listing:
        listing.write("\n".join(paths))
        listing.flush()
        if CLIENT == "wrk":
            result = _wrk(server, listing.name, connections, seconds, headers)
        else:
            out = subprocess.run(
                [sys.executable, __file__, f"127.0.0.1:{server.port}",
                 str(connections), str(seconds), listing.name, *headers],
                capture_output=True, check=True, text=True,
            )  # fmt: skip
            result = json.loads(out.stdout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    result["client_cpu_ms"] = 1000 * cpu / max(result["requests"], 1)
    server.sample_rss()
    server.settle()
    # Until settled: the work queued by the run's last requests counts too.
    server_cpu = cpu_seconds(server.process.pid) - server_before
    result["server_cpu_ms"] = 1000 * server_cpu / max(result["requests"], 1)
    # wrk counts answered requests; up to one more per connection was sent.
    result["sent"] = result["requests"] + connections
    if result["errors"]:
        raise Failed(f"{result['errors']} requests failed on {server.port}", result)
    if unique and result["sent"] > len(paths):
        raise Exhausted(
            f"{result['requests']} requests but only {len(paths)} never-seen paths:"
            " give fewer --seconds"
        )
    return result


def median_of(results: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


if __name__ == "__main__":
    _, base, connections, seconds, listing, *headers = sys.argv
    with open(listing) as f:
        paths = f.read().split("\n")
    print(json.dumps(asyncio.run(
        _load(base, paths, int(connections), float(seconds), headers)
    )))  # fmt: skip
