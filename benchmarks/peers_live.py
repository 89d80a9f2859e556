"""imageserver, thumbor and IPX side by side: live servers, never-seen variants.

    python3 benchmarks/peers_live.py [--rounds 3] [--seconds 15]
        [--servers imageserver;thumbor;IPX] [--scenarios 12MP;cached]
        [--copies-big 1000] [--copies-small 2400] [--quick]

Starts three servers on loopback (ports 7400-7499), each as its docs deploy
it and otherwise on its defaults:

  imageserver  ``twistd -n imageserver --port P --admin_port none
               --local_base_path DIR``: one worker per CPU; every source is
               uploaded to it (POST /p) and served from its md5 folder
  thumbor      7.8 from benchmarks/.thumbor-venv (installed on first use), with
               ``--processes`` = cores, its file loader rooted at the sources,
               default quality (80), no source storage, file result storage
               and ALLOW_UNSAFE_URL
  IPX          3 (sharp, libvips) from benchmarks/.ipx (``npm install ipx@3``
               on first use): ``ipx serve --dir SOURCES --host 127.0.0.1
               --port P``; one Node process, no result storage

The sources are ``--copies-big`` byte-distinct copies of a 12 MP photo and
``--copies-small`` of an 800x600 one (benchmarks.common.photo), made distinct
by a JPEG comment after SOI, plus two spare copies of each for the cached and
fidelity requests. The scenarios, each server in turn in every round:

  cold 12MP -> jpg      w180..w220 (step 4: whole heights) at 2, 8 and 32
                        connections; -> webp and -> avif at 8
  cold 800x600 -> jpg   the same widths at 2, 8 and 32 connections
  cached w200 jpg       one stored variant over and over, at 8 and 32
                        connections (not IPX: it keeps no results)

Cold means never asked of that server in the whole run: the names run width
by width over all the copies (a copy's original comes back only after every
other copy), no (copy, width, format) is asked twice of one server, and
running out of names is an error (give fewer --seconds or more copies; each
copy gives 11 names a format: on 2 cores, 3 rounds of 15 s send the fastest
server about 13,000 12 MP JPEG names and 75,000 800x600 ones, so about 1,200
and 7,000 copies).
The load comes from wrk when installed, else a Python client (common.py).

Before the load, one w200 of two spare copies of each photo in each format
(jpg, webp, avif from 12 MP, jpg from 800x600) is fetched from each server,
checked, and scored with SSIMULACRA2 against a full decode of the source
resized to the output's size with float LANCZOS (benchmarks/peers.py's
Rater, benchmarks/fidelity.py's score; needs the ``bench`` extra).

Prints markdown tables: per scenario the medians over rounds of requests/s
and p50/p99 latency of each server, our ratios to the peers, the server's CPU
per request (its whole process tree, until idle after the run) and the load
client's; each server's peak RSS (its process tree, polled every 0.2 s; a
page shared by processes counts in each) per scenario; then fidelity and
bytes. Writes them to benchmarks/results/peers-live-DATE.json, unless the run
is partial (--quick, --servers, --scenarios).

thumbor's processes share one listening socket, and wrk opens its keep-alive
connections at once: with 2 or 8 of them, one process may take them all for
the whole run (rounds vary; take the median of several). A run warns when
the cold names left look too few for the runs still to come.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import os
import platform
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image

from benchmarks.common import (
    CHECKOUT,
    CLIENT,
    Exhausted,
    Failed,
    Server,
    free_port,
    load,
    median_of,
    photo,
    twistd,
)
from benchmarks.peers import Rater
from benchmarks.versus_thumbor import folder, thumbor_command

IPX_DIR = os.path.join(CHECKOUT, "benchmarks", ".ipx")
RESULTS = os.path.join(CHECKOUT, "benchmarks", "results")
PORTS = range(7400, 7500)
SERVERS = ("imageserver", "thumbor", "IPX")
#: Widths of a whole height on a 4:3 photo (height = width * 3 / 4).
WIDTHS = list(range(180, 221, 4))
#: Copies of each photo kept out of the cold runs: cached and fidelity requests.
SPARES = 2
PHOTOS = {"12MP": ((4000, 3000), 0), "800x600": ((800, 600), 1)}
PIL_FORMAT = {"jpg": "JPEG", "webp": "WEBP", "avif": "AVIF"}


@dataclasses.dataclass(frozen=True)
class Copy:
    """One byte-distinct copy of a photo: its file name, and its md5 (its
    folder on imageserver)."""

    file: str
    digest: str


@dataclasses.dataclass(frozen=True)
class Scenario:
    label: str
    photo: str
    fmt: str
    connections: int
    cached: bool = False


SCENARIOS = [
    *(Scenario(f"cold 12MP -> jpg c={c}", "12MP", "jpg", c) for c in (2, 8, 32)),
    Scenario("cold 12MP -> webp c=8", "12MP", "webp", 8),
    Scenario("cold 12MP -> avif c=8", "12MP", "avif", 8),
    *(Scenario(f"cold 800x600 -> jpg c={c}", "800x600", "jpg", c) for c in (2, 8, 32)),
    *(Scenario(f"cached w200 jpg c={c}", "12MP", "jpg", c, True) for c in (8, 32)),
]
#: The outputs scored for fidelity: (photo, format).
FIDELITY = [("12MP", "jpg"), ("12MP", "webp"), ("12MP", "avif"), ("800x600", "jpg")]


def ipx_command() -> str:
    """The IPX executable, installed into benchmarks/.ipx if missing."""
    executable = os.path.join(IPX_DIR, "node_modules", ".bin", "ipx")
    if not os.path.exists(executable):
        print("installing IPX into", IPX_DIR, "...", flush=True)
        subprocess.run(
            ["npm", "install", "--prefix", IPX_DIR, "--no-audit", "--no-fund",
             "ipx@3"],
            check=True,
        )  # fmt: skip
    return executable


def with_comment(data: bytes, text: bytes) -> bytes:
    """The JPEG with a COM segment holding ``text`` right after its SOI."""
    assert data[:2] == b"\xff\xd8"
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]


def path(server: str, copy: Copy, width: int, fmt: str) -> str:
    """The URL path of ``copy`` at ``width`` in ``fmt`` on ``server``."""
    if server == "imageserver":
        return f"{folder(copy.digest)}/w{width}.{fmt}"
    if server == "thumbor":
        filters = "" if fmt == "jpg" else f"filters:format({fmt})/"
        return f"/unsafe/{width}x0/{filters}{copy.file}"
    return f"/w_{width}{'' if fmt == 'jpg' else f',f_{fmt}'}/{copy.file}"


def make_copies(photo_name: str, data: bytes, count: int, root: str) -> list[Copy]:
    """``count`` byte-distinct copies of ``data``, written into ``root``."""
    copies = []
    for index in range(count):
        copy = with_comment(data, f"{photo_name} copy {index}".encode())
        name = f"{photo_name}-{index:05d}.jpg"
        with open(os.path.join(root, name), "wb") as f:
            f.write(copy)
        copies.append(Copy(name, hashlib.md5(copy).hexdigest()))
    return copies


def upload(server: Server, root: str, copies: list[Copy]) -> None:
    """Every copy into imageserver, four at a time."""

    def one(copy: Copy) -> None:
        with open(os.path.join(root, copy.file), "rb") as f:
            request = urllib.request.Request(server.url("/p"), f.read(), method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.load(response)
        if answer["hash"] != copy.digest:
            raise RuntimeError(f"{copy.file} stored as {answer['hash']}")

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(one, copies))


class NeverSeen:
    """The cold names of each (server, photo, format), width-major over the
    copies; a cursor per triple moves past every name sent."""

    def __init__(self, copies: dict[str, list[Copy]]) -> None:
        self.order = {
            name: [(w, c) for w in WIDTHS for c in found[:-SPARES]]
            for name, found in copies.items()
        }
        self.cursor: dict[tuple[str, str, str], int] = {}

    def paths(self, server: str, photo_name: str, fmt: str) -> list[str]:
        start = self.cursor.get((server, photo_name, fmt), 0)
        return [path(server, c, w, fmt) for w, c in self.order[photo_name][start:]]

    def spend(self, server: str, photo_name: str, fmt: str, sent: int) -> None:
        key = (server, photo_name, fmt)
        self.cursor[key] = self.cursor.get(key, 0) + sent

    def foresee(
        self, server: str, photo_name: str, fmt: str, sent: int, runs: int
    ) -> str | None:
        """A warning if ``runs`` more runs sending ``sent`` names each would
        run out of names, with the copies they would need."""
        used = self.cursor.get((server, photo_name, fmt), 0)
        if used + sent * runs <= len(self.order[photo_name]):
            return None
        copies = -(-(used + sent * runs) // len(WIDTHS))
        return (
            f"{server} may run out of cold {photo_name} -> {fmt} names in {runs}"
            f" more runs at this rate: give about {copies} copies"
        )


def chosen(wanted: str, label: str) -> bool:
    """Whether ``label`` matches one of the ;- or ,-separated substrings."""
    words = [w.lower() for w in re.split("[;,]", wanted) if w]
    return not words or any(w in label.lower() for w in words)


def start_servers(
    stack: contextlib.ExitStack, root: str, sources: str, wanted: str
) -> dict[str, Server]:
    """The chosen servers, started one after another and answering."""
    cores = len(os.sched_getaffinity(0))
    conf = os.path.join(root, "thumbor.conf")
    with open(conf, "w") as f:
        f.write(
            "LOADER = 'thumbor.loaders.file_loader'\n"
            f"FILE_LOADER_ROOT_PATH = {sources!r}\n"
            "ALLOW_UNSAFE_URL = True\n"
            "STORAGE = 'thumbor.storages.no_storage'\n"
            "RESULT_STORAGE = 'thumbor.result_storages.file_storage'\n"
            "RESULT_STORAGE_STORES_UNSAFE = True\n"
            "RESULT_STORAGE_FILE_STORAGE_ROOT_PATH = "
            f"{os.path.join(root, 'thumbor-results')!r}\n"
        )
    commands: dict[str, Callable[[int], tuple[list[str], str]]] = {
        "imageserver": lambda port: (twistd(
            "imageserver", "--port", str(port), "--admin_port", "none",
            "--local_base_path", os.path.join(root, "store"),
        ), "/status_check"),
        "thumbor": lambda port: ([
            thumbor_command(), "-i", "127.0.0.1", "-p", str(port), "-c", conf,
            "-l", "error", "--processes", str(cores),
        ], "/healthcheck"),
        "IPX": lambda port: ([
            ipx_command(), "serve", "--dir", sources, "--host", "127.0.0.1",
            "--port", str(port),
        ], "/_/probe.jpg"),
    }  # fmt: skip
    running = {}
    for name, command in commands.items():
        if not chosen(wanted, name):
            continue
        port = free_port(PORTS)
        argv, health = command(port)
        env = {"PYTHONPATH": CHECKOUT}
        if name == "IPX":  # listhen takes these over its flags
            env.update(HOST="127.0.0.1", PORT=str(port))
        running[name] = stack.enter_context(Server(argv, port, root, env))
        running[name].wait(health)
    return running


def fidelity(
    running: dict[str, Server],
    copies: dict[str, list[Copy]],
    sources: dict[str, bytes],
    root: str,
) -> dict[str, dict[str, dict[str, float]]]:
    """Each server's w200 of the spare copies, checked and scored: medians of
    bytes and SSIMULACRA2 per (photo, format) and server."""
    found: dict[str, dict[str, dict[str, float]]] = {}
    for photo_name, fmt in FIDELITY:
        rate = Rater(sources[photo_name], root)
        rows: dict[str, list[tuple[int, float]]] = {}
        for copy in copies[photo_name][-SPARES:]:
            for name, server in running.items():
                url = server.url(path(name, copy, 200, fmt))
                with urllib.request.urlopen(url, timeout=60) as response:
                    data = response.read()
                image = Image.open(io.BytesIO(data))
                if (image.format, image.size) != (PIL_FORMAT[fmt], (200, 150)):
                    raise RuntimeError(f"{url}: {image.format} {image.size}")
                rows.setdefault(name, []).append(rate(data))
        found[f"{photo_name} -> {fmt}"] = {
            name: {
                "bytes": statistics.median(b for b, _ in scored),
                "ssimulacra2": statistics.median(s for _, s in scored),
            }
            for name, scored in rows.items()
        }
    return found


def measure(
    running: dict[str, Server],
    copies: dict[str, list[Copy]],
    args: Any,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, float]], list[str]]:
    """Every chosen scenario, the servers in turn each round: the medians per
    server, the peak RSS (MB) per server, and the runs that had errors."""
    table: dict[str, dict[str, Any]] = {}
    peaks: dict[str, dict[str, float]] = {}
    errors: list[str] = []
    never_seen = NeverSeen(copies)
    planned = [s for s in SCENARIOS if chosen(args.scenarios, s.label)]
    for index, scenario in enumerate(planned):
        later = sum(
            (s.photo, s.fmt, s.cached) == (scenario.photo, scenario.fmt, False)
            for s in planned[index + 1 :]
        )
        servers = {
            name: server
            for name, server in running.items()
            if not (scenario.cached and name == "IPX")
        }
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        peaks[scenario.label] = {}
        for round_ in range(args.rounds):
            for name, server in servers.items():
                if scenario.cached:
                    spare = copies[scenario.photo][-1]
                    paths = [path(name, spare, 200, scenario.fmt)]
                else:
                    paths = never_seen.paths(name, scenario.photo, scenario.fmt)
                with server.sampling() as peak:
                    try:
                        result = load(server, paths, scenario.connections,
                                      args.seconds, not scenario.cached)  # fmt: skip
                    except Exhausted as exhausted:
                        raise Exhausted(
                            f"{scenario.label}, {name}: {exhausted} or more copies"
                        ) from exhausted
                    except Failed as failed:
                        result = failed.result
                        errors.append(f"{scenario.label}, {name}: {failed}")
                        print("  error:", errors[-1], flush=True)
                if not scenario.cached:
                    key = (name, scenario.photo, scenario.fmt)
                    never_seen.spend(*key, result["sent"])
                    runs_left = args.rounds - round_ - 1 + args.rounds * later
                    warning = never_seen.foresee(*key, result["sent"], runs_left)
                    if warning:
                        print("  warning:", warning, flush=True)
                runs[name].append(result)
                peaks[scenario.label][name] = max(
                    peaks[scenario.label].get(name, 0), peak.bytes / 2**20
                )
        table[scenario.label] = {name: median_of(r) for name, r in runs.items()}
        print(f"{scenario.label}:", flush=True)
        for name, row in table[scenario.label].items():
            print(f"  {name:12} {row['per_second']:7.1f}/s p50 {row['p50_ms']:7.1f}"
                  f" ms p99 {row['p99_ms']:7.1f} ms  server CPU"
                  f" {row['server_cpu_ms']:6.1f} ms/request,"
                  f" peak RSS {peaks[scenario.label][name]:5.0f} MB",
                  flush=True)  # fmt: skip
    return table, peaks, errors


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def report(
    table: dict[str, dict[str, Any]],
    peaks: dict[str, dict[str, float]],
    idle: dict[str, float],
    scores: dict[str, dict[str, dict[str, float]]],
) -> str:
    """The three tables, in markdown."""

    def cell(row: dict[str, Any] | None) -> str:
        if row is None:
            return "-"
        errors = f", {row['errors']:.0f} errors" if row["errors"] else ""
        return (f"{row['per_second']:.1f}/s ({row['p50_ms']:.0f}/"
                f"{row['p99_ms']:.0f} ms{errors})")  # fmt: skip

    def each(rows: dict[str, Any], show: Callable[[Any], str]) -> str:
        return "/".join(show(rows[s]) if s in rows else "-" for s in SERVERS)

    def ratio(rows: dict[str, Any], peer: str) -> str:
        if "imageserver" not in rows or peer not in rows:
            return "-"
        theirs = rows[peer]["per_second"]
        return f"{rows['imageserver']['per_second'] / theirs:.2f}" if theirs else "-"

    speed = markdown(
        ["scenario", *(f"{s} req/s (p50/p99)" for s in SERVERS), "ours/thumbor",
         "ours/IPX", "server CPU ms/req ours/thumbor/IPX",
         "client CPU ms/req"],
        [[label, *(cell(rows.get(s)) for s in SERVERS), ratio(rows, "thumbor"),
          ratio(rows, "IPX"), each(rows, lambda r: f"{r['server_cpu_ms']:.1f}"),
          each(rows, lambda r: f"{r['client_cpu_ms']:.2f}")]
         for label, rows in table.items()],
    )  # fmt: skip
    memory = markdown(
        ["peak RSS, MB (process tree)", *SERVERS],
        [["idle, after the uploads", *(f"{idle[s]:.0f}" if s in idle else "-"
                                       for s in SERVERS)],
         *([label, *(f"{row[s]:.0f}" if s in row else "-" for s in SERVERS)]
           for label, row in peaks.items()),
         ["whole run", *(
             f"{max(r[s] for r in peaks.values() if s in r):.0f}"
             if any(s in r for r in peaks.values()) else "-" for s in SERVERS
         )]],
    )  # fmt: skip
    fidelity_table = markdown(
        ["w200 of", *(f"{s} SSIMULACRA2 (bytes)" for s in SERVERS)],
        [[label, *(f"{row[s]['ssimulacra2']:.1f} ({row[s]['bytes']:.0f})"
                   if s in row else "-" for s in SERVERS)]
         for label, row in scores.items()],
    )  # fmt: skip
    return f"{speed}\n\n{memory}\n\n{fidelity_table}"


def versions() -> dict[str, str]:
    def run(*argv: str, cwd: str = CHECKOUT) -> str:
        out = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
        return out.stdout.strip()

    sharp = "const v = require('sharp').versions; console.log(v.sharp, v.vips)"
    return {
        "imageserver": run("git", "rev-parse", "HEAD"),
        "pillow": Image.__version__,
        "thumbor": run(thumbor_command(), "--version"),
        "ipx": run(ipx_command(), "--version"),
        "sharp, libvips": run("node", "-e", sharp, cwd=IPX_DIR),
        "node": run("node", "--version"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--servers", default="", help="substrings, separated by ;")
    parser.add_argument("--scenarios", default="", help="substrings, separated by ;")
    parser.add_argument("--copies-big", type=int, default=1000)
    parser.add_argument("--copies-small", type=int, default=2400)
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 1 round of 4 s, few copies"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 4.0
        args.copies_big, args.copies_small = 300, 1000
    print(f"load client: {CLIENT}; {len(os.sched_getaffinity(0))} cores", flush=True)
    data = {name: photo(size, seed=seed) for name, (size, seed) in PHOTOS.items()}
    counts = {"12MP": args.copies_big, "800x600": args.copies_small}
    with tempfile.TemporaryDirectory() as root, contextlib.ExitStack() as stack:
        sources = os.path.join(root, "sources")
        os.makedirs(sources)
        with open(os.path.join(sources, "probe.jpg"), "wb") as f:
            f.write(data["800x600"])
        copies = {
            name: make_copies(name, data[name], counts[name] + SPARES, sources)
            for name in PHOTOS
        }
        running = start_servers(stack, root, sources, args.servers)
        if "imageserver" in running:
            print("uploading", sum(map(len, copies.values())), "copies", flush=True)
            for found in copies.values():
                upload(running["imageserver"], sources, found)
        idle = {name: server.sample_rss() / 2**20 for name, server in running.items()}
        scores = fidelity(running, copies, data, root)
        table, peaks, errors = measure(running, copies, args)
    text = report(table, peaks, idle, scores)
    print(f"\n{text}")
    for error in errors:
        print("error:", error)
    if args.quick or args.servers or args.scenarios:
        return
    result = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": versions(),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "copies": counts,
        "widths": WIDTHS,
        "load_client": CLIENT,
        "results": table,
        "peak_rss_mb": peaks,
        "idle_rss_mb": idle,
        "fidelity": scores,
        "errors": errors,
        "markdown": text,
    }
    os.makedirs(RESULTS, exist_ok=True)
    out = os.path.join(RESULTS, f"peers-live-{datetime.date.today()}.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print("written to", out)


if __name__ == "__main__":
    main()
