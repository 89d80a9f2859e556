"""imageserver against thumbor, side by side, on the same machine and images.

    python3 benchmarks/versus_thumbor.py [--rounds 3] [--seconds 4]

Installs thumbor into benchmarks/.thumbor-venv the first time (from PyPI),
starts both servers on loopback (one process each; thumbor reads the images
with its file loader and keeps results in its file result storage), and runs,
alternating A/B, ``--rounds`` runs of ``--seconds`` each:

  CPU          first, one thread: our processing function and bare Pillow
               (draft, LANCZOS, encode) over the cold runs' widths; the
               bare-Pillow limit is cores / that cost
  cold 12 MP   never-seen widths, exact (height a whole number: 100..496
               step 4) and arbitrary (180..220), at 2, 8 and 32 connections,
               each also as a share of the bare-Pillow limit
  cold 800x600 never-seen widths, at 2, 8 and 32 connections
  cold PNG     a 2000x2000 PNG with alpha to never-seen widths, 8 connections
  cached       one URL repeated, 8 connections
  upload       a new 800x600 JPEG with two outputs (imageserver only)

Never-seen means never seen in the whole run: no cold request is a cache hit.
The load comes from wrk when installed (``apt-get install wrk``), else from a
Python client (benchmarks/common.py). Prints medians (requests/s, p50 and p99
latency, the client's CPU per request), each server's peak RSS and the ratio
imageserver/thumbor, and writes them to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from itertools import count
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
from imageserver import imaging
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
    """The least work for a width variant of a JPEG: draft, LANCZOS, encode."""
    image = Image.open(io.BytesIO(data))
    height = round(width * image.height / image.width)
    image.draft("RGB", (width, height))
    image = image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


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
        lambda: imaging.render(data, next(variants), imaging.Limits(10**9)), 31
    )
    bare = cpu_ms(lambda: bare_pillow(data, next(widths)), 31)
    return {"imageserver_ms": ours, "bare_pillow_ms": bare, "ratio": bare / ours}


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
    args = parser.parse_args()
    thumbor = thumbor_command()
    seeds = count(300)
    print(f"load client: {CLIENT}", flush=True)
    big = photo()
    # Measured first, on a quiet machine: the limit the cold runs are held to.
    cpu = cpu_section(big)
    cores = len(os.sched_getaffinity(0))
    limit = cores * 1000 / cpu["bare_pillow_ms"]
    print(
        f"cpu, one thread: imageserver {cpu['imageserver_ms']:.1f} ms,"
        f" bare Pillow {cpu['bare_pillow_ms']:.1f} ms;"
        f" limit on {cores} cores {limit:.0f}/s",
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
        with open(os.path.join(root, "thumbor.conf"), "w") as f:
            f.write(
                "LOADER = 'thumbor.loaders.file_loader'\n"
                f"FILE_LOADER_ROOT_PATH = {root!r}\n"
                "ALLOW_UNSAFE_URL = True\n"
                "STORAGE = 'thumbor.storages.no_storage'\n"
                "RESULT_STORAGE = 'thumbor.result_storages.file_storage'\n"
                "RESULT_STORAGE_STORES_UNSAFE = True\n"
                f"RESULT_STORAGE_FILE_STORAGE_ROOT_PATH = {root + '/results'!r}\n"
                "MAX_WIDTH = 0\nMAX_HEIGHT = 0\n"
            )
        ours_port, theirs_port = free_port(), free_port()
        ours_cmd = twistd(
            "imageserver",
            "--port",
            str(ours_port),
            "--admin_port",
            "none",
            "--local_base_path",
            "store",
            "--maximum_width",
            "4000",
            "--max_pending",
            "1000",
        )
        theirs_cmd = [
            thumbor,
            "-i",
            "127.0.0.1",
            "-p",
            str(theirs_port),
            "-c",
            os.path.join(root, "thumbor.conf"),
            "-l",
            "error",
        ]
        env = {"PYTHONPATH": CHECKOUT}
        with (
            Server(ours_cmd, ours_port, root, env) as ours,
            Server(theirs_cmd, theirs_port, root) as theirs,
        ):
            ours.wait("/status_check")
            theirs.wait("/healthcheck")
            for data, _ in images.values():
                upload = urllib.request.Request(
                    ours.url("/p"), data=data, method="POST"
                )
                urllib.request.urlopen(upload).read()
            pair = Pair(images)
            table: dict[str, dict[str, Any]] = {}

            never_seen = NeverSeen()

            def compare(label: str, paths_for: Any, connections: int) -> None:
                """A/B for each round, ``args.seconds`` each, paths from
                ``paths_for(server)`` (a list, and what to do with the count
                of requests sent)."""
                runs: dict[str, list[Any]] = {"ours": [], "thumbor": []}
                for _ in range(args.rounds):
                    for name, server in (("ours", ours), ("thumbor", theirs)):
                        paths, spent = paths_for(name)
                        result = load(
                            server, paths, connections, args.seconds, bool(spent)
                        )
                        if spent:
                            spent(result["sent"])
                        runs[name].append(result)
                table[label] = {n: median_of(r) for n, r in runs.items()}
                a, b = table[label]["ours"], table[label]["thumbor"]
                table[label]["ratio"] = a["per_second"] / b["per_second"]
                print(
                    f"{label:34} ours {a['per_second']:7.1f}/s"
                    f" p50 {a['p50_ms']:7.1f} ms p99 {a['p99_ms']:7.1f} |"
                    f" thumbor {b['per_second']:7.1f}/s p50 {b['p50_ms']:7.1f}"
                    f" p99 {b['p99_ms']:7.1f} | ratio {table[label]['ratio']:.2f}",
                    flush=True,
                )

            def cold(image: str, widths: Sequence[int], ext: str = "jpg") -> Any:
                def paths_for(server: str) -> tuple[list[str], Any]:
                    pairs = never_seen.take(server, image, widths)
                    url = pair.ours if server == "ours" else pair.theirs
                    paths = [url(image, w, q, ext) for w, q in pairs]

                    def spent(sent: int) -> None:
                        never_seen.spend(server, image, pairs[:sent])

                    return paths, spent

                return paths_for

            big_rows = []
            for connections in (2, 8, 32):
                for kind, widths in (
                    ("exact", EXACT_WIDTHS),
                    ("arbitrary", ARBITRARY_WIDTHS),
                ):
                    label = f"cold 12MP {kind} widths, c={connections}"
                    compare(label, cold("big.jpg", widths), connections)
                    big_rows.append(label)
            for label in big_rows:
                row = table[label]
                row["of_limit"] = {
                    n: row[n]["per_second"] / limit for n in ("ours", "thumbor")
                }
                print(
                    f"{label:34} of the bare-Pillow limit ({limit:.0f}/s):"
                    f" ours {row['of_limit']['ours']:.2f},"
                    f" thumbor {row['of_limit']['thumbor']:.2f}"
                )
            for connections in (2, 8, 32):
                compare(
                    f"cold 800x600, c={connections}",
                    cold("small.jpg", range(100, 400)),
                    connections,
                )
            compare(
                "cold PNG alpha -> png, c=8",
                cold("alpha.png", range(100, 400), "png"),
                8,
            )
            cached_ours = pair.ours("small.jpg", 300, 80)
            cached_theirs = pair.theirs("small.jpg", 300, 80)
            compare(
                "cached, c=8",
                lambda s: ([cached_ours if s == "ours" else cached_theirs], None),
                8,
            )

            uploads = []
            for _ in range(args.rounds):
                bodies = [photo((800, 600), seed=next(seeds)) for _ in range(12)]
                start = time.perf_counter()
                for body in bodies:
                    request = urllib.request.Request(
                        ours.url("/p?outputs=x300.jpg,x300.webp"),
                        data=body,
                        method="POST",
                    )
                    urllib.request.urlopen(request).read()
                uploads.append(len(bodies) / (time.perf_counter() - start))
            rate = sorted(uploads)[len(uploads) // 2]
            table["upload 800x600 + 2 outputs (ours, c=1)"] = {"per_second": rate}
            print(f"{'upload 800x600 + 2 outputs, c=1':34} ours {rate:7.1f}/s")
            peak = {
                "ours_mb": ours.peak_rss / 2**20,
                "thumbor_mb": theirs.peak_rss / 2**20,
            }

    table["cpu, width variants of 12MP, one thread"] = cpu
    print(
        f"peak RSS: imageserver {peak['ours_mb']:.0f} MB,"
        f" thumbor {peak['thumbor_mb']:.0f} MB"
    )
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
        "peak_rss": peak,
    }
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"versus-thumbor-{datetime.date.today()}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print("written to", path)


if __name__ == "__main__":
    main()
