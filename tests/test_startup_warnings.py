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

from imageserver.config import Config, fields, ignored_settings
from imageserver.metrics.statsd import StatsdClient
from imageserver.options import (
    ENVIRONMENT_PREFIX,
    unknown_variable_warning,
    unknown_variables,
)
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


#: Every setting that needs another: a value of its own, and the settings
#: that put it to use.
NEEDING = {
    "statsd_host": ("statsd.example", {"enable_statsd": True}),
    "statsd_port": (9125, {"enable_statsd": True}),
    "statsd_prefix": ("x.", {"enable_statsd": True}),
    "manhole_keys": ("keys", {"manhole": "7003"}),
    "manhole_passwords": ("passwords", {"manhole": "7003"}),
    "manhole_host_keys": ("elsewhere", {"manhole": "7003", "manhole_keys": "k"}),
    "manhole_allow_remote": (True, {"manhole": "7003", "manhole_keys": "k"}),
    "webhook_secret": ("s", {"webhook": ("http://127.0.0.1:1/",)}),
    "webhook_queue": (5, {"webhook": ("http://127.0.0.1:1/",), "webhook_secret": "s"}),
    "webhook_retry_seconds": (
        5.0,
        {"webhook": ("http://127.0.0.1:1/",), "webhook_secret": "s"},
    ),
    "shard_size": (10, {"scheduler": "local:1"}),
    "shard_retries": (0, {"scheduler": "local:1"}),
    "otlp_service_name": ("images", {"otlp_endpoint": "http://127.0.0.1:1/v1/traces"}),
    "otlp_sample_ratio": (0.5, {"otlp_endpoint": "http://127.0.0.1:1/v1/traces"}),
    "quota_interval": (5.0, {"namespace_quota_bytes": 1}),
    "token_write_rate": (1.0, {"write_tokens": "tokens.txt"}),
    "debug_worker": (2, {"workers": 2}),
    "profile_allow_remote": (True, {"profile": True}),
    # Used by a bucket store or a bucket origin.
    "aws_region": ("eu-west-1", {"aws_bucket": "b", "uploader": "s3"}),
    "aws_access_key_id": ("AKIA", {"origin": ("o=s3://photos/",)}),
    "aws_secret_key": ("secret", {"aws_bucket": "b", "uploader": "s3"}),
    "s3_endpoint_url": ("http://127.0.0.1:9000", {"origin": ("o=s3://photos/",)}),
    "aws_bucket": ("b", {"uploader": "s3"}),
    "s3_acl": ("private", {"aws_bucket": "b", "uploader": "s3"}),
    "remote_base_path": ("images", {"aws_bucket": "b", "uploader": "s3"}),
    "remote_base_url": ("https://cdn.example", {"aws_bucket": "b", "uploader": "s3"}),
    "uploader_concurrency": (3, {"aws_bucket": "b", "uploader": "s3"}),
    "max_file_age": (5, {"aws_bucket": "b", "uploader": "s3"}),
    "origin_ttl": (60.0, {"origin": ("o=https://images.example/",)}),
    "origin_missing_ttl": (5.0, {"origin": ("o=https://images.example/",)}),
    "origin_stale_while_revalidate": (
        5.0,
        {"origin": ("o=https://images.example/",)},
    ),
}


class IgnoredSettingsTests(SynchronousTestCase):
    def test_a_setting_that_needs_another_is_told_without_it(self) -> None:
        for name, (value, users) in NEEDING.items():
            # (--uploader noop: a bucket alone would be used.)
            alone = Config(workers=1, uploader="noop", **{name: value})
            (ignored,) = ignored_settings(alone)
            self.assertEqual(ignored[0], name)
            used = Config(**{"workers": 1, "uploader": "noop", **users, name: value})
            self.assertEqual(ignored_settings(used), [], name)

    def test_a_burst_needs_a_rate(self) -> None:
        """(Not in the table: its rates, token_write_rate, put it to use.)"""
        alone = Config(workers=1, rate_burst=2.0)
        self.assertEqual([n for n, _ in ignored_settings(alone)], ["rate_burst"])
        used = Config(workers=1, rate_burst=2.0, namespace_render_rate=1.0)
        self.assertEqual(ignored_settings(used), [])

    def test_the_table_is_every_setting_that_needs_another(self) -> None:
        values = {name: value for name, (value, _) in NEEDING.items()}
        every = Config(workers=1, uploader="noop", **values)
        self.assertEqual([name for name, _ in ignored_settings(every)], list(NEEDING))

    def test_defaults_and_a_bucket_with_noop_uploader(self) -> None:
        self.assertEqual(ignored_settings(Config(workers=1)), [])
        noop = Config(workers=1, aws_bucket="b", uploader="noop")
        self.assertEqual([n for n, _ in ignored_settings(noop)], ["aws_bucket"])


class StatsdHostTests(TestCase):
    """The real resolver, on the real reactor."""

    timeout = 10

    async def test_a_host_that_does_not_resolve_is_one_warning(self) -> None:
        warnings: list[dict] = []
        twice: Deferred[None] = Deferred()
        tries = []

        def observe(event: dict) -> None:
            if event.get("log_namespace") == "imageserver.metrics.statsd":
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

    async def test_with_workers_each_is_told_once(self) -> None:
        process = await self.start_server(
            "--statsd_port", "9125",
            env={"IMAGESERVER_MAXIMUM_WIDHT": "2000"}, workers=("--workers", "2"),
        )  # fmt: skip
        await self.ready()
        await deferLater(reactor, 0.2)
        output = process.output.decode(errors="replace")
        told = output.count("IMAGESERVER_MAXIMUM_WIDHT names no option")
        self.assertEqual(told, 1, output)
        told = output.count(
            "--statsd_port is set but does nothing without --enable_statsd"
        )
        self.assertEqual(told, 1, output)
        self.assertNotIn("IMAGESERVER_WORKER", output)


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
                 "IMAGESERVER_OUTPUT": "w10.png", "IMAGESERVER_SHARD_SIZE": "9",
                 "IMAGESERVER_NAMESPACE": "q"},
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(
            done.stderr,
            "imageserver: IMAGESERVER_NAMESPACE is not read: give --namespace on "
            "the command line (only settings come from the environment)\n"
            "imageserver: IMAGESERVER_OUTPUT names no option and is ignored; "
            "did you mean IMAGESERVER_OUTPUTS?\n"
            "imageserver: --shard_size is set but does nothing without "
            "--scheduler\n",
        )
