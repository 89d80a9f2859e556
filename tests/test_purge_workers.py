"""Purges with ``--workers 2``: real twistd processes sharing one port and disk.

A purge's 204 is the last word on the whole host: from the first request
after it, every worker answers 404 for the image (none serves it from its
memory cache), and nothing any worker was doing or is asked to do stores
into the folder again. Connections are new for each request, so the kernel
spreads them over both workers.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.support import encode, quadrants
from tests.test_twistd import CHECKOUT, TWISTD, free_port

PHOTO = encode(quadrants((400, 300)))
DIGEST = hashlib.md5(PHOTO).hexdigest()
FOLDER = f"p/{DIGEST[:3]}/{DIGEST[3:6]}/{DIGEST[6:9]}/{DIGEST[9:]}"
#: What each worker keeps in memory once asked: the original, its info.json
#: and a variant.
CACHED = ("original", "info.json", "w100.jpg")


class HostServer:
    """``twistd imageserver --workers 2`` as a child process, called from any
    thread with a new connection per request."""

    def __init__(self, *extra: str) -> None:
        self.root = tempfile.mkdtemp(prefix="imageserver-host-")
        self.store = os.path.join(self.root, "store")
        self.port, self.admin_port = free_port(), free_port()
        env = {**os.environ, "PYTHONPATH": CHECKOUT}
        self.log = open(os.path.join(self.root, "log"), "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile=-",
             "imageserver", "--workers", "2", "--port", str(self.port),
             "--admin_port", str(self.admin_port), "--local_base_path",
             self.store, *extra],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while self.call("GET", "/probe/ready", port=self.admin_port)[0] != 200:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(self.output())
            time.sleep(0.05)

    def output(self) -> str:
        with open(os.path.join(self.root, "log"), "rb") as f:
            return f.read().decode(errors="replace")

    def call(
        self, method: str, path: str, body: bytes | None = None, port: int = 0
    ) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", port or self.port, 30)
        try:
            connection.request(method, path, body)
            response = connection.getresponse()
            return response.status, response.read()
        except ConnectionError:
            return 0, b""  # only while starting
        finally:
            connection.close()

    def on_disk(self) -> list[str]:
        folder = os.path.join(self.store, *FOLDER.split("/"))
        return sorted(os.listdir(folder)) if os.path.isdir(folder) else []

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def upload_and_warm(server: HostServer) -> None:
    """Store the image; have both workers keep what `CACHED` names in memory."""
    status, body = server.call("POST", "/p?outputs=w100.jpg", PHOTO)
    assert status == 200, body
    for _ in range(12):  # new connections: each worker gets about half
        for name in CACHED:
            assert server.call("GET", f"/{FOLDER}/{name}")[0] == 200


class HostPurgeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = HostServer()
        self.addCleanup(self.server.stop)

    def test_after_the_204_every_worker_answers_404(self) -> None:
        upload_and_warm(self.server)
        self.assertEqual(self.server.call("DELETE", f"/{FOLDER}")[0], 204)
        codes = [
            self.server.call("GET", f"/{FOLDER}/{name}")[0]
            for _ in range(50)
            for name in (*CACHED, "w50.png")
        ]
        self.assertEqual(codes, [404] * len(codes))
        # Nor does either worker store a file into the purged folder.
        for _ in range(10):
            status, _ = self.server.call("POST", f"/{FOLDER}/notes.txt", b"hi")
            self.assertEqual(status, 404)
        self.assertEqual(self.server.on_disk(), [])
        self.assertEqual(self.server.call("POST", "/p", PHOTO)[0], 200)  # again

    #: Work racing a purge: GETs of new variants (renders), client files, and
    #: uploads of the same bytes (which may legitimately store it again).
    WORK = st.lists(
        st.tuples(
            st.sampled_from(
                ["w10.jpg", "w20.png", "x30.webp", "notes.txt", "upload", *CACHED]
            ),
            st.integers(0, 40),  # ms after the race begins
        ),
        min_size=1,
        max_size=10,
    )

    @settings(
        max_examples=20,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(work=WORK, purge_after=st.integers(0, 40))
    def test_work_racing_a_purge_on_both_workers_leaves_nothing(
        self, work: list[tuple[str, int]], purge_after: int
    ) -> None:
        server = self.server
        upload_and_warm(server)
        start = time.monotonic() + 0.05
        results: dict[int, int] = {}

        def at(ms: int, call: Callable[[], int], index: int) -> threading.Thread:
            def run() -> None:
                time.sleep(max(0.0, start + ms / 1000 - time.monotonic()))
                results[index] = call()

            thread = threading.Thread(target=run)
            thread.start()
            return thread

        def request(name: str) -> Callable[[], int]:
            if name == "upload":
                return lambda: server.call("POST", "/p", PHOTO)[0]
            if name == "notes.txt":
                return lambda: server.call("POST", f"/{FOLDER}/{name}", b"hi")[0]
            return lambda: server.call("GET", f"/{FOLDER}/{name}")[0]

        purge = at(purge_after, lambda: server.call("DELETE", f"/{FOLDER}")[0], -1)
        threads = [at(ms, request(n), i) for i, (n, ms) in enumerate(work)]
        for thread in (purge, *threads):
            thread.join()
        self.assertEqual(results[-1], 204)
        left = server.on_disk()
        if any(name == "upload" for name, _ in work):
            # Stored again by an upload after the purge: then whole.
            if left:
                self.assertLessEqual({"original", "info.json"}, set(left), left)
                self.assertEqual(server.call("DELETE", f"/{FOLDER}")[0], 204)
            left = server.on_disk()
        self.assertEqual(left, [])
        codes = {
            server.call("GET", f"/{FOLDER}/{name}")[0]
            for _ in range(6)
            for name in (*CACHED, *(n for n, _ in work if n != "upload"))
        }
        self.assertEqual(codes, {404})
