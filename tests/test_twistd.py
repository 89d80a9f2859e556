"""End to end: ``twistd -n imageserver`` as a real process on loopback ports."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
import struct
import sys
import zlib
from typing import Any

from PIL import Image
from treq.client import HTTPClient
from twisted.internet import error, reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ProcessTerminated
from twisted.internet.protocol import DatagramProtocol, Factory, ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from imageserver import __version__
from imageserver.access.signing import sign
from imageserver.storage import similar
from tests import CHECKOUT_DIR, s3server
from tests.rawhttp import connected, exchange, json_of, request_bytes, status_of
from tests.runtime.test_manhole import client_key, ssh_into
from tests.support import RED, YELLOW, TestCaseMixin, encode, quadrants, serve

CHECKOUT = CHECKOUT_DIR
TWISTD = "from twisted.scripts.twistd import run; run()"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Twistd(ProcessProtocol):
    """Runs twistd, and tells when it prints something and when it ends."""

    def __init__(self, ports: list[int]) -> None:
        self.output = b""
        self._waits: list[tuple[re.Pattern[bytes], Deferred[None]]] = []
        self.listening = [self.wait_for(rb"starting on %d\b" % port) for port in ports]
        #: Fires with the exit status, or minus the signal that ended it.
        self.ended: Deferred[int] = Deferred()

    def wait_for(self, pattern: bytes) -> Deferred[None]:
        """Fires once the output matches ``pattern`` (a regular expression)."""
        d: Deferred[None] = Deferred()
        self._waits.append((re.compile(pattern), d))
        self.outReceived(b"")
        return d

    def start(self, args: list[str], env: dict[str, str] | None = None) -> None:
        env = {**os.environ, **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (CHECKOUT, env.get("PYTHONPATH")) if p
        )
        reactor.spawnProcess(
            self,
            sys.executable,
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile=-", *args],
            env=env,
        )

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for pattern, d in self._waits:
            if not d.called and pattern.search(self.output):
                d.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        for _, d in self._waits:
            if not d.called:
                d.errback(RuntimeError(self.output.decode(errors="replace")))
        if reason.check(ProcessTerminated) and reason.value.signal is not None:
            self.ended.callback(-reason.value.signal)
        else:
            self.ended.callback(reason.value.exitCode)


class TwistdCase(TestCaseMixin, TestCase):
    """Starts real twistd processes and talks to them over loopback."""

    timeout = 60
    #: The process `start_server` started last.
    latest: Twistd

    async def start_server(
        self,
        *extra: str,
        env: dict[str, str] | None = None,
        workers: tuple[str, ...] = ("--workers", "1"),
    ) -> Twistd:
        """A server on its own ports; one process unless ``extra`` or
        ``workers`` says otherwise (``workers=()``: the default)."""
        self.port, self.admin_port = free_port(), free_port()
        process = Twistd([self.port, self.admin_port])
        process.start([
            "imageserver", *workers, "--port", str(self.port),
            "--admin-port", str(self.admin_port),
            "--local_base_path", os.path.abspath(self.mktemp()), *extra,
        ], env)  # fmt: skip
        self.addCleanup(self.stop, process)
        self.latest = process
        for d in process.listening:
            await d
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.client = HTTPClient(Agent(reactor, pool=pool))
        return process

    async def stop(self, process: Twistd) -> None:
        if not process.ended.called:
            process.transport.signalProcess("KILL")  # type: ignore[union-attr]
            await process.ended

    async def ready(self) -> None:
        """Wait until the admin port says every worker has started."""
        while (await self.call("GET", "/probe/ready", self.admin_port))[0].code != 200:
            await deferLater(reactor, 0.05)

    async def call(self, method: str, path: str, port: int | None = None,
                   **kwargs: Any) -> tuple[Any, bytes]:  # fmt: skip
        url = f"http://127.0.0.1:{port or self.port}{path}"
        try:
            response = await self.client.request(method, url, **kwargs)
        except Exception as e:  # say what the server printed, should it fail
            output = self.latest.output[-4000:].decode(errors="replace")
            e.add_note(f"{method} {path}; the server printed:\n{output}")
            raise
        return response, await response.content()


class TwistdTests(TwistdCase):
    async def test_api_over_real_sockets(self) -> None:
        process = await self.start_server()
        photo = encode(quadrants((800, 600)))
        digest = hashlib.md5(photo).hexdigest()

        response, body = await self.call("POST", "/p?outputs=x300.jpg", data=photo)
        self.assertEqual(response.code, 200)
        info = json.loads(body)
        self.assertEqual(
            (info["hash"], info["width"], info["height"], info["content_type"]),
            (digest, 800, 600, "image/jpeg"),
        )
        self.assertRegex(info["dominant_color"], "^#[0-9a-f]{6}$")
        folder = f"/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"

        response, body = await self.call("GET", folder + "/info.json")
        self.assertEqual(json.loads(body), info)

        for name, fmt, size in (
            ("w200.jpg", "JPEG", (200, 150)),
            ("x300.jpg", "JPEG", (300, 300)),
            ("300x200-q40.png", "PNG", (300, 200)),
            ("full_size.webp", "WEBP", (800, 600)),
        ):
            response, body = await self.call("GET", f"{folder}/{name}")
            self.assertEqual(response.code, 200, name)
            image = Image.open(io.BytesIO(body))
            self.assertEqual((image.format, image.size), (fmt, size), name)
            self.assertColour(image, (size[0] // 4, size[1] // 4), RED, tolerance=30)
            self.assertColour(image, (size[0] * 3 // 4, size[1] * 3 // 4), YELLOW,
                              tolerance=30)  # fmt: skip

        response, _ = await self.call("GET", f"{folder}/w200.jpg")
        etag = response.headers.getRawHeaders("ETag")[0]
        response, body = await self.call(
            "GET", f"{folder}/w200.jpg", headers={"If-None-Match": etag}
        )
        self.assertEqual((response.code, body), (304, b""))
        response, body = await self.call("HEAD", f"{folder}/w200.jpg")
        self.assertEqual((response.code, body), (200, b""))

        for method, path, status in (
            ("GET", f"{folder}/w0.jpg", 400),
            ("GET", f"{folder}/w5000.jpg", 400),
            ("GET", f"{folder}/w200.bmp", 404),
            ("GET", "/p/000/000/000/00000000000000000000000/w200.jpg", 404),
            ("POST", "/p", 415),
        ):
            data = b"<html>no</html>" if method == "POST" else None
            response, body = await self.call(method, path, data=data)
            self.assertEqual(response.code, status, path)
            self.assertIsInstance(json.loads(body)["error"], str)
            self.assertNotIn(b"Traceback", body)

        response, body = await self.call("GET", "/status_check")
        self.assertEqual(json.loads(body), {"message": "OK"})
        for probe in ("/probe/live", "/probe/ready"):
            response, body = await self.call("GET", probe, port=self.admin_port)
            self.assertEqual(
                (response.code, json.loads(body)), (200, {"message": "OK"})
            )

        process.transport.signalProcess("TERM")  # type: ignore[union-attr]
        self.assertEqual(await process.ended, 0)
        self.assertIn(b"Server Shut Down.", process.output)

    async def test_options_from_the_environment(self) -> None:
        secret = self.mktemp()
        with open(secret, "w") as f:
            f.write("env-secret\n")
        env = {"IMAGESERVER_SECRET_FILE": secret, "IMAGESERVER_MAXIMUM_WIDTH": "50",
               "IMAGESERVER_OUTPUTS": "w20.png"}  # fmt: skip
        await self.start_server("--maximum_width", "80", env=env)
        response, _ = await self.call("POST", "/p", data=encode(quadrants((100, 80))))
        self.assertEqual(response.code, 403)  # the secret came from the file
        key = b"env-secret"
        response, body = await self.call("POST", sign(key, "/p", method="POST"),
                                         data=encode(quadrants((100, 80))))  # fmt: skip
        self.assertEqual(response.code, 200)
        digest = json.loads(body)["hash"]
        folder = f"/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"
        response, _ = await self.call("GET", sign(key, f"{folder}/w20.png"))
        self.assertEqual(response.code, 200)  # made at upload: IMAGESERVER_OUTPUTS
        response, body = await self.call("GET", sign(key, f"{folder}/w70.png"))
        self.assertEqual(response.code, 200)  # the command line's 80 wins over 50

    async def test_two_servers_share_one_bucket(self) -> None:
        moto = s3server.shared()
        bucket = moto.new_bucket()
        options = ("--aws_bucket", bucket, "--s3_endpoint_url", moto.url)
        env = {  # credentials the standard AWS way, not on the command line
            "AWS_ACCESS_KEY_ID": "test-key",
            "AWS_SECRET_ACCESS_KEY": "test-secret",
        }
        await self.start_server(*options, env=env)
        first = self.port
        second_process = await self.start_server(*options, env=env)
        second = self.port

        photo = encode(quadrants((640, 480)))
        response, body = await self.call("POST", "/p?outputs=x100.webp", port=first,
                                         data=photo)  # fmt: skip
        self.assertEqual(response.code, 200)
        digest = json.loads(body)["hash"]
        folder = f"/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"

        response, body = await self.call("GET", f"{folder}/x100.webp", port=second)
        self.assertEqual(response.code, 200)
        self.assertEqual(Image.open(io.BytesIO(body)).size, (100, 100))
        response, body = await self.call("GET", f"{folder}/w64.png", port=second)
        self.assertEqual(Image.open(io.BytesIO(body)).size, (64, 48))
        response, body = await self.call("GET", f"{folder}/info.json", port=second)
        self.assertEqual(json.loads(body)["width"], 640)

        # The second server answered before its upload of w64.png; stopping
        # it waits for that upload.
        second_process.transport.signalProcess("TERM")  # type: ignore[union-attr]
        await second_process.ended
        client = moto.client()
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
        names = ("original", "info.json", "x100.webp", "w64.png")
        # And the upload's segment of the similar index, beside the namespace.
        (segment,) = (k for k in keys if k.startswith(f"{similar.FOLDER}/p/"))
        self.assertEqual(keys - {segment}, {f"{folder[1:]}/{name}" for name in names})

    async def test_bad_options_are_one_line_and_a_hint(self) -> None:
        for args, message in (
            (
                ["--default_quality", "500"],
                b"--default_quality must be between 1 and 100",
            ),
            (["--port=abc"], b"--port: 'abc' is not a valid endpoint"),
            (["--port=70000"], b"70000 is not a port number"),
            (["--admin_port=tcp:7002:interfac=127.0.0.1"], b"--admin_port: "),
            (["--listen=0.0.0.0.1"], b"'0.0.0.0.1' is not an IP address"),
            (
                ["--profile", "--admin_port", "tcp:0:interface=0.0.0.0"],
                b"with --profile, --admin_port must listen on loopback",
            ),
        ):
            process = Twistd([])
            process.start(["imageserver", *args])
            self.assertEqual(await process.ended, 2, args)
            lines = process.output.strip().splitlines()
            self.assertEqual(len(lines), 2, process.output)
            self.assertIn(message, lines[0])
            self.assertEqual(
                lines[1], b"Run 'twistd imageserver --help' for the options."
            )

    async def test_version_is_the_servers(self) -> None:
        process = Twistd([])
        process.start(["imageserver", "--version"])
        self.assertEqual(await process.ended, 0)
        self.assertEqual(process.output, f"imageserver {__version__}\n".encode())

    async def test_start_up_failures_are_one_line(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            process = Twistd([])
            process.start(["imageserver", "--port", str(port), "--admin_port", "0",
                           "--local_base_path", self.mktemp()])  # fmt: skip
            self.assertEqual(await process.ended, 1)
        self.assertIn(
            f"cannot listen on tcp:{port}:interface=127.0.0.1:backlog=1024 (main "
            f"port): Couldn't listen on 127.0.0.1:{port}: [Errno 98] Address "
            "already in use.".encode(),
            process.output,
        )
        self.assertNotIn(b"Traceback", process.output)

        # A folder inside a file: unwritable even for root.
        a_file = os.path.abspath(self.mktemp())
        with open(a_file, "w"):
            pass
        process = Twistd([])
        process.start(["imageserver", "--port", "0", "--admin_port", "0",
                       "--local_base_path", f"{a_file}/store"])  # fmt: skip
        self.assertEqual(await process.ended, 1)
        self.assertIn(
            f"--local_base_path {a_file}/store cannot be written: Not a "
            "directory".encode(),
            process.output,
        )
        self.assertNotIn(b"Traceback", process.output)

    async def test_start_up_says_where_the_server_is(self) -> None:
        process = await self.start_server()
        for line in (
            f"main port listening on http://127.0.0.1:{self.port}",
            f"admin port listening on http://127.0.0.1:{self.admin_port}",
            f"imageserver {__version__} started: storage ",
        ):
            await process.wait_for(re.escape(line.encode()))
        self.assertNotIn(b"Starting factory", process.output)


class HeldSource(Resource):
    """A source URL that answers only when the test says so."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []
        self.arrived: Deferred[None] = Deferred()

    def render_GET(self, request: Any) -> object:
        self.requests.append(request)
        if not self.arrived.called:
            self.arrived.callback(None)
        return NOT_DONE_YET

    def answer(self, body: bytes) -> None:
        for request in self.requests:
            request.setHeader(b"Content-Type", b"image/jpeg")
            request.write(body)
            request.finish()


