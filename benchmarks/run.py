"""Measure imageserver, with a reference measured in the same run.

    python benchmarks/run.py [--seconds 5] [--rounds 3]

Prints medians over rounds and their ratios to the reference:
  1. CPU ms for one never-seen w200.jpg from a 12-megapixel JPEG (imaging alone),
     against a full decode + LANCZOS resize of the same photo.
  2. Never-seen w{N}.jpg variants per second through a real `twistd imageserver`
     at 2 and 8 concurrent clients, against imaging alone on every core.
  3. Cached variant requests per second through `twistd imageserver`, against
     `twistd web` (twisted.web.static.File) serving the same file.

The load comes from a separate process: a small asyncio HTTP/1.1 keep-alive
client, so the server's reactor has a core of its own on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, CHECKOUT)

from PIL import Image, ImageFilter  # noqa: E402

from imageserver import imaging  # noqa: E402
from imageserver.naming import VariantRules  # noqa: E402

RULES = VariantRules(frozenset({"jpg"}), 75, 4000)
LIMIT = 100_000_000


def photo(size: tuple[int, int] = (4000, 3000)) -> bytes:
    """A photo-like JPEG: smooth shapes plus sensor-like noise, quality 90."""
    w, h = size
    base = Image.radial_gradient("L").resize((w, h))
    colour = Image.merge(
        "RGB",
        (
            base,
            Image.linear_gradient("L").resize((w, h)),
            Image.effect_mandelbrot((w, h), (-2.0, -1.2, 1.0, 1.2), 100),
        ),
    ).filter(ImageFilter.GaussianBlur(3))
    noise = Image.effect_noise((w, h), 12).convert("RGB")
    out = io.BytesIO()
    Image.blend(colour, noise, 0.15).save(out, "JPEG", quality=90)
    return out.getvalue()


# -- 1. CPU per variant ------------------------------------------------------


def cpu_ms(f, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.thread_time()
        f()
        times.append((time.thread_time() - start) * 1000)
    return statistics.median(times)


def naive_w200(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data))
    image = image.resize((200, 150), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=75)
    return out.getvalue()


def imaging_per_second(data: bytes, threads: int, count: int) -> float:
    variants = [RULES.parse(f"w{100 + i}.jpg") for i in range(count)]
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda v: imaging.render(data, v, LIMIT), variants))
    return count / (time.perf_counter() - start)


# -- servers ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A twistd process; ``args(port)`` gives its plugin and options."""

    def __init__(self, args: Callable[[int], list[str]], cwd: str) -> None:
        self.port = free_port()
        twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        self.process = subprocess.Popen(
            # Never --logfile=/dev/null: twistd rotates its log file by
            # renaming it, and as root that would move /dev/null itself.
            [
                *twistd,
                "-n",
                "--pidfile=",
                f"--logfile=server-{self.port}.log",
                *args(self.port),
            ],
            cwd=cwd,
            env=dict(os.environ, PYTHONPATH=CHECKOUT),
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait(self, path: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url(path), timeout=1).read()
                return
            except OSError:
                time.sleep(0.05)  # a benchmark, not a test: polling is fine
        raise RuntimeError(f"server on {self.port} did not start")

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(10)


# -- load client (runs in its own process) -----------------------------------


async def _client(
    host: str, port: int, paths: list[str], until: float
) -> tuple[int, int]:
    reader, writer = await asyncio.open_connection(host, port)
    done = errors = 0
    i = 0
    while paths and time.monotonic() < until:
        path = paths.pop() if until == float("inf") else paths[i % len(paths)]
        i += 1
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        if status == 200:
            done += 1
        else:
            errors += 1
    writer.close()
    return done, errors


async def _load(url_base: str, paths: list[str], connections: int, seconds: float):  # type: ignore[no-untyped-def]
    host, port = url_base.split(":")
    until = time.monotonic() + seconds if seconds > 0 else float("inf")
    start = time.perf_counter()
    results = await asyncio.gather(
        *(_client(host, int(port), paths, until) for _ in range(connections))
    )
    elapsed = time.perf_counter() - start
    done = sum(r[0] for r in results)
    return {"per_second": done / elapsed, "errors": sum(r[1] for r in results)}


def load(server: Server, paths: list[str], connections: int, seconds: float) -> float:
    """Requests per second; seconds=0 means: request each path once."""
    out = subprocess.run(
        [sys.executable, __file__, "--load", f"127.0.0.1:{server.port}",
         str(connections), str(seconds), json.dumps(paths)],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    result = json.loads(out.stdout)
    if result["errors"]:
        raise RuntimeError(f"{result['errors']} requests failed")
    return result["per_second"]


# -- the run -----------------------------------------------------------------


def imageserver(*options: str) -> Callable[[int], list[str]]:
    return lambda port: [
        "imageserver", "--port", str(port), "--admin_port", "none",
        "--local_base_path", "store", "--maximum_width", "4000", *options,
    ]  # fmt: skip


def static_file(path: str) -> Callable[[int], list[str]]:
    return lambda port: [
        "web",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--path",
        path,
    ]


def cpu_section(data: bytes) -> None:
    w200 = RULES.parse("w200.jpg")
    assert w200 is not None
    ours = cpu_ms(lambda: imaging.render(data, w200, LIMIT), 15)
    naive = cpu_ms(lambda: naive_w200(data), 5)
    print("\n1. CPU per never-seen w200.jpg from 12 MP (median, one thread)")
    print(f"   imageserver imaging:      {ours:7.1f} ms")
    print(f"   full decode + LANCZOS:    {naive:7.1f} ms   ratio {naive / ours:.1f}x")


def generation_section(server: Server, folder: str, data: bytes, rounds: int) -> None:
    cores = len(os.sched_getaffinity(0))
    print("\n2. never-seen w{N}.jpg variants per second (median of rounds)")
    reference = statistics.median(
        imaging_per_second(data, cores, 12) for _ in range(rounds)
    )
    print(f"   imaging alone, {cores} threads: {reference:7.1f} /s")
    widths = iter(range(100, 4000))
    for connections in (2, 8):
        rates = []
        for _ in range(rounds):
            paths = [f"{folder}/w{next(widths)}.jpg" for _ in range(24)]
            rates.append(load(server, paths, connections, 0))
        rate = statistics.median(rates)
        print(
            f"   server, {connections} clients:    {rate:7.1f} /s"
            f"   ratio {rate / reference:.2f} of imaging alone"
        )


def cached_section(
    servers: dict[str, Server], path: str, seconds: float, rounds: int
) -> None:
    print("\n3. cached variant requests per second (median of rounds)")
    for connections in (1, 8):
        rates: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(rounds):
            for name, server in servers.items():
                rates[name].append(load(server, [path], connections, seconds))
        median = {name: statistics.median(r) for name, r in rates.items()}
        reference = median["static.File"]
        print(f"   {connections} clients: " + "; ".join(
            f"{name} {rate:6.0f} /s ({rate / reference:.2f})"
            for name, rate in median.items()
        ))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = photo()
    digest = hashlib.md5(data).hexdigest()
    folder = f"/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"
    print(f"photo: 4000x3000 JPEG, {len(data) / 1e6:.1f} MB")
    cpu_section(data)

    with (
        tempfile.TemporaryDirectory() as root,
        Server(imageserver(), root) as server,
    ):
        server.wait("/status_check")
        upload = urllib.request.Request(server.url("/p"), data=data, method="POST")
        urllib.request.urlopen(upload).read()
        generation_section(server, folder, data, args.rounds)

        cached = f"{folder}/w300.jpg"
        urllib.request.urlopen(server.url(cached)).read()
        with (
            Server(imageserver("--memory_cache_bytes", "0"), root) as disk,
            Server(static_file(os.path.join(root, "store")), root) as static,
        ):
            disk.wait("/status_check")
            static.wait(cached)
            servers = {
                "static.File": static,
                "imageserver": server,
                "memory cache off": disk,
            }
            cached_section(servers, cached, args.seconds, args.rounds)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        _, _, base, connections, seconds, paths = sys.argv
        print(json.dumps(asyncio.run(
            _load(base, json.loads(paths), int(connections), float(seconds))
        )))  # fmt: skip
    else:
        main()
