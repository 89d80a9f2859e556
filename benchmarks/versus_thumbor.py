"""imageserver against thumbor, side by side, on the same machine and images.

    python3 benchmarks/versus_thumbor.py [--rounds 3] [--seconds 4]

Installs thumbor into benchmarks/.thumbor-venv the first time (from PyPI),
starts both servers on loopback (one process each; thumbor reads the images
with its file loader and keeps results in its file result storage), and runs,
alternating A/B for each round:

  cold 12 MP   never-seen widths: exact (height a whole number) and arbitrary
               (180..220), at 2, 8 and 32 concurrent clients
  cold 800x600 never-seen widths, 8 clients
  cold PNG     a 2000x2000 PNG with alpha to never-seen widths, 8 clients
  cached       one URL repeated, 8 clients
  upload       a new 800x600 JPEG with two outputs (imageserver only)
  CPU          the processing function alone against bare Pillow, one thread

Prints medians (requests/s, p50 and p99 latency), each server's peak RSS and
the ratio imageserver/thumbor, and writes them to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from itertools import count
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image

from benchmarks.common import (
    CHECKOUT,
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


def cpu_section() -> dict[str, float]:
    """One thread: our processing function against the bare Pillow limit."""
    data = photo()
    rules = VariantRules(frozenset({"jpg"}), 75, 4000)
    variant = rules.parse("w200.jpg")
    assert variant is not None

    def bare() -> bytes:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (200, 150))
        image = image.resize((200, 150), Image.Resampling.LANCZOS, reducing_gap=3.0)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=75)
        return out.getvalue()

    ours = cpu_ms(lambda: imaging.render(data, variant, 10**9), 15)
    limit = cpu_ms(bare, 15)
    return {"imageserver_ms": ours, "bare_pillow_ms": limit, "ratio": limit / ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    thumbor = thumbor_command()
    widths = count(300)  # never-seen names: a new quality for every request
    qualities = count(1)

    with tempfile.TemporaryDirectory() as root:
        images = {
            "big.jpg": (photo(), "4000x3000 JPEG"),
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

            def compare(
                label: str, make: Any, connections: int, per_round: int
            ) -> None:
                """A/B for each round: fresh URLs from ``make(server, i)``."""
                runs: dict[str, list[Any]] = {"ours": [], "thumbor": []}
                for _ in range(args.rounds):
                    for name, server in (("ours", ours), ("thumbor", theirs)):
                        if per_round:
                            paths = [make(name, i) for i in range(per_round)]
                            runs[name].append(load(server, paths, connections, 0))
                        else:
                            runs[name].append(
                                load(server, [make(name, 0)], connections, args.seconds)
                            )
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

            def cold(name: str, exact: bool, ext: str = "jpg") -> Any:
                def make(server: str, i: int) -> str:
                    # Exact: a multiple of 4, so the height (3/4) is whole.
                    width = 200 + 4 * (i % 50) if exact else 180 + i % 41
                    url = pair.ours if server == "ours" else pair.theirs
                    return url(name, width, 2 + next(qualities) % 97, ext)

                return make

            for connections in (2, 8, 32):
                compare(
                    f"cold 12MP exact widths, c={connections}",
                    cold("big.jpg", True),
                    connections,
                    24,
                )
                compare(
                    f"cold 12MP arbitrary widths, c={connections}",
                    cold("big.jpg", False),
                    connections,
                    24,
                )
            for connections in (2, 8, 32):
                compare(
                    f"cold 800x600, c={connections}",
                    cold("small.jpg", False),
                    connections,
                    200,
                )
            compare(
                "cold PNG alpha -> png, c=8", cold("alpha.png", False, "png"), 8, 24
            )
            cached_ours = pair.ours("small.jpg", 300, 80)
            cached_theirs = pair.theirs("small.jpg", 300, 80)
            compare(
                "cached, c=8",
                lambda s, i: cached_ours if s == "ours" else cached_theirs,
                8,
                0,
            )

            uploads = []
            for _ in range(args.rounds):
                bodies = [photo((800, 600), seed=next(widths)) for _ in range(12)]
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

    table["cpu w200 from 12MP, one thread"] = cpu_section()
    print("cpu, one thread:", json.dumps(table["cpu w200 from 12MP, one thread"]))
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
