"""Delivery options: what CORS, client hints and tracing cost on the cached
path, off and on, against the code before they existed.

Servers, each on a store of its own with the same photograph and its cached
``w200.jpg`` (served from the memory cache), run side by side; rounds
alternate between them, 8 connections each, and the figure is the server's
CPU per request (the steadiest on a noisy machine), as a ratio to
**before** (the checkout before CORS, Range, lifetimes, client hints, rate
limits and tracing: ``--before``, c6a612b by default):

- **off**: this checkout on its defaults (every one of them off);
- **cors**: ``--cors_origins https://shop.example``, each request with that
  ``Origin``;
- **hints**: ``--client_hints``, ``w200-ch.jpg`` asked with
  ``Sec-CH-DPR: 2`` (served as the stored ``w400.jpg``);
- **tracing**: ``--otlp_endpoint`` to a receiver in this process, every
  request traced (``--otlp_sample_ratio`` 1, the default);
- **traced10**: the same, one request in ten traced
  (``--otlp_sample_ratio 0.1``).

Run: ``python3 benchmarks/delivery.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import CHECKOUT, Server, free_port, load, photo, twistd

PORTS = range(7400, 7500)


class Sink(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that takes every batch and counts the bytes."""

    received = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        type(self).received += len(self.rfile.read(length))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def checkout_of(commit: str, root: str) -> str:
    """The tree of ``commit``, unpacked under ``root``."""
    path = os.path.join(root, f"checkout-{commit}")
    os.mkdir(path)
    archive = subprocess.run(
        ["git", "-C", CHECKOUT, "archive", commit], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", path], input=archive, check=True)
    return path


def start(root: str, code: str, *extra: str) -> Server:
    port = free_port(PORTS)
    store = tempfile.mkdtemp(dir=root)
    server = Server(
        twistd(
            "imageserver", "--port", str(port), "--admin_port", "none",
            "--local_base_path", store, *extra,
        ),
        port, root, {"PYTHONPATH": code},
    )  # fmt: skip
    server.wait("/status_check")
    return server


def get(server: Server, path: str, data: bytes | None = None, **headers: str) -> bytes:
    request = urllib.request.Request(server.url(path), data, headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--before", default="c6a612b")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 2
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    traces = f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"
    data = photo((1600, 1200))
    digest = hashlib.md5(data).hexdigest()
    folder = f"/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"
    with tempfile.TemporaryDirectory() as root:
        before = checkout_of(args.before, root)
        plain = (f"{folder}/w200.jpg", ())
        setups = {
            "before": (before, (), plain),
            "off": (CHECKOUT, (), plain),
            "cors": (
                CHECKOUT,
                ("--cors_origins", "https://shop.example"),
                (f"{folder}/w200.jpg", ("Origin: https://shop.example",)),
            ),
            "hints": (
                CHECKOUT,
                ("--client_hints",),
                (f"{folder}/w200-ch.jpg", ("Sec-CH-DPR: 2",)),
            ),
            "tracing": (CHECKOUT, ("--otlp_endpoint", traces), plain),
            "traced10": (
                CHECKOUT,
                ("--otlp_endpoint", traces, "--otlp_sample_ratio", "0.1"),
                plain,
            ),
        }
        servers: dict[str, Server] = {}
        try:
            for label, (code, extra, (path, headers)) in setups.items():
                servers[label] = server = start(root, code, *extra)
                get(server, "/p", data)
                warm = dict(h.split(": ", 1) for h in headers)
                get(server, path, **warm)
                get(server, path, **warm)
            runs: dict[str, list[float]] = {label: [] for label in setups}
            for round_ in range(args.rounds):
                for label, (_, _, (path, headers)) in setups.items():
                    result = load(servers[label], [path], 8, args.seconds,
                                  headers=headers)  # fmt: skip
                    runs[label].append(result["server_cpu_ms"])
                    print(f"  round {round_ + 1} {label:8}"
                          f" {result['per_second']:7.0f}/s"
                          f" {result['server_cpu_ms']:.3f} ms CPU/request",
                          flush=True)  # fmt: skip
        finally:
            for server in servers.values():
                server.__exit__()
            sink.shutdown()
    reference = statistics.median(runs["before"])
    print(f"cached w200.jpg, server CPU per request, median of {args.rounds}"
          f" rounds, against before ({args.before}): {reference:.3f} ms")  # fmt: skip
    for label, values in runs.items():
        median = statistics.median(values)
        spread = f"{min(values) / reference:.3f}-{max(values) / reference:.3f}"
        print(f"  {label:8} {median:.3f} ms  {median / reference:.3f}x"
              f"  (rounds {spread})")  # fmt: skip
    print(f"  spans received: {Sink.received} bytes")


if __name__ == "__main__":
    main()
