"""imageserver against thumbor, side by side, on the same machine and images.

    python3 benchmarks/versus_thumbor.py [--rounds 3] [--seconds 4]

Installs thumbor into benchmarks/.thumbor-venv the first time (from PyPI),
starts five servers on loopback: imageserver as one process and with
``--workers`` = cores, imageserver with ``--workers`` = cores answering the
same thumbor URLs as thumbor on its compatible endpoint (``--thumbor``, the
files read through an origin as thumbor's file loader reads them), thumbor
as one process and with ``--processes`` = cores (as its docs deploy it; it
reads the images with its file loader and keeps results in its file result
storage, one per server), and runs, each
server in turn, ``--rounds`` runs of ``--seconds`` each:

  CPU          first: our processing function and the bare work (draft
               with the same headroom and filter, jpegli) on one thread over
               the cold runs' widths; then the bare-Pillow limit: the bare
               work run by one process per core at once, images per second
               (cores / one thread's cost overstates it: cores running at
               once share caches and memory bandwidth)
  cold 12 MP   never-seen widths, exact (height a whole number: 100..496
               step 4) and arbitrary (180..220), at 2, 8 and 32 connections
  cold 800x600 never-seen widths, at 2, 8 and 32 connections
  cold PNG     a 2000x2000 PNG with alpha to never-seen widths, 8 connections
  cached       one URL repeated, 8 and 32 connections
  fairness     8 connections of cold 12 MP variants and, at the same time,
               8 connections of cached requests: the cached p99

Never-seen means never seen by that server in the whole run: no cold request
is a cache hit. The load comes from wrk when installed (``apt-get install
wrk``), else from a Python client (benchmarks/common.py). Prints medians
(requests/s, p50 and p99 latency, the server's CPU per request, children
included, and the share of the bare-Pillow limit), each server's peak RSS,
and writes them to benchmarks/results/. ``--servers`` and ``--sections``
take substrings separated by semicolons to run part of it (the JSON is then not
written).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import hashlib
import io
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image

from benchmarks.common import (
    CHECKOUT,
    CLIENT,
    Server,
    alpha_png,
    cpu_ms,
    free_port,
    load,
    median_of,
    photo,
    twistd,
)
from imageserver.imaging import renderer
from imageserver.naming import VariantRules

VENV = os.path.join(CHECKOUT, "benchmarks", ".thumbor-venv")
RESULTS = os.path.join(CHECKOUT, "benchmarks", "results")


def thumbor_command() -> str:
    """The thumbor executable, installed into its own virtualenv if missing."""
    executable = os.path.join(VENV, "bin", "thumbor")
    if not os.path.exists(executable):
        print("installing thumbor into", VENV, "...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        pip = [os.path.join(VENV, "bin", "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "thumbor"], check=True)
    return executable


def folder(digest: str) -> str:
    return f"/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"


class Pair:
    """URLs for the same request on both servers."""

    def __init__(self, images: dict[str, tuple[bytes, str]]) -> None:
        self.hashes = {
            name: hashlib.md5(data).hexdigest() for name, (data, _) in images.items()
        }

    def ours(self, name: str, width: int, quality: int, ext: str = "jpg") -> str:
        return f"{folder(self.hashes[name])}/w{width}-q{quality}.{ext}"

    def theirs(self, name: str, width: int, quality: int, ext: str = "jpg") -> str:
        fmt = "" if ext == "jpg" else f":format({ext})"
        return f"/unsafe/{width}x0/filters:quality({quality}){fmt}/{name}"


#: Widths whose height is whole (multiples of 4 of a 4:3 photo), where thumbor
#: keeps JPEG draft decoding; all decode at 1/8 scale.
EXACT_WIDTHS = list(range(100, 500, 4))
#: The issue's arbitrary widths, 180..220 step 1.
ARBITRARY_WIDTHS = list(range(180, 221))


def bare_pillow(data: bytes, width: int, quality: int = 75) -> bytes:
    """The least work for a width variant of a JPEG, done as the server does
    it: a draft keeping `renderer.DRAFT_HEADROOM` times the output's pixels,
    the server's reducing filter, and the jpg row's encoder (jpegli)."""
    import pyjpegli

    image = Image.open(io.BytesIO(data))
    height = round(width * image.height / image.width)
    headroom = renderer.DRAFT_HEADROOM
    image.draft("RGB", (round(width * headroom), round(height * headroom)))
    image = image.resize((width, height), renderer.REDUCING_FILTER, reducing_gap=3.0)
    return pyjpegli.encode(image.tobytes(), width, height, quality=quality)


def cpu_section(data: bytes) -> dict[str, float]:
    """One thread: our processing function against bare Pillow, same widths.

    The widths are those of the cold 12 MP runs, so ``cores * 1000 /
    bare_pillow_ms`` is the limit those runs are held to.
    """
    rules = VariantRules(frozenset({"jpg"}), 75, 4000)
    widths = itertools.cycle([*EXACT_WIDTHS[::8], *ARBITRARY_WIDTHS[::8]])
    variants = itertools.cycle(
        [v for w in EXACT_WIDTHS[::8] + ARBITRARY_WIDTHS[::8]
         if (v := rules.parse(f"w{w}.jpg")) is not None]
    )  # fmt: skip
    ours = cpu_ms(
        lambda: renderer.render(data, next(variants), renderer.Limits(10**9)), 31
    )
    bare = cpu_ms(lambda: bare_pillow(data, next(widths)), 31)
    return {"imageserver_ms": ours, "bare_pillow_ms": bare, "ratio": bare / ours}


def _bare_process(data: bytes, widths: list[int], start: Any) -> None:
    start.wait()
    for width in widths:
        bare_pillow(data, width)


def parallel_limit(data: bytes, cores: int, rounds: int = 3) -> float:
    """Images per second of the bare work, one process per core at once."""
    import multiprocessing

    widths = [*EXACT_WIDTHS[::4], *ARBITRARY_WIDTHS[::4]] * 2
    context = multiprocessing.get_context("fork")
    rates = []
    for _ in range(rounds):
        start = context.Event()
        workers = [
            context.Process(target=_bare_process, args=(data, widths, start))
            for _ in range(cores)
        ]
        for worker in workers:
            worker.start()
        time.sleep(0.5)
        began = time.perf_counter()
        start.set()
        for worker in workers:
            worker.join()
        rates.append(cores * len(widths) / (time.perf_counter() - began))
    return statistics.median(rates)


class NeverSeen:
    """Variant names not yet asked of a server in this run, image by image.

    A name is a (width, quality) pair: ``w{width}-q{quality}.jpg`` here,
    ``/unsafe/{width}x0/filters:quality({quality})/...`` there.
    """

    def __init__(self) -> None:
        self._used: dict[tuple[str, str], set[tuple[int, int]]] = {}

    def take(
        self, server: str, image: str, widths: Sequence[int]
    ) -> list[tuple[int, int]]:
        used = self._used.setdefault((server, image), set())
        pairs = [(w, q) for q in range(1, 101) for w in widths if (w, q) not in used]
        random.Random(len(used)).shuffle(pairs)
        return pairs

    def spend(self, server: str, image: str, pairs: list[tuple[int, int]]) -> None:
        self._used[(server, image)].update(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--servers", default="", help="substrings, separated by ;")
    parser.add_argument("--sections", default="", help="substrings, separated by ;")
    args = parser.parse_args()
    thumbor = thumbor_command()
    print(f"load client: {CLIENT}", flush=True)
    big = photo()
    # Measured first, on a quiet machine: the limit the cold runs are held to.
    cpu = cpu_section(big)
    cores = len(os.sched_getaffinity(0))
    limit = parallel_limit(big, cores)
    cpu["limit_per_second"] = limit
    cpu["cores_times_one_thread_per_second"] = cores * 1000 / cpu["bare_pillow_ms"]
    print(
        f"cpu, one thread: imageserver {cpu['imageserver_ms']:.1f} ms,"
        f" bare Pillow {cpu['bare_pillow_ms']:.1f} ms; bare Pillow on"
        f" {cores} cores at once {limit:.1f}/s (cores / one thread's cost:"
        f" {cpu['cores_times_one_thread_per_second']:.1f}/s)",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as root:
        images = {
            "big.jpg": (big, "4000x3000 JPEG"),
            "small.jpg": (photo((800, 600), seed=1), "800x600 JPEG"),
            "alpha.png": (alpha_png(), "2000x2000 PNG with alpha"),
        }
        for name, (data, _) in images.items():
            with open(os.path.join(root, name), "wb") as f:
                f.write(data)
        servers: dict[str, tuple[list[str], str]] = {}
        for label, n in (("ours", 1), (f"ours --workers {cores}", cores)):
            servers[label] = (twistd(
                "imageserver", "--port", "{port}", "--admin_port", "none",
                "--local_base_path", f"store-{n}", "--maximum_width", "4000",
                "--max_pending", "1000", "--workers", str(n),
            ), "/status_check")  # fmt: skip
        # The same thumbor URLs as thumbor gets, on the compatible endpoint
        # (docs/thumbor.md), reading the files as thumbor's file loader does.
        servers[f"ours --workers {cores}, thumbor URLs"] = (twistd(
            "imageserver", "--port", "{port}", "--admin_port", "none",
            "--local_base_path", "store-thumbor", "--maximum_width", "4000",
            "--max_pending", "1000", "--workers", str(cores),
            "--origin", f"files=file://{root}/", "--thumbor",
            "--thumbor_loader", "files", "--thumbor_allow_unsafe",
        ), "/status_check")  # fmt: skip
        for label, n in (("thumbor", 1), (f"thumbor --processes {cores}", cores)):
            conf = os.path.join(root, f"thumbor-{n}.conf")
            with open(conf, "w") as f:
                f.write(
                    "LOADER = 'thumbor.loaders.file_loader'\n"
                    f"FILE_LOADER_ROOT_PATH = {root!r}\n"
                    "ALLOW_UNSAFE_URL = True\n"
                    "STORAGE = 'thumbor.storages.no_storage'\n"
                    "RESULT_STORAGE = 'thumbor.result_storages.file_storage'\n"
                    "RESULT_STORAGE_STORES_UNSAFE = True\n"
                    "RESULT_STORAGE_FILE_STORAGE_ROOT_PATH = "
                    f"{os.path.join(root, f'results-{n}')!r}\n"
                    "MAX_WIDTH = 0\nMAX_HEIGHT = 0\n"
                )
            command = [thumbor, "-i", "127.0.0.1", "-p", "{port}", "-c", conf,
                       "-l", "error", "--processes", str(n)]  # fmt: skip
            servers[label] = (command, "/healthcheck")
        wanted = [w for w in args.servers.split(";") if w]
        servers = {
            label: server
            for label, server in servers.items()
            if not wanted or any(w in label for w in wanted)
        }
        env = {"PYTHONPATH": CHECKOUT}
        with contextlib.ExitStack() as stack:
            running: dict[str, Server] = {}
            for label, (command, health) in servers.items():
                port = free_port()
                command = [a.replace("{port}", str(port)) for a in command]
                running[label] = stack.enter_context(Server(command, port, root, env))
                running[label].wait(health)
            for label, server in running.items():
                if label.startswith("ours"):
                    for data, _ in images.values():
                        upload = urllib.request.Request(
                            server.url("/p"), data=data, method="POST"
                        )
                        urllib.request.urlopen(upload).read()
            table = measure(running, Pair(images), limit, args)
            peak = {label: s.peak_rss / 2**20 for label, s in running.items()}

    table["cpu, width variants of 12MP"] = cpu
    print("peak RSS (MB, children included):",
          ", ".join(f"{k} {v:.0f}" for k, v in peak.items()))  # fmt: skip
    if args.servers or args.sections:
        return
    result = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": {
            "thumbor": subprocess.run(
                [thumbor, "--version"], capture_output=True, text=True
            ).stdout.strip(),
            "pillow": Image.__version__,
        },
        "rounds": args.rounds,
        "seconds": args.seconds,
        "load_client": CLIENT,
        "bare_pillow_limit_per_second": limit,
        "results": table,
        "peak_rss_mb": peak,
    }
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"versus-thumbor-{datetime.date.today()}.json")
    with open(path, "w") as out:
        json.dump(result, out, indent=2)
    print("written to", path)


def measure(
    running: dict[str, Server], pair: Pair, limit: float, args: Any
) -> dict[str, dict[str, Any]]:
    """Every load, A/B/C/D in turn per round; medians per server."""
    table: dict[str, dict[str, Any]] = {}
    never_seen = NeverSeen()

    def url(label: str) -> Any:
        """thumbor's URLs for thumbor and for our compatible endpoint."""
        return pair.theirs if "thumbor" in label else pair.ours

    def chosen(label: str) -> bool:
        wanted = [w for w in args.sections.split(";") if w]
        return not wanted or any(w in label for w in wanted)

    def compare(label: str, paths_for: Any, connections: int) -> None:
        if not chosen(label):
            return
        runs: dict[str, list[Any]] = {name: [] for name in running}
        for _ in range(args.rounds):
            for name, server in running.items():
                paths, spent = paths_for(name)
                result = load(server, paths, connections, args.seconds, bool(spent))
                if spent:
                    spent(result["sent"])
                runs[name].append(result)
        table[label] = {n: median_of(r) for n, r in runs.items()}
        print(f"{label}:", flush=True)
        for name, row in table[label].items():
            print(f"  {name:28} {row['per_second']:7.1f}/s p50 {row['p50_ms']:7.1f}"
                  f" ms p99 {row['p99_ms']:7.1f} ms  server CPU"
                  f" {row['server_cpu_ms']:6.1f} ms/request"
                  f"  {row['per_second'] / limit:.2f} of the limit",
                  flush=True)  # fmt: skip

    def cold(image: str, widths: Sequence[int], ext: str = "jpg") -> Any:
        def paths_for(server: str) -> tuple[list[str], Any]:
            pairs = never_seen.take(server, image, widths)
            paths = [url(server)(image, w, q, ext) for w, q in pairs]

            def spent(sent: int) -> None:
                never_seen.spend(server, image, pairs[:sent])

            return paths, spent

        return paths_for

    print(f"the bare-Pillow limit: {limit:.0f}/s", flush=True)
    for connections in (2, 8, 32):
        for kind, widths in (("exact", EXACT_WIDTHS), ("arbitrary", ARBITRARY_WIDTHS)):
            compare(f"cold 12MP {kind} widths, c={connections}",
                    cold("big.jpg", widths), connections)  # fmt: skip
    for connections in (2, 8, 32):
        compare(f"cold 800x600, c={connections}", cold("small.jpg", range(100, 400)),
                connections)  # fmt: skip
    compare("cold PNG alpha -> png, c=8", cold("alpha.png", range(100, 400), "png"), 8)
    for connections in (8, 32):
        cached = lambda s: ([url(s)("small.jpg", 300, 80)], None)  # noqa: E731
        compare(f"cached, c={connections}", cached, connections)
    if chosen("fairness"):
        fairness(running, pair, never_seen, url, args, table)
    return table


