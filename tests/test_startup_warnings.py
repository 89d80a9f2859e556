"""Misconfiguration a server would otherwise take silently is said at start-up:
a misspelt IMAGESERVER_* variable, a --statsd_host that does not resolve.

Real processes (twistd, the imageserver command) and their real logs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from imageserver.config import fields
from imageserver.options import (
    ENVIRONMENT_PREFIX,
    unknown_variable_warning,
    unknown_variables,
)
from imageserver.statsd import StatsdClient
from imageserver.workers import WORKER_CONFIG, WORKER_ID
from tests.support import encode, quadrants
from tests.test_twistd import CHECKOUT, TwistdCase

#: An address that never resolves (RFC 6761), without waiting on a network.
NOWHERE = "nosuchhost.invalid"


class UnknownVariablesTests(SynchronousTestCase):
    def test_every_option_s_variable_is_known(self) -> None:
        environ = {}
        for f in fields():
            environ[ENVIRONMENT_PREFIX + f.name.upper()] = "x"
            environ[ENVIRONMENT_PREFIX + f.name.upper() + "_FILE"] = "x"
        environ.update({"HOME": "/root", "PATH": "/bin", "IMAGESERVERX": "1"})
        self.assertEqual(unknown_variables(environ), [])
        internal = {WORKER_CONFIG: "{}", WORKER_ID: "1"}
        self.assertEqual(unknown_variables(internal, frozenset(internal)), [])

    def test_a_misspelt_variable_is_named_with_the_nearest_option(self) -> None:
        cases = {
            "IMAGESERVER_MAXIMUM_WIDHT": "IMAGESERVER_MAXIMUM_WIDTH",
            "IMAGESERVER_AWS_BUKET": "IMAGESERVER_AWS_BUCKET",
            "IMAGESERVER_SECRT_FILE": "IMAGESERVER_SECRET_FILE",
            "IMAGESERVER_EXTENSION": "IMAGESERVER_EXTENSIONS",
            "IMAGESERVER_WRITE_TOKEN": "IMAGESERVER_WRITE_TOKENS",
            "imageserver_port": "IMAGESERVER_PORT",
            "Imageserver_Local_Base_Path": "IMAGESERVER_LOCAL_BASE_PATH",
            "IMAGESERVER_NOTHING_LIKE_ANY": None,
            "IMAGESERVER_": None,
        }
        for variable, nearest in cases.items():
            self.assertEqual(
                unknown_variables({variable: "1"}), [(variable, nearest)], variable
            )
        self.assertEqual(
            unknown_variable_warning("IMAGESERVER_MAXIMUM_WIDHT", "IMAGESERVER_X"),
            "IMAGESERVER_MAXIMUM_WIDHT names no option and is ignored; "
            "did you mean IMAGESERVER_X?",
        )


class StatsdHostTests(TestCase):
    """The real resolver, on the real reactor."""

    timeout = 10

    async def test_a_host_that_does_not_resolve_is_one_warning(self) -> None:
        warnings: list[dict] = []
        twice: Deferred[None] = Deferred()
        tries = []

        def observe(event: dict) -> None:
            if event.get("log_namespace") == "imageserver.statsd":
                warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        client = StatsdClient(reactor, NOWHERE, 8125)
        client.RETRY_SECONDS = 0.05
        resolve = reactor.resolve

        def counted(name: str, *args: object) -> Deferred[str]:
            tries.append(name)
            if len(tries) == 3 and not twice.called:
                twice.callback(None)
            return resolve(name, *args)

        self.patch(reactor, "resolve", counted)
        client.startService()
        await twice  # tried again, and again
        client.stopService()  # cancels the next try
        await client.opened
        self.assertEqual(
            [e["log_format"].split(":")[0] for e in warnings],
            ["--statsd_host {host} does not resolve"],
        )
        self.assertEqual(warnings[0]["host"], NOWHERE)
        client.send("x:1|c")  # dropped, not raised
        self.assertEqual(client.sent, 0)


class ServerTests(TwistdCase):
    async def test_twistd_warns_of_both_and_serves_no_originals(self) -> None:
        process = await self.start_server(
            "--enable_statsd", "--statsd_host", NOWHERE, "--serve_originals", "off",
            env={"IMAGESERVER_MAXIMUM_WIDHT": "2000"},
        )  # fmt: skip
        await process.wait_for(rb"--statsd_host nosuchhost.invalid does not resolve")
        await process.wait_for(
            rb"IMAGESERVER_MAXIMUM_WIDHT names no option and is ignored; "
            rb"did you mean IMAGESERVER_MAXIMUM_WIDTH\?"
        )
        photo = encode(quadrants((40, 30)))
        response, _ = await self.call("POST", "/p", data=photo)
        self.assertEqual(response.code, 200)
        h = hashlib.md5(photo).hexdigest()
        folder = f"/p/{h[:3]}/{h[3:6]}/{h[6:9]}/{h[9:]}"
        for method in ("GET", "HEAD"):
            for name in ("original", "origina%6C", "Original"):
                response, body = await self.call(method, f"{folder}/{name}")
                self.assertEqual(response.code, 404, (method, name))
                self.assertNotIn(photo[:100], body)
        response, body = await self.call("GET", f"{folder}/original")
        self.assertIn(b"--serve_originals off", body)

    async def test_with_workers_the_variable_is_told_once(self) -> None:
        process = await self.start_server(
            env={"IMAGESERVER_MAXIMUM_WIDHT": "2000"}, workers=("--workers", "2")
        )
        await self.ready()
        await deferLater(reactor, 0.2)
        told = process.output.count(b"IMAGESERVER_MAXIMUM_WIDHT names no option")
        self.assertEqual(told, 1, process.output.decode(errors="replace"))
        self.assertNotIn(b"IMAGESERVER_WORKER", process.output)


class CommandTests(SynchronousTestCase):
    def test_the_imageserver_command_warns_on_stderr(self) -> None:
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        with open(os.path.join(root, "photo.jpg"), "wb") as f:
            f.write(encode(quadrants((40, 30))))
        done = subprocess.run(
            [sys.executable, "-m", "imageserver", "process", "photo.jpg"],
            capture_output=True, text=True, cwd=root, timeout=60,
            env={**os.environ, "PYTHONPATH": CHECKOUT,
                 "IMAGESERVER_OUTPUT": "w10.png"},
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(
            done.stderr,
            "imageserver: IMAGESERVER_OUTPUT names no option and is ignored; "
            "did you mean IMAGESERVER_OUTPUTS?\n",
        )