class OperationsTests(TwistdCase):
    async def held_upload(self) -> tuple[HeldSource, Deferred[Any]]:
        """An upload in flight: the server waits on a source the test holds."""
        source = HeldSource()
        url = f"{serve(self, source)}/photo.jpg"
        upload = Deferred.fromCoroutine(self.call("POST", f"/p?source={url}"))

        def too_soon(result: object) -> object:
            if not source.arrived.called:  # the server never asked the source
                source.arrived.errback(AssertionError(f"upload ended: {result}"))
            return result

        upload.addBoth(too_soon)
        await source.arrived
        return source, upload

    async def test_sigterm_finishes_requests_in_flight_then_exits_0(self) -> None:
        process = await self.start_server("--allow_private_sources")
        source, upload = await self.held_upload()

        process.transport.signalProcess("TERM")  # type: ignore[union-attr]
        await process.wait_for(rb"waiting up to [0-9.]+s for 1 requests in flight")
        response, body = await self.call("GET", "/probe/ready", port=self.admin_port)
        self.assertEqual(
            (response.code, json.loads(body)), (503, {"message": "Shutting down"})
        )
        with self.assertRaises(error.ConnectionRefusedError):
            await self.call("GET", "/status_check")  # no longer listening

        photo = encode(quadrants((64, 48)))
        source.answer(photo)
        response, body = await upload
        self.assertEqual((response.code, json.loads(body)["width"]), (200, 64))
        self.assertEqual(await process.ended, 0)

    async def until_metric(self, line: bytes) -> None:
        """Wait until the admin port's /metrics shows ``line``."""
        for _ in range(100):
            _, metrics = await self.call("GET", "/metrics", port=self.admin_port)
            if line in metrics:
                return
            await deferLater(reactor, 0.05)
        self.assertIn(line, metrics)

    async def test_sigterm_waits_for_a_body_still_arriving(self) -> None:
        """An upload whose head has arrived is in flight: a stop waits for the
        rest of its body and answers it (it was cut off)."""
        process = await self.start_server()
        photo = encode(quadrants((64, 48)))
        half = len(photo) // 2
        upload = await connected(
            self.port, request_bytes("POST", "/p", body=photo)[:-half]
        )
        # until the head has arrived
        await self.until_metric(b"imageserver_http_requests_in_flight 1.0")
        process.transport.signalProcess("TERM")  # type: ignore[union-attr]
        await process.wait_for(rb"waiting up to [0-9.]+s for 1 requests in flight")
        upload.send(photo[-half:])
        answer = await upload.done
        self.assertEqual(status_of(answer), 200)
        self.assertEqual(json_of(answer)["width"], 64)
        self.assertEqual(await process.ended, 0)

    async def test_a_render_past_the_shutdown_budget_is_answered(self) -> None:
        """A thread cannot be stopped: a render still running when the budget
        ends is waited for and answered (with workers, the supervisor waits
        for it too rather than killing the worker)."""
        process = await self.start_server(
            "--maximum_width", "8000", "--shutdown_timeout", "0.2"
        )
        noise = Image.frombytes("RGB", (1600, 1200), os.urandom(1600 * 1200 * 3))
        response, body = await self.call("POST", "/p", data=encode(noise))
        self.assertEqual(response.code, 200)
        md5 = json.loads(body)["hash"]
        folder = f"/p/{md5[:3]}/{md5[3:6]}/{md5[6:9]}/{md5[9:]}"
        variant = Deferred.fromCoroutine(
            self.call("GET", f"{folder}/w6000-blur100.png")
        )
        await self.until_metric(  # the render has begun
            b'imageserver_pool_busy_workers{pool="imageserver-processing"} 1.0'
        )
        process.transport.signalProcess("TERM")  # type: ignore[union-attr]
        await process.wait_for(rb"requests in flight")
        response, body = await variant
        self.assertEqual(response.code, 200, body)
        self.assertEqual(Image.open(io.BytesIO(body)).size, (6000, 4500))
        self.assertEqual(await process.ended, 0)
        self.assertIn(b"jobs still running", process.output)
        self.assertNotIn(b"killed", process.output)

    async def test_second_signal_exits_at_once(self) -> None:
        process = await self.start_server(
            "--shutdown_timeout", "60", "--allow_private_sources"
        )
        _, upload = await self.held_upload()
        process.transport.signalProcess("INT")  # type: ignore[union-attr]
        await process.wait_for(rb"requests in flight")
        process.transport.signalProcess("INT")  # type: ignore[union-attr]
        self.assertEqual(await process.ended, 0)
        self.assertIn(b"exiting now", process.output)
        with self.assertRaises(ResponseFailed):
            await upload

    async def test_json_logs_carry_the_request_fields(self) -> None:
        process = await self.start_server("--log_format", "json")
        await self.call("GET", "/status_check")
        process.transport.signalProcess("TERM")  # type: ignore[union-attr]
        self.assertEqual(await process.ended, 0)
        records = [json.loads(line) for line in process.output.splitlines()]
        access = [r for r in records if r["namespace"] == "imageserver.access"]
        self.assertEqual(len(access), 1)
        self.assertEqual(
            {k: access[0][k] for k in ("method", "uri", "route", "status", "level")},
            {"method": "GET", "uri": "/status_check", "route": "status_check",
             "status": 200, "level": "info"},
        )  # fmt: skip
        self.assertIsInstance(access[0]["duration"], float)

    async def test_metrics_and_statsd_from_real_requests(self) -> None:
        listener = StatsdListener(b"image_server.image_request.png:1|c")
        udp = reactor.listenUDP(0, listener, interface="127.0.0.1")
        self.addCleanup(udp.stopListening)
        await self.start_server(
            "--enable_statsd", "--statsd_port", str(udp.getHost().port)
        )
        photo = encode(quadrants((64, 48)))
        _, body = await self.call("POST", "/p", data=photo)
        digest = json.loads(body)["hash"]
        folder = f"/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"
        await self.call("GET", f"{folder}/w32.png")
        await self.call("GET", f"{folder}/w32.png")
        await listener.seen

        _, body = await self.call("GET", "/metrics", port=self.admin_port)
        text = body.decode()
        requests = "imageserver_http_requests_total"
        for line in (
            'imageserver_variants_total{format="png",outcome="generated"} 1.0',
            'imageserver_variants_total{format="png",outcome="cached"} 1.0',
            requests + '{method="GET",route="variant",status="200"} 2.0',
            requests + '{method="POST",route="upload",status="200"} 1.0',
            'imageserver_originals_total{outcome="stored"} 1.0',
            'imageserver_pool_workers{pool="imageserver-processing"}',
            "imageserver_processing_duration_seconds_count 2.0",
        ):
            self.assertIn(line, text)
        self.assertIn(b"image_server.image_request:1|c", listener.lines)
        timers = [line for line in listener.lines if b"processing_time:" in line]
        self.assertTrue(timers)
        self.assertTrue(all(line.endswith(b"|ms") for line in timers))


