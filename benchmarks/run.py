"""Measure imageserver, with a reference measured in the same run.

    python benchmarks/run.py [--seconds 5] [--rounds 3]

Prints medians over rounds and their ratios to the reference:
  1. CPU ms for one never-seen w200.jpg from a 12-megapixel JPEG (imaging alone),
     against a full decode + LANCZOS resize of the same photo.
  2. Never-seen w{N}.jpg variants per second through a real `twistd imageserver`
     at 2 and 8 concurrent clients, against imaging alone on every core.
  3. Cached variant requests per second through `twistd imageserver`, against
     `twistd web` (twisted.web.static.File) serving the same file.

The load comes from wrk when installed, else from a Python client in a process
of its own (benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image

from benchmarks.common import (
    CHECKOUT,
    Server,
    cpu_ms,
    free_port,
    load,
    photo,
    twistd,
)
from imageserver.imaging import containers, renderer
from imageserver.naming import VariantRules

RULES = VariantRules(frozenset({"jpg"}), 75, 4000)
LIMIT = renderer.Limits(100_000_000, 1000, 4000)


# -- 1. CPU per variant ------------------------------------------------------


def naive_w200(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data))
    image = image.resize((200, 150), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=75)
    return out.getvalue()


def imaging_per_second(data: bytes, threads: int, count: int) -> float:
    variants = [RULES.parse(f"w{100 + 4 * i}.jpg") for i in range(count)]
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda v: renderer.render(data, v, LIMIT), variants))
    return count / (time.perf_counter() - start)


# -- the run -----------------------------------------------------------------


def imageserver(root: str, *options: str) -> Server:
    port = free_port()
    command = twistd(
        "imageserver", "--port", str(port), "--admin_port", "none",
        "--local_base_path", "store", "--maximum_width", "4000", *options,
    )  # fmt: skip
    return Server(command, port, root, {"PYTHONPATH": CHECKOUT})


def static_file(root: str, path: str) -> Server:
    port = free_port()
    listen = f"tcp:{port}:interface=127.0.0.1"
    return Server(twistd("web", "--listen", listen, "--path", path), port, root)


def cpu_section(data: bytes) -> None:
    w200 = RULES.parse("w200.jpg")
    assert w200 is not None
    ours = cpu_ms(lambda: renderer.render(data, w200, LIMIT), 15)
    naive = cpu_ms(lambda: naive_w200(data), 5)
    walk = cpu_ms(lambda: containers.layout(data), 15)
    print("\n1. CPU per never-seen w200.jpg from 12 MP (median, one thread)")
    print(f"   imageserver imaging:      {ours:7.1f} ms")
    print(f"   full decode + LANCZOS:    {naive:7.1f} ms   ratio {naive / ours:.1f}x")
    print(f"   of which structure walk:  {walk:7.2f} ms   {walk / ours:.1%} of it")


def generation_section(
    server: Server, folder: str, data: bytes, seconds: float, rounds: int
) -> None:
    cores = len(os.sched_getaffinity(0))
    print("\n2. never-seen w{N}.jpg variants per second (median of rounds)")
    reference = statistics.median(
        imaging_per_second(data, cores, 12) for _ in range(rounds)
    )
    print(f"   imaging alone, {cores} threads: {reference:7.1f} /s")
    # Never-seen names, all decoded at 1/8 scale like the reference's.
    names = [f"w{w}-q{q}.jpg" for q in range(1, 101) for w in range(100, 500, 4)]
    for connections in (2, 8):
        rates = []
        for _ in range(rounds):
            paths = [f"{folder}/{name}" for name in names]
            result = load(server, paths, connections, seconds, unique=True)
            del names[: result["sent"]]
            rates.append(result["per_second"])
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
                rates[name].append(
                    load(server, [path], connections, seconds)["per_second"]
                )
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
        imageserver(root) as server,
    ):
        server.wait("/status_check")
        upload = urllib.request.Request(server.url("/p"), data=data, method="POST")
        urllib.request.urlopen(upload).read()
        generation_section(server, folder, data, args.seconds, args.rounds)

        cached = f"{folder}/w300.jpg"
        urllib.request.urlopen(server.url(cached)).read()
        with (
            imageserver(root, "--memory_cache_bytes", "0") as disk,
            static_file(root, os.path.join(root, "store")) as static,
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
    main()
