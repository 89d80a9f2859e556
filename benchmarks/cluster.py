"""Bulk work here against the same on a Dask cluster, measured in one run.

    python benchmarks/cluster.py [--images 200] [--rounds 2]

Makes ``--images`` photo-like 12-megapixel JPEGs once (kept in a cache folder
between runs), then times ``imageserver process --outputs w300.jpg,w1000.webp``
over all of them, alternating: this process alone (the reference), and
``--scheduler local:2`` (two Dask worker processes here, the cluster path).
Prints items per second, the ratio to the reference, and the cluster path's
overhead per item. Each run stores into a fresh folder, so nothing is skipped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import CHECKOUT, photo

OUTPUTS = "w300.jpg,w1000.webp"
CACHE = os.path.join(tempfile.gettempdir(), "imageserver-bench-photos")


def photos(count: int) -> list[str]:
    os.makedirs(CACHE, exist_ok=True)
    paths = []
    for n in range(count):
        path = os.path.join(CACHE, f"{n:04d}.jpg")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(photo(seed=n))
        paths.append(path)
    return paths


def timed(paths: list[str], *options: str) -> float:
    root = tempfile.mkdtemp(prefix="imageserver-bench-cluster-")
    try:
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "imageserver", "process", "--local_base_path",
             os.path.join(root, "store"), "--outputs", OUTPUTS, *options, *paths],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": CHECKOUT},
        )  # fmt: skip
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if result.returncode or len(result.stdout.splitlines()) != len(paths):
        raise RuntimeError(result.stderr[-2000:])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shard_size", type=int, default=25)
    args = parser.parse_args()
    paths = photos(args.images)
    runs: dict[str, list[float]] = {"local": [], "cluster": []}
    for _ in range(args.rounds):
        runs["local"].append(timed(paths))
        runs["cluster"].append(
            timed(paths, "--scheduler", "local:2", "--shard_size", str(args.shard_size))
        )
    # The fixed cost of each path: a run of two images.
    start_local = statistics.median(timed(paths[:2]) for _ in range(args.rounds))
    start_cluster = statistics.median(
        timed(paths[:2], "--scheduler", "local:2") for _ in range(args.rounds)
    )
    local = statistics.median(runs["local"])
    cluster = statistics.median(runs["cluster"])
    n = len(paths)
    print(f"{n} 12 MP JPEGs -> {OUTPUTS}, medians of {args.rounds} rounds")
    print(f"   this process:        {n / local:6.2f} items/s ({local:.1f} s)")
    print(f"   --scheduler local:2: {n / cluster:6.2f} items/s ({cluster:.1f} s)"
          f"   ratio {local / cluster:.3f}")  # fmt: skip
    print(f"   cluster overhead: {(cluster - local) * 1000 / n:+.1f} ms per item "
          f"(start of the cluster included)")  # fmt: skip
    start = start_cluster - start_local
    steady = (cluster - local - start) * 1000 / n
    print(f"   of which starting the cluster: {start:.2f} s (a run of 2 images: "
          f"{start_cluster:.2f} s against {start_local:.2f} s); per item after "
          f"it: {steady:+.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