class ManholeProcessTests(TwistdCase):
    async def manhole(self, commands: list[bytes], *extra: str) -> str:
        """What a session of ``commands`` in the manhole of a real server prints."""
        if shutil.which("ssh") is None:
            self.skipTest("the OpenSSH client is not installed")
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        key = client_key(folder, "admin")
        with open(key + ".pub", "rb") as pub, open(f"{folder}/keys", "wb") as keys:
            keys.write(pub.read())
        port = free_port()
        process = await self.start_server(
            "--manhole", str(port), "--manhole_keys", f"{folder}/keys",
            "--manhole_host_keys", f"{folder}/host", "--maximum_width", "1234",
            *extra,
        )  # fmt: skip
        await process.wait_for(rb"ConchFactory starting on %d\b" % port)
        session = await ssh_into(port, folder, key, commands)
        return session.output.decode(errors="replace")

    async def test_manhole_in_the_chosen_worker(self) -> None:
        output = await self.manhole(
            [b"__import__('os').environ['IMAGESERVER_WORKER_ID']"],
            "--workers", "2", "--debug_worker", "2",
        )  # fmt: skip
        self.assertIn("'2'", output)

    async def test_manhole_reaches_the_running_service(self) -> None:
        output = await self.manhole([
            b"config.maximum_width",
            b"sorted(pools)",
            b"type(storage).__name__, type(images).__name__",
            b"events.registry.get_sample_value('imageserver_http_requests_in_flight')",
        ])  # fmt: skip
        self.assertIn("1234", output)
        self.assertIn("['imageserver-io', 'imageserver-processing']", output)
        self.assertIn("('MemoryCache', 'Images')", output)
        self.assertIn("0.0", output)


