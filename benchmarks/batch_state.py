"""What one large batch of fast-failing items costs the server: bytes written
to disk and CPU, read from /proc for a real ``twistd imageserver`` process.

    python3 benchmarks/batch_state.py [ITEMS] [URL_LENGTH]

Every item is a URL on loopback, refused by the source guard at once, so the
cost measured is the batch machinery's own (state written, JSON made).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchmarks.common import CHECKOUT, free_port


def io_and_cpu(pid: int) -> tuple[int, float]:
    """(bytes written to storage, CPU seconds) of process ``pid`` so far."""
    with open(f"/proc/{pid}/io") as f:
        written = next(
            int(line.split()[1]) for line in f if line.startswith("write_bytes")
        )
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return written, (int(fields[11]) + int(fields[12])) / ticks


def main(items: int = 10_000, length: int = 400) -> None:
    port = free_port()
    root = tempfile.mkdtemp(prefix="imageserver-batch-bench-")
    server = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "imageserver", "--port", str(port),
         "--admin_port", "none", "--workers", "1", "--local_base_path", root],
        env={**os.environ, "PYTHONPATH": CHECKOUT}, cwd=root,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/openapi.json", timeout=5).read()
                break
            except OSError:
                time.sleep(0.1)
        pad = "a" * max(0, length - 40)
        body = "".join(
            f"http://127.0.0.1:9/{pad}/{n:08d}\n" for n in range(items)
        ).encode()
        before = io_and_cpu(server.pid)
        start = time.monotonic()
        request = urllib.request.Request(base + "/p/batch", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            job = json.loads(response.read())["job_id"]
        state = "running"
        while time.monotonic() - start < 30:
            with urllib.request.urlopen(f"{base}/p/batch/{job}", timeout=60) as r:
                state = json.loads(r.read())["state"]
            if state == "done":
                break
            time.sleep(0.5)
        took = time.monotonic() - start
        after = io_and_cpu(server.pid)
        print(
            f"{items} items, {len(body) / 1e6:.2f} MB body: {state} after "
            f"{took:.1f} s; written {(after[0] - before[0]) / 1e6:.1f} MB, "
            f"CPU {after[1] - before[1]:.2f} s"
        )
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