def fairness(
    running: dict[str, Server],
    pair: Pair,
    never_seen: NeverSeen,
    url: Any,
    args: Any,
    table: dict[str, dict[str, Any]],
) -> None:
    """Cached requests while cold renders keep every core busy: the cached
    connections' p99 (cache hits must not wait behind renders)."""
    runs: dict[str, list[Any]] = {name: [] for name in running}
    for _ in range(args.rounds):
        for name, server in running.items():
            pairs = never_seen.take(name, "big.jpg", EXACT_WIDTHS)
            cold_paths = [url(name)("big.jpg", w, q) for w, q in pairs]
            cached = [url(name)("small.jpg", 300, 80)]
            load(server, cached, 1, 1)  # stored and in the cache
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                cold = pool.submit(load, server, cold_paths, 8, args.seconds + 1, True)
                time.sleep(0.5)  # the renders are under way
                result = load(server, cached, 8, args.seconds)
                background = cold.result()
            never_seen.spend(name, "big.jpg", pairs[: background["sent"]])
            result["cold_per_second"] = background["per_second"]
            runs[name].append(result)
    table["fairness"] = {n: median_of(r) for n, r in runs.items()}
    print("fairness: cached c=8 while cold 12 MP c=8 runs:", flush=True)
    for name, row in table["fairness"].items():
        print(f"  {name:28} cached {row['per_second']:7.1f}/s p50"
              f" {row['p50_ms']:6.1f} ms p99 {row['p99_ms']:6.1f} ms;"
              f" cold {row['cold_per_second']:5.1f}/s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