class StatsdListener(DatagramProtocol):
    def __init__(self, wanted: bytes) -> None:
        self.lines: list[bytes] = []
        self.wanted = wanted
        self.seen: Deferred[None] = Deferred()

    def datagramReceived(self, datagram: bytes, addr: object) -> None:
        self.lines.append(datagram)
        if datagram == self.wanted and not self.seen.called:
            self.seen.callback(None)


class CrashTests(TwistdCase):
    async def test_kill_9_loses_nothing_acknowledged_and_leaves_no_partial_file(
        self,
    ) -> None:
        store = os.path.abspath(self.mktemp())
        process = await self.start_server("--local_base_path", store)
        photos = [
            encode(Image.effect_noise((1600, 1200), 30 + i).convert("RGB"))
            for i in range(8)
        ]
        acknowledged: list[str] = []
        first_ack: Deferred[None] = Deferred()

        async def upload(photo: bytes) -> None:
            try:
                response, body = await self.call(
                    "POST", "/p?outputs=x300.jpg,w500.webp,full_size.png", data=photo
                )
            except Exception:
                return  # the server died under it: not acknowledged
            if response.code == 200:
                acknowledged.append(json.loads(body)["hash"])
                if not first_ack.called:
                    first_ack.callback(None)

        uploads = [Deferred.fromCoroutine(upload(photo)) for photo in photos]
        await first_ack
        process.transport.signalProcess("KILL")  # type: ignore[union-attr]
        self.assertEqual(await process.ended, -9)
        for d in uploads:
            await d
        self.assertGreaterEqual(len(acknowledged), 1)

        # What is on disk is whole: originals match their hash, variants decode.
        for folder, _, files in os.walk(store):
            for name in files:
                if name.startswith("."):
                    continue  # an interrupted write: never listed nor served
                if os.path.relpath(folder, store).startswith(similar.FOLDER):
                    continue  # the similar index's segments
                path = os.path.join(folder, name)
                digest = "".join(folder.split(os.sep)[-4:])
                with open(path, "rb") as f:
                    data = f.read()
                if name == "original":
                    self.assertEqual(hashlib.md5(data).hexdigest(), digest)
                elif name == "info.json":
                    self.assertEqual(json.loads(data)["hash"], digest)
                else:
                    Image.open(io.BytesIO(data)).load()

        await self.start_server("--local_base_path", store)
        for digest in acknowledged:
            folder = f"/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"
            response, body = await self.call("GET", f"{folder}/info.json")
            self.assertEqual((response.code, json.loads(body)["width"]), (200, 1600))
            for name, size in (("x300.jpg", (300, 300)), ("w500.webp", (500, 375))):
                response, body = await self.call("GET", f"{folder}/{name}")
                self.assertEqual(response.code, 200)
                self.assertEqual(Image.open(io.BytesIO(body)).size, size)


