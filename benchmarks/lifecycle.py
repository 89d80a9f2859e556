"""Measure what write tokens and purges cost, with references from the same run.

    python benchmarks/lifecycle.py [--rounds 3] [--images 30]

Prints medians over rounds:
  1. Uploads per second and server CPU ms per upload (640x480 JPEG, one
     output, 4 clients) with --write_tokens, against the same server without
     it, rounds alternating A/B.
  2. Milliseconds to purge an image with 6 variants: local disk (2 workers)
     and a bucket (moto_server on loopback), against a GET of its info.json
     on the same server.
  3. Seconds from a purge's 204 on one instance to the first 404 on another
     instance of the same bucket, against --purge_check_interval.
  4. With --against REV: never-seen variants of an 800x600 photo per second
     and server CPU ms per request, 2 workers, 4 clients, against the same
     server at git revision REV (a worktree), rounds alternating A/B: what
     the folder gate (a shared flock per render) costs. Then, on the same
     servers: GETs of cached objects per second and server CPU ms per
     request (4 clients; what checking the host's purge generation costs a
     cache hit), and milliseconds to purge an image with its variants.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image

from benchmarks.common import CHECKOUT, Server, cpu_seconds, free_port, load, twistd
from tests.s3server import CREDENTIALS, MotoServer

TOKEN = "benchmark-token-0123456789"
VARIANTS = ("w100.jpg", "w200.jpg", "x120.webp", "w300.png", "x64.jpg", "w150.webp")


def jpeg(seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    image = Image.effect_mandelbrot(size, (-2 + seed / 1000, -1.2, 1, 1.2), 64)
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def call(
    server: Server, method: str, path: str, data: bytes | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(server.url(path), data=data, method=method)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def folder_of(info: bytes) -> str:
    h = json.loads(info)["hash"]
    return f"/p/{h[:3]}/{h[3:6]}/{h[6:9]}/{h[9:]}"


def start(
    root: str, *args: str, env: dict[str, str] | None = None, checkout: str = CHECKOUT
) -> Server:
    port = free_port()
    server = Server(
        twistd("imageserver", "--port", str(port), "--admin_port", "none",
               "--local_base_path", os.path.join(root, f"store-{port}"), *args),
        port, root, {"PYTHONPATH": checkout, **(env or {})},
    )  # fmt: skip
    server.wait("/status_check")
    return server


def uploads(server: Server, images: list[bytes]) -> dict[str, float]:
    before = cpu_seconds(server.process.pid)
    start_time = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        codes = list(
            pool.map(lambda d: call(server, "POST", "/p?outputs=w64.jpg", d)[0], images)
        )
    seconds = time.perf_counter() - start_time
    assert set(codes) == {200}, codes
    server.settle()
    cpu = cpu_seconds(server.process.pid) - before
    return {"per_s": len(images) / seconds, "cpu_ms": cpu * 1000 / len(images)}


def purge_ms(server: Server, seed: int) -> tuple[float, float]:
    """(purge, info.json GET) in ms, for one image with its variants made."""
    status, info = call(server, "POST", f"/p?outputs={','.join(VARIANTS)}", jpeg(seed))
    assert status == 200, info
    folder = folder_of(info)
    start_time = time.perf_counter()
    assert call(server, "GET", f"{folder}/info.json")[0] == 200
    get = time.perf_counter() - start_time
    start_time = time.perf_counter()
    status, body = call(server, "DELETE", folder)
    purge = time.perf_counter() - start_time
    assert status == 204, body
    return purge * 1000, get * 1000


def propagation(first: Server, second: Server, seed: int) -> float:
    status, info = call(first, "POST", "/p?outputs=w100.jpg", jpeg(seed))
    assert status == 200, info
    path = f"{folder_of(info)}/w100.jpg"
    assert call(second, "GET", path)[0] == 200  # in its caches
    assert call(first, "DELETE", folder_of(info))[0] == 204
    purged = time.perf_counter()
    while call(second, "GET", path)[0] != 404:
        time.sleep(0.01)  # a benchmark, not a test: polling is fine
    return time.perf_counter() - purged


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--against", metavar="REV")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    if args.against:
        against(args.against, args.rounds, args.seconds)
        return
    root = tempfile.mkdtemp(prefix="imageserver-lifecycle-")
    tokens = os.path.join(root, "tokens")
    with open(tokens, "w") as f:
        f.write(TOKEN + "\n")

    print("1. uploads, 4 clients, --workers 1 (with tokens / without)")
    results: dict[str, list[dict[str, float]]] = {"tokens": [], "open": []}
    seed = 0
    for _ in range(args.rounds):
        # The same images for both: each server has a store of its own.
        images = [jpeg(seed + i) for i in range(args.images)]
        seed += args.images
        for name, extra in (("tokens", ("--write_tokens", tokens)), ("open", ())):
            with start(root, "--workers", "1", *extra) as server:
                results[name].append(uploads(server, images))
    for key in ("per_s", "cpu_ms"):
        a = statistics.median(r[key] for r in results["tokens"])
        b = statistics.median(r[key] for r in results["open"])
        print(f"   {key:7} {a:8.2f} / {b:8.2f}   ratio {a / b:.3f}")

    moto = MotoServer().start()
    try:
        client = moto.client()
        bucket = "lifecycle"
        client.create_bucket(Bucket=bucket)
        s3 = ("--aws_bucket", bucket, "--s3_endpoint_url", moto.url)
        env = {
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
        }
        print(f"2. purge of an image with {len(VARIANTS)} variants, ms "
              "(purge / GET info.json)")  # fmt: skip
        setups = (
            ("local, 2 workers", ("--workers", "2")),
            ("bucket, 1 process", ("--workers", "1", *s3)),
        )
        for name, extra in setups:
            timings = []
            with start(root, *extra, env=env) as server:
                for _ in range(args.rounds * 5):
                    seed += 1
                    timings.append(purge_ms(server, seed))
            purge = statistics.median(t[0] for t in timings)
            get = statistics.median(t[1] for t in timings)
            print(f"   {name:18} {purge:7.1f} / {get:5.1f}   ratio {purge / get:.1f}")

        print(f"3. a purge reaching another instance, s (--purge_check_interval "
              f"{args.interval:g})")  # fmt: skip
        interval = ("--purge_check_interval", str(args.interval), "--workers", "1")
        with (
            start(root, *s3, *interval, env=env) as first,
            start(root, *s3, *interval, env=env) as second,
        ):
            seconds = []
            for _ in range(args.rounds * 3):
                seed += 1
                seconds.append(propagation(first, second, seed))
        median = statistics.median(seconds)
        print(
            f"   median {median:.2f}  max {max(seconds):.2f}  "
            f"ratio to the interval {median / args.interval:.2f}"
        )
    finally:
        moto.stop()


def against(revision: str, rounds: int, seconds: float) -> None:
    root = tempfile.mkdtemp(prefix="imageserver-against-")
    base = os.path.join(root, "base")
    # The tree of REV, extracted: no worktree is registered in the repository.
    os.makedirs(base)
    archive = subprocess.run(
        ["git", "-C", CHECKOUT, "archive", revision], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", base], input=archive, check=True)
    try:
        print(f"4. never-seen variants, 2 workers, 4 clients: this tree / {revision}")
        servers = {
            "this": start(root, "--workers", "2"),
            "base": start(root, "--workers", "2", checkout=base),
        }
        photo = jpeg(1, (800, 600))
        folders = {
            name: folder_of(call(server, "POST", "/p", photo)[1])
            for name, server in servers.items()
        }
        names = [f"w{w}-q{q}.jpg" for q in range(1, 101) for w in range(40, 800, 3)]
        results: dict[str, list[dict[str, float]]] = {n: [] for n in servers}
        for _ in range(rounds):
            for name, server in servers.items():
                paths = [f"{folders[name]}/{n}" for n in names]
                result = load(server, paths, 4, seconds, unique=True)
                results[name].append(result)
            del names[: max(r[-1]["sent"] for r in results.values())]
        for key in ("per_second", "server_cpu_ms"):
            a = statistics.median(r[key] for r in results["this"])
            b = statistics.median(r[key] for r in results["base"])
            print(f"   {key:14} {a:8.2f} / {b:8.2f}   ratio {a / b:.3f}")
        print(f"5. cached GETs, 2 workers, 4 clients: this tree / {revision}")
        hits: dict[str, list[dict[str, float]]] = {n: [] for n in servers}
        for name, server in servers.items():  # in every worker's memory
            for _ in range(20):
                for cached in ("w200.jpg", "info.json"):
                    call(server, "GET", f"{folders[name]}/{cached}")
        for _ in range(rounds):
            for name, server in servers.items():
                paths = [f"{folders[name]}/{n}" for n in ("w200.jpg", "info.json")]
                hits[name].append(load(server, paths, 4, seconds))
        for key in ("per_second", "server_cpu_ms"):
            a = statistics.median(r[key] for r in hits["this"])
            b = statistics.median(r[key] for r in hits["base"])
            print(f"   {key:14} {a:8.3f} / {b:8.3f}   ratio {a / b:.3f}")
        print(f"6. purge of an image with {len(VARIANTS)} variants, 2 workers, "
              f"ms: this tree / {revision}")  # fmt: skip
        purges: dict[str, list[float]] = {n: [] for n in servers}
        for seed in range(rounds * 5):
            for name, server in servers.items():
                purges[name].append(purge_ms(server, 1000 + seed)[0])
        a, b = (statistics.median(purges[n]) for n in ("this", "base"))
        print(f"   median         {a:8.2f} / {b:8.2f}   ratio {a / b:.3f}")
        for server in servers.values():
            server.__exit__()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
