"""Origins: what serving by path costs against serving by hash.

One server with a directory origin (``--origin o=file://...``) and the same
photographs uploaded into ``p``; rounds alternate A and B in one run:

- **cached**: a cached variant by its path URL (the path's record looked up,
  then the variant) against the same variant by its hash URL; the target is
  a lookup under 5 % of a cached request's server CPU.
- **first request**: the first GET of a new path (fetch, check, store, render)
  against an upload plus the GET of the same variant, per image.
- **revalidation**: a web origin (Python's http.server, which answers
  If-Modified-Since with 304) and a 2 s ``--origin_ttl``: the origin's
  requests per second under steady load over 20 paths (at most one per path
  per TTL is the design).

Run: ``python3 benchmarks/origins.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import os
import statistics
import sys
import tempfile
import threading
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (
    CHECKOUT,
    Server,
    cpu_seconds,
    free_port,
    load,
    photo,
    twistd,
)
from benchmarks.peers_live import with_comment

PORTS = range(7400, 7500)


def folder(digest: str) -> str:
    return f"/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"


def read(root: str, name: str) -> bytes:
    with open(os.path.join(root, "origin", name), "rb") as f:
        return f.read()


def get(server: Server, path: str, data: bytes | None = None) -> bytes:
    method = "POST" if data is not None else "GET"
    request = urllib.request.Request(server.url(path), data, method=method)
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()  # type: ignore[no-any-return]


def start(root: str, origin: str, *extra: str) -> Server:
    """A server on its defaults whose namespace ``o`` is ``origin``, on a
    store of its own."""
    port = free_port(PORTS)
    store = tempfile.mkdtemp(dir=root)
    server = Server(
        twistd(
            "imageserver", "--port", str(port), "--admin_port", "none",
            "--local_base_path", store, "--origin", f"o={origin}", *extra,
        ),
        port, root, {"PYTHONPATH": CHECKOUT},
    )  # fmt: skip
    server.wait("/status_check")
    return server


class Counted(http.server.SimpleHTTPRequestHandler):
    """A web origin that counts what it is asked, and its 304s."""

    asked = 0
    not_modified = 0

    def send_response(self, code: int, message: str | None = None) -> None:
        type(self).asked += 1
        type(self).not_modified += code == 304
        super().send_response(code, message)

    def log_message(self, *args: object) -> None:
        pass


def cached(root: str, rounds: int, seconds: float) -> None:
    with start(root, f"file://{root}/origin") as server:
        digest = hashlib.md5(read(root, "photo-0.jpg")).hexdigest()
        get(server, "/o/photo-0.jpg/w200.jpg")
        by_hash, by_path = f"/o{folder(digest)[2:]}/w200.jpg", "/o/photo-0.jpg/w200.jpg"
        runs: dict[str, list[float]] = {"hash": [], "path": []}
        for _ in range(rounds):
            for label, path in (("hash", by_hash), ("path", by_path)):
                result = load(server, [path], 8, seconds)
                runs[label].append(result["server_cpu_ms"])
                rate = result["requests"] / seconds
                cpu = result["server_cpu_ms"]
                print(f"  cached by {label}: {rate:8.0f}/s, {cpu:.3f} ms CPU/request",
                      flush=True)  # fmt: skip
        a, b = statistics.median(runs["hash"]), statistics.median(runs["path"])
        print(f"cached: path/hash server CPU per request {b / a:.3f} "
              f"({a:.3f} -> {b:.3f} ms)")  # fmt: skip


def first(root: str, count: int) -> None:
    with start(root, f"file://{root}/origin") as server:
        times: dict[str, list[float]] = {"upload+GET": [], "path GET": []}
        for index in range(count):
            for label in ("upload+GET", "path GET"):
                name = f"photo-{index + 1}.jpg"
                data = read(root, name)
                if label == "upload+GET":  # byte-distinct from the origin's copy
                    data = with_comment(data, b"uploaded")
                before = cpu_seconds(server.process.pid)
                if label == "upload+GET":
                    digest = hashlib.md5(data).hexdigest()
                    get(server, "/p", data)
                    get(server, f"{folder(digest)}/w200.jpg")
                else:
                    get(server, f"/o/{name}/w200.jpg")
                server.settle()
                times[label].append(1000 * (cpu_seconds(server.process.pid) - before))
        # /proc counts CPU in 10 ms ticks: the mean over every image.
        a, b = (statistics.mean(times[k]) for k in ("upload+GET", "path GET"))
        print(f"first request: path GET / (upload + GET) server CPU {b / a:.3f} "
              f"({a:.1f} -> {b:.1f} ms)")  # fmt: skip


def revalidation(root: str, paths: int, ttl: float, seconds: float) -> None:
    handler = functools.partial(Counted, directory=os.path.join(root, "origin"))
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{web.server_address[1]}/"
    try:
        with start(root, origin, "--origin_ttl", str(ttl),
                   "--allow_private_sources") as server:  # fmt: skip
            names = [f"/o/photo-{i}.jpg/w200.jpg" for i in range(paths)]
            for name in names:
                get(server, name)
            asked, not_modified = Counted.asked, Counted.not_modified
            result = load(server, names, 8, seconds)
            asked, not_modified = (
                Counted.asked - asked,
                Counted.not_modified - not_modified,
            )
        print(f"revalidation: {paths} paths under {result['requests'] / seconds:.0f}"
              f" requests/s, --origin_ttl {ttl:g}: {asked / seconds:.1f} origin"
              f" requests/s ({not_modified} of {asked} answered 304; at most"
              f" {paths / ttl:.1f}/s by design)")  # fmt: skip
    finally:
        web.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 2
    with tempfile.TemporaryDirectory() as root:
        os.mkdir(os.path.join(root, "origin"))
        for index in range(42):
            with open(os.path.join(root, "origin", f"photo-{index}.jpg"), "wb") as f:
                f.write(photo((1600, 1200), seed=index))
        cached(root, args.rounds, args.seconds)
        first(root, 5 if args.quick else 40)
        revalidation(root, 20, 2.0, 2 * args.seconds)


if __name__ == "__main__":
    main()