class BatchSource(Resource):
    """``/a.jpg`` answers at once; ``/b.png`` waits until ``hold`` is False."""

    isLeaf = True

    def __init__(self, a: bytes, b: bytes) -> None:
        super().__init__()
        self.bodies = {b"/a.jpg": a, b"/b.png": b}
        self.fetches: list[bytes] = []
        self.hold = True
        self.b_arrived: Deferred[None] = Deferred()

    def render_GET(self, request: Any) -> object:
        self.fetches.append(request.path)
        if request.path == b"/b.png" and self.hold:
            if not self.b_arrived.called:
                self.b_arrived.callback(None)
            return NOT_DONE_YET  # never answered: the server dies first
        return self.bodies[request.path]


class OriginTwistdTests(TwistdCase):
    async def test_a_web_origin_is_fetched_from_its_host_alone(self) -> None:
        from tests.web.test_origins import Served

        web = Served()
        photo = encode(quadrants((64, 48)))
        web.objects[b"/img/a.jpg"] = photo
        base = serve(self, web)
        port = base.rsplit(":", 1)[1]
        web.redirects[b"/img/here.jpg"] = b"/img/a.jpg"
        web.redirects[b"/img/away.jpg"] = f"http://localhost:{port}/img/a.jpg".encode()
        process = await self.start_server(
            "--origin", f"web={base}/img/", "--allow_private_sources"
        )
        response, body = await self.call("GET", "/web/here.jpg/w32.png")
        self.assertEqual(response.code, 200, body)
        response, body = await self.call("GET", "/web/away.jpg/w32.png")
        self.assertEqual(response.code, 502, body)
        self.assertNotIn(b"localhost", body)  # the client is told no address
        await process.wait_for(
            rb"for away.jpg failed: .* redirected to http://localhost"
        )
        # Another port of the same host is another service: refused too.
        other = Served()
        other.objects[b"/img/a.jpg"] = photo
        elsewhere = serve(self, other)
        web.redirects[b"/img/port.jpg"] = f"{elsewhere}/img/a.jpg".encode()
        response, body = await self.call("GET", "/web/port.jpg/w32.png")
        self.assertEqual(response.code, 502, body)
        self.assertEqual(other.asked, [])
        # A source URL may still go there: the pin is the origin's alone.
        response, body = await self.call(
            "POST", f"/p?source=http://localhost:{port}/img/a.jpg"
        )
        self.assertEqual(response.code, 200, body)


class Endless(Resource):
    """A chunked body that never ends (no Content-Length to refuse early)."""

    isLeaf = True

    def render_GET(self, request: Any) -> object:
        def more() -> None:
            if not request.finished and not request._disconnected:
                request.write(b"\xff" * 65536)
                reactor.callLater(0.001, more)  # type: ignore[attr-defined]

        more()
        return NOT_DONE_YET


class HostileOriginTests(TwistdCase):
    async def test_a_hostile_origin_gets_the_answers_a_source_url_gets(self) -> None:
        """Every way a web origin can misbehave, each a namespace of one
        server: the statuses ?source= uploads get, no address told, and
        nothing stored."""
        from tests.sources.test_fetcher import Silent, Trickling
        from tests.web.test_origins import Served

        def listen(factory: Any) -> str:
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            return f"http://127.0.0.1:{port.getHost().port}"

        web = Served()
        web.objects[b"/big.jpg"] = b"\xff\xd8" + bytes(200_000)
        web.objects[b"/page.jpg"] = b"<html>a page</html>"
        web.redirects[b"/loop.jpg"] = b"/loop.jpg"
        web.redirects[b"/metadata.jpg"] = b"http://169.254.169.254/latest/meta-data"
        web.redirects[b"/private.jpg"] = b"http://10.0.0.1/a.jpg"
        web.redirects[b"/ftp.jpg"] = b"ftp://127.0.0.1/a.jpg"
        base = serve(self, web)
        endless = Resource()
        endless.putChild(b"a.jpg", Endless())
        origins = {
            "silent": listen(Factory.forProtocol(Silent)),
            "trickling": listen(Factory.forProtocol(Trickling)),
            "endless": serve(self, endless),
            "web": base,
        }
        root = os.path.abspath(self.mktemp())
        await self.start_server(
            "--origin", ",".join(f"{ns}={url}/" for ns, url in origins.items()),
            "--local_base_path", root,
            "--allow_private_sources", "--http_timeout", "0.5",
            "--max_source_bytes", "100000", "--max_redirects", "3",
        )  # fmt: skip
        for path, status in [
            ("/silent/a.jpg", 504),
            ("/trickling/a.jpg", 504),
            ("/endless/a.jpg", 413),
            ("/web/big.jpg", 413),
            ("/web/page.jpg", 415),
            ("/web/loop.jpg", 502),
            ("/web/metadata.jpg", 502),
            ("/web/private.jpg", 502),
            ("/web/ftp.jpg", 502),
            ("/web/none.jpg", 404),
        ]:
            response, body = await self.call("GET", f"{path}/w32.png")
            self.assertEqual(response.code, status, (path, body))
            self.assertNotIn(b"127.0.0.1", body, path)
            self.assertNotIn(b"169.254", body, path)
            self.assertEqual(set(json.loads(body)), {"error"})
        stored = [n for _, _, names in os.walk(root) for n in names
                  if n == "original"]  # fmt: skip
        self.assertEqual(stored, [])


def peak_kib(pid: int) -> int:
    """The peak resident set of process ``pid`` so far (VmHWM), KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


class OriginCostTests(TwistdCase):
    async def test_new_paths_at_once_hold_a_bounded_memory(self) -> None:
        """30 distinct 3.9 MB objects asked for at once: at most
        --max_receiving_bytes of them are held (2 fetches), not 30."""
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        small = io.BytesIO()
        Image.new("RGB", (16, 16)).save(small, "PNG")
        png = small.getvalue()
        body = bytearray(os.urandom(3_900_000))
        for i in range(30):  # byte-distinct: 30 originals to fetch and store
            body[:4] = struct.pack(">I", i)
            chunk = struct.pack(">I", len(body)) + b"prVt" + body
            chunk += struct.pack(">I", zlib.crc32(b"prVt" + body))
            with open(os.path.join(root, f"{i}.png"), "wb") as f:
                f.write(png[:33] + chunk + png[33:])
        process = await self.start_server(
            "--origin", f"o=file://{root}", "--max_source_bytes", "4000000",
            "--max_receiving_bytes", "8000000",
        )  # fmt: skip
        pid = process.transport.pid  # type: ignore[attr-defined]
        await self.call("GET", "/status_check")
        before = peak_kib(pid)
        answers = await gatherResults([
            Deferred.fromCoroutine(self.call("GET", f"/o/{i}.png/w8.png"))
            for i in range(30)
        ])  # fmt: skip
        self.assertEqual({r.code for r, _ in answers}, {200})
        growth_mb = (peak_kib(pid) - before) / 1024
        # 30 at once held about 30 x 4 MB several times over (the red team
        # measured 1.4 GB for 100 of 24 MB); 2 at once, tens of MB.
        self.assertLess(growth_mb, 60)


class BatchProcessTests(TwistdCase):
    async def test_a_batch_survives_a_kill_and_resumes_where_it_stopped(self) -> None:
        a, b = encode(quadrants((64, 48))), encode(quadrants((30, 20)), "PNG")
        source = BatchSource(a, b)
        base = serve(self, source)
        store = os.path.abspath(self.mktemp())
        options = ("--local_base_path", store, "--allow_private_sources")

        process = await self.start_server(*options)
        response, body = await self.call(
            "POST",
            "/p/batch?outputs=x16.jpg",
            data=f"{base}/a.jpg\n{base}/b.png\n".encode(),
        )
        self.assertEqual(response.code, 202)
        url = f"/p/batch/{json.loads(body)['job_id']}"
        await source.b_arrived  # the first item is done and recorded
        process.transport.signalProcess("KILL")  # type: ignore[union-attr]
        await process.ended

        source.hold = False
        process = await self.start_server(*options)
        finished = process.wait_for(rb"batch [0-9a-f-]+ finished")
        response, body = await self.call("GET", url)
        self.assertEqual((response.code, json.loads(body)["done"]), (202, 1))
        await finished
        response, body = await self.call("GET", url)
        report = json.loads(body)
        self.assertEqual(
            (response.code, report["state"], report["failed"]), (200, "done", 0)
        )
        self.assertEqual(
            [(i["width"], i["height"]) for i in report["items"]], [(64, 48), (30, 20)]
        )
        # a.jpg was fetched once: the resumed job did not do it again.
        self.assertEqual(source.fetches, [b"/a.jpg", b"/b.png", b"/b.png"])


class WriteTokensTwistdTests(TwistdCase):
    """Write tokens in real processes: supervisor and workers, SIGHUP."""

    async def test_tokens_reach_every_worker_and_sighup_reloads_them(self) -> None:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("first-token-0123456789\n")
        process = await self.start_server(
            "--write_tokens", path, workers=("--workers", "2")
        )
        await self.ready()
        photo = encode(quadrants((64, 48)))

        async def upload(token: str | None) -> int:
            headers = {} if token is None else {"Authorization": [f"Bearer {token}"]}
            response, _ = await self.call("POST", "/p", data=photo, headers=headers)
            return int(response.code)

        self.assertEqual(await upload(None), 401)
        for _ in range(4):  # connections land on either worker
            self.assertEqual(await upload("first-token-0123456789"), 200)
        # A method is what it is spelt, on every worker and the admin port.
        digest = hashlib.md5(photo).hexdigest()
        folder = f"/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"
        refused = [(self.port, m, folder) for m in ("delete", "Delete", "PUT")] * 2
        refused += [(self.port, "post", "/p"), (self.admin_port, "get", "/metrics")]
        for port, method, target in refused:
            answer = await exchange(port, request_bytes(method, target, body=photo))
            self.assertEqual(status_of(answer), 501, (method, target))
        response, _ = await self.call("GET", folder + "/info.json")
        self.assertEqual(response.code, 200)
        with open(path, "w") as f:
            f.write("second-token-0123456789\n")
        process.transport.signalProcess("HUP")  # type: ignore[union-attr]
        await process.wait_for(rb"SIGHUP: reading files again[\s\S]*SIGHUP")
        deadline = reactor.seconds() + 10
        while reactor.seconds() < deadline:
            codes = {await upload("second-token-0123456789") for _ in range(4)}
            if codes == {200}:
                break
        self.assertEqual(codes, {200})
        self.assertEqual(await upload("first-token-0123456789"), 403)

    async def test_an_unusable_token_file_stops_the_start(self) -> None:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("short\n")
        process = Twistd([])
        root = os.path.abspath(self.mktemp())
        process.start(["imageserver", "--workers", "1", "--port", str(free_port()),
                       "--admin_port", "none", "--write_tokens", path,
                       "--local_base_path", root])  # fmt: skip
        self.assertEqual(await process.ended, 1)
        self.assertIn(b"line 1: a token is at least 16 visible ASCII", process.output)


class WebhookTwistdTests(TwistdCase):
    async def test_a_real_server_posts_signed_events(self) -> None:
        from tests.lifecycle.test_webhooks import SECRET, Receiver

        receiver = Receiver()
        url = f"{serve(self, receiver)}/events"
        await self.start_server("--webhook", url, "--webhook_secret", SECRET.decode())
        arrived: Deferred[None] = Deferred()
        receiver.arrived.append(arrived)
        response, body = await self.call("POST", "/p", data=encode(quadrants((64, 48))))
        self.assertEqual(response.code, 200)
        await arrived
        (event,) = receiver.events
        self.assertEqual(
            (event["type"], event["hash"], event["signed"]),
            ("stored", json.loads(body)["hash"], True),
        )


class PurgeTwistdTests(TwistdCase):
    """A purge on one process reaches the copies the others keep."""

    timeout = 90
    INTERVAL = 0.5

    async def folder_of(self, port: int) -> str:
        photo = encode(quadrants((320, 240)))
        response, body = await self.call("POST", "/p?outputs=x50.jpg", port=port,
                                         data=photo)  # fmt: skip
        self.assertEqual(response.code, 200)
        digest = json.loads(body)["hash"]
        return f"/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"

    async def gone_after(self, path: str, port: int, tries: int = 1) -> float:
        """Seconds until every one of ``tries`` GETs of ``path`` is a 404."""
        start = reactor.seconds()
        while reactor.seconds() - start < 30:
            codes = set()
            for _ in range(tries):
                response, _ = await self.call("GET", path, port=port)
                codes.add(response.code)
            if codes == {404}:
                return reactor.seconds() - start
            self.assertEqual(codes - {200, 404}, set())
            await deferLater(reactor, 0.05)
        self.fail(f"{path} still served 30 s after its purge")

    async def test_another_instance_on_the_bucket_stops_serving_it(self) -> None:
        moto = s3server.shared()
        bucket = moto.new_bucket()
        options = ("--aws_bucket", bucket, "--s3_endpoint_url", moto.url,
                   "--purge_check_interval", str(self.INTERVAL))  # fmt: skip
        env = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret"}
        await self.start_server(*options, env=env)
        first = self.port
        await self.start_server(*options, env=env)
        second = self.port
        folder = await self.folder_of(first)
        for name in ("x50.jpg", "w30.png", "info.json"):  # in its caches now
            response, _ = await self.call("GET", f"{folder}/{name}", port=second)
            self.assertEqual(response.code, 200)
        response, _ = await self.call("DELETE", folder, port=first)
        self.assertEqual(response.code, 204)
        seconds = await self.gone_after(f"{folder}/x50.jpg", second)
        self.assertLess(seconds, self.INTERVAL + 2)
        for name in ("w30.png", "info.json", "original"):
            response, _ = await self.call("GET", f"{folder}/{name}", port=second)
            self.assertEqual(response.code, 404, name)
        listing = moto.client().list_objects_v2(Bucket=bucket, Prefix="p/")
        self.assertNotIn("Contents", listing)

    async def test_every_worker_stops_serving_it(self) -> None:
        await self.start_server(
            "--purge_check_interval", str(self.INTERVAL), workers=("--workers", "2")
        )
        folder = await self.folder_of(self.port)
        for _ in range(8):  # each worker keeps it in memory
            response, _ = await self.call("GET", f"{folder}/x50.jpg")
            self.assertEqual(response.code, 200)
        response, _ = await self.call("DELETE", folder)
        self.assertEqual(response.code, 204)
        seconds = await self.gone_after(f"{folder}/x50.jpg", self.port, tries=8)
        self.assertLess(seconds, self.INTERVAL + 2)

    async def test_sighup_without_tokens_ends_no_worker(self) -> None:
        process = await self.start_server(workers=("--workers", "2"))
        await self.ready()
        process.transport.signalProcess("HUP")  # type: ignore[union-attr]
        await process.wait_for(rb"no file to read again[\s\S]*no file to read again")
        await deferLater(reactor, 0.5)
        self.assertNotIn(b"starting it again", process.output)
        response, _ = await self.call("GET", "/status_check")
        self.assertEqual(response.code, 200)
