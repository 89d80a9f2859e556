import math
import os
import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.application.service import IServiceCollection
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from imageserver.config import Config, _threads, cpu_quota
from imageserver.options import ServerOptions as Options
from imageserver.tap import makeService
from tests import CHECKOUT_DIR


def parse(*args: str, environ: dict[str, str] | None = None) -> Config:
    options = Options()
    options.environ = environ or {}
    options.parseOptions(list(args))
    return options.config


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = parse()
        self.assertEqual(config.endpoint, "tcp:7000:interface=127.0.0.1:backlog=1024")
        self.assertEqual(config.admin_endpoint, "tcp:7002:interface=127.0.0.1")
        self.assertEqual(config.local_base_path, "public")
        self.assertEqual(config.extensions, ("jpg", "png", "gif", "webp", "avif"))
        self.assertEqual((config.default_quality, config.maximum_width), ("0", 1000))
        self.assertEqual(config.http_timeout, 5.0)
        self.assertGreaterEqual(config.processor_concurrency, 1)

    def test_seed_flag_names(self) -> None:
        config = parse(
            "--port", "8000", "--listen", "0.0.0.0", "--outputs", "x300.jpg,x300.webp",
            "--extensions", "jpg,webp", "--local_base_path", "/srv/images",
            "--default_quality", "60", "--maximum_width", "2000",
            "--processor_concurrency", "3", "--http_timeout", "2.5",
            "--max_file_age", "10",
        )  # fmt: skip
        self.assertEqual(config.endpoint, "tcp:8000:interface=0.0.0.0:backlog=1024")
        self.assertEqual(config.outputs, ("x300.jpg", "x300.webp"))
        self.assertEqual(config.extensions, ("jpg", "webp"))
        self.assertEqual(config.local_base_path, "/srv/images")
        self.assertEqual(config.default_quality, "60")
        self.assertEqual(config.maximum_width, 2000)
        self.assertEqual(config.processor_concurrency, 3)
        self.assertEqual(config.http_timeout, 2.5)
        self.assertEqual(config.max_file_age, 10)
        self.assertEqual(
            [v.name for v in config.catalogue.outputs_for("p")], list(config.outputs)
        )

    def test_dashed_spellings(self) -> None:
        config = parse(
            "--local-base-path=/x", "--default-quality", "50", "--admin-port=none"
        )
        self.assertEqual((config.local_base_path, config.default_quality), ("/x", "50"))
        self.assertIsNone(config.admin_endpoint)

    def test_endpoint_strings(self) -> None:
        config = parse("--port", "unix:/run/img.sock", "--admin_port", "tcp:9000")
        self.assertEqual(config.endpoint, "unix:/run/img.sock")
        self.assertEqual(config.admin_endpoint, "tcp:9000")

    def test_endpoints_are_checked_before_any_port_opens(self) -> None:
        for args, says in (
            (("--port=abc",), "--port: 'abc' is not a valid endpoint"),
            (("--port=70000",), "70000 is not a port number"),
            (("--port=tcp:70000",), "70000 is not a port number"),
            (("--admin_port=tcp:7002:interfac=127.0.0.1",), "--admin_port: "),
            (("--listen=0.0.0.0.1",), "'0.0.0.0.1' is not an IP address"),
            (("--admin_port=foo:1",), "Unknown endpoint type"),
        ):
            with self.assertRaises(UsageError, msg=args) as caught:
                parse(*args)
            message = str(caught.exception)
            self.assertIn(says, message)
            self.assertNotIn("\n", message)

    def test_each_bad_value_is_named_alone(self) -> None:
        endpoint = ("--otlp_endpoint", "http://127.0.0.1:4318/v1/traces")
        for args, says in (
            (("--namespace_quota_bytes", "-1"), "--namespace_quota_bytes must not "
             "be negative (0: no quota)"),
            (("--quota_interval", "0"), "--quota_interval must be above 0 seconds"),
            ((*endpoint, "--otlp_sample_ratio", "1.5"),
             "--otlp_sample_ratio must be between 0 and 1"),
            ((*endpoint, "--otlp_service_name", " "),
             "--otlp_service_name must not be empty"),
            (("--otlp_endpoint", "http://127.0.0.1:99999/v1/traces"),
             "is not an http(s) URL with a host and a valid port"),
            (("--otlp_endpoint", "http:///v1/traces"), "is not an http(s) URL"),
            (("--cache_control_files", "public, max-age=-1"),
             "max-age=-1 is not a number of seconds"),
            (("--cache_control_variants", 'public, S-MAXAGE="60s"'),
             "S-MAXAGE=60s is not a number of seconds"),
        ):  # fmt: skip
            with self.assertRaises(UsageError, msg=args) as caught:
                parse(*args)
            self.assertIn(says, str(caught.exception))

    @given(
        st.sampled_from(["max-age", "s-maxage", "stale-while-revalidate",
                         "stale-if-error", "Max-Age"]),
        st.integers(-(10**12), 10**12),
        st.booleans(),
    )  # fmt: skip
    def test_a_lifetime_is_seconds_from_zero(
        self, directive: str, seconds: int, quoted: bool
    ) -> None:
        argument = f'"{seconds}"' if quoted else str(seconds)
        value = f"public, {directive}={argument}, x-{directive}=-1"
        if seconds >= 0:
            config = parse("--cache_control_presets", value)
            self.assertEqual(config.cache_control_presets, value)
        else:
            with self.assertRaisesRegex(UsageError, "not a number of seconds"):
                parse("--cache_control_presets", value)

    def test_pixel_limit_cannot_pass_the_decoders(self) -> None:
        with self.assertRaises(UsageError) as caught:
            parse("--max_source_pixels", "200000000")
        self.assertIn("at most 178956970", str(caught.exception))

    def test_numeric_admin_port_uses_listen(self) -> None:
        config = parse("--admin_port", "7102", "--listen", "::1")
        self.assertEqual(
            config.admin_endpoint, r"tcp:7102:interface=\:\:1:backlog=1024"
        )

    def test_bad_values_are_usage_errors(self) -> None:
        for args in (
            ["--default_quality", "-1"],
            ["--workers", "2", "--debug_worker", "3"],
            ["--workers", "2", "--debug_worker", "0"],
            ["--default_quality", "101"],
            ["--default_quality", "high"],
            ["--default_quality", "auto:best"],
            ["--maximum_width", "0"],
            ["--extensions", "jpg,bmp"],
            ["--outputs", "w0.jpg"],
            ["--outputs", "x300.bmp"],
            ["--http_timeout", "0"],
            ["--processor_concurrency", "-1"],
            ["--no_such_option", "1"],
        ):
            with self.assertRaises(UsageError, msg=args):
                parse(*args)

    def test_help_lists_every_option_with_its_default(self) -> None:
        text = str(Options())
        for name in (
            "--port",
            "--admin_port",
            "--local_base_path",
            "--maximum_width",
            "--max_source_bytes",
            "--processor_concurrency",
            "--extensions",
        ):
            self.assertIn(name, text)
        self.assertIn("[default: jpg,png,gif,webp,avif]", text)


class RemoteOptionsTests(SynchronousTestCase):
    def test_local_disk_alone_by_default(self) -> None:
        self.assertIsNone(parse().remote)
        self.assertIsNone(parse("--uploader", "noop", "--aws_bucket", "b").remote)

    def test_a_bucket_means_s3(self) -> None:
        self.assertEqual(parse("--aws_bucket", "images").remote, "s3")
        self.assertEqual(parse("--uploader", "s3", "--aws_bucket", "b").remote, "s3")

    def test_seed_s3_flag_names(self) -> None:
        config = parse(
            "--uploader", "s3", "--aws_access_key_id", "AKID", "--aws_secret_key", "s",
            "--aws_bucket", "b", "--aws_region", "eu-west-1", "--remote_base_path",
            "img", "--remote_base_url", "https://cdn.example", "--s3_endpoint_url",
            "http://127.0.0.1:9000", "--s3_acl", "public-read",
        )  # fmt: skip
        self.assertEqual(
            (config.aws_access_key_id, config.aws_secret_key, config.aws_region),
            ("AKID", "s", "eu-west-1"),
        )
        self.assertEqual(
            (config.remote_base_path, config.s3_acl), ("img", "public-read")
        )

    def test_secret_never_shows(self) -> None:
        config = parse("--aws_bucket", "b", "--aws_secret_key", "very-secret")
        self.assertNotIn("very-secret", repr(config))
        self.assertNotIn("very-secret", str(Options()))

    def test_bad_remote_options(self) -> None:
        for args in (
            ["--uploader", "manta"],
            ["--uploader", "s3"],
            ["--aws_bucket", "b", "--s3_acl", "everyone"],
            ["--uploader_concurrency", "0"],
        ):
            with self.assertRaises(UsageError, msg=args):
                parse(*args)


class MakeServiceTests(SynchronousTestCase):
    def test_builds_without_opening_anything(self) -> None:
        options = Options()
        options.parseOptions(["--workers", "1", "--local_base_path", self.mktemp()])
        service = makeService(options)
        self.assertFalse(service.running)
        names = [type(s).__name__ for s in IServiceCollection(service)]
        self.assertEqual(names, [
            "Signals", "AnswersSent", "ThreadPoolService", "ThreadPoolService",
            "CacheSweeper",
            "WriteQueue", "Generations", "ConnectionPoolService", "WritableCheck",
            "Listening",
            "Hangup", "RequestDrain", "Listening", "SystemdNotifier", "Readiness",
        ])  # fmt: skip

    def test_s3_adds_its_pool_uploads_sweeper_and_purge_markers(self) -> None:
        options = Options()
        options.parseOptions(
            ["--workers", "1", "--aws_bucket", "b", "--local_base_path", self.mktemp()]
        )
        names = [type(s).__name__ for s in IServiceCollection(makeService(options))]
        self.assertEqual(names, [
            "Signals", "AnswersSent", "ThreadPoolService", "ThreadPoolService",
            "ThreadPoolService",
            "WriteQueue", "CacheSweeper", "WriteQueue", "Generations",
            "ConnectionPoolService",
            "WriteQueue", "PurgeLog", "WritableCheck", "Listening", "Hangup",
            "RequestDrain",
            "Listening", "SystemdNotifier", "Readiness",
        ])  # fmt: skip

    def test_statsd_is_a_service_when_enabled(self) -> None:
        options = Options()
        options.parseOptions(
            ["--workers", "1", "--enable_statsd", "--statsd_port", "9125"]
        )
        names = [type(s).__name__ for s in IServiceCollection(makeService(options))]
        self.assertIn("StatsdClient", names)

    def test_with_workers_the_process_supervises(self) -> None:
        options = Options()
        options.parseOptions(["--workers", "2", "--enable_statsd"])
        names = [type(s).__name__ for s in IServiceCollection(makeService(options))]
        self.assertEqual(
            names,
            [
                "Signals",
                "Hangup",
                "Listening",
                "Workers",
                "Listening",
                "SystemdNotifier",
                "Readiness",
            ],
        )

    def test_admin_port_can_be_disabled(self) -> None:
        options = Options()
        options.parseOptions(["--admin_port", "none"])
        names = [type(s).__name__ for s in IServiceCollection(makeService(options))]
        self.assertEqual(names.count("Listening"), 1)


def usable_cpus() -> int:
    cpus, quota = len(os.sched_getaffinity(0)), cpu_quota()
    return cpus if quota is None else max(1, min(cpus, math.ceil(quota)))


class WorkersOptionTests(SynchronousTestCase):
    def test_the_default_is_one_worker_per_usable_cpu(self) -> None:
        self.assertEqual(parse().workers, usable_cpus())
        self.assertEqual(parse("--workers", "1").workers, 1)

    def test_a_cgroup_s_cpu_quota_holds_the_count(self) -> None:
        """A container's --cpus 2.5 on a large host: 3 CPUs, not the host's;
        the least quota along the cgroup's path counts."""
        root = self.mktemp()
        leaf = os.path.join(root, "system.slice", "imageserver.service")
        os.makedirs(leaf)
        membership = os.path.join(root, "cgroup")
        with open(membership, "w") as f:
            f.write("0::/system.slice/imageserver.service\n")
        self.assertIsNone(cpu_quota(root, membership))  # no cpu.max at all
        for folder, value in ((root, "max 100000"), (leaf, "250000 100000")):
            with open(os.path.join(folder, "cpu.max"), "w") as f:
                f.write(value + "\n")
        self.assertEqual(cpu_quota(root, membership), 2.5)
        with open(os.path.join(root, "system.slice", "cpu.max"), "w") as f:
            f.write("100000 100000\n")
        self.assertEqual(cpu_quota(root, membership), 1.0)
        self.assertIsNone(cpu_quota(root, os.path.join(root, "missing")))

    def test_a_cgroup_v1_cpu_quota_holds_the_count_too(self) -> None:
        root = self.mktemp()
        folder = os.path.join(root, "cpu,cpuacct", "docker", "abc")
        os.makedirs(folder)
        membership = os.path.join(root, "cgroup")
        with open(membership, "w") as f:
            f.write("4:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n0::/\n")
        for name, value in (("cpu.cfs_quota_us", "150000"),
                            ("cpu.cfs_period_us", "100000")):  # fmt: skip
            with open(os.path.join(folder, name), "w") as f:
                f.write(value + "\n")
        self.assertEqual(cpu_quota(root, membership), 1.5)
        with open(os.path.join(folder, "cpu.cfs_quota_us"), "w") as f:
            f.write("-1\n")  # no quota
        self.assertIsNone(cpu_quota(root, membership))

    def test_threads_per_worker_default_to_this_machine_s_share(self) -> None:
        cpus = usable_cpus()
        self.assertEqual(parse("--workers", "1").processor_concurrency, cpus)
        threads = parse("--workers", "3").processor_concurrency
        self.assertEqual(threads, _threads(cpus, 3))
        given = parse("--workers", "8", "--processor_concurrency", "5")
        self.assertEqual(given.processor_concurrency, 5)

    @given(st.integers(1, 512), st.integers(2, 512))
    def test_threads_per_worker_cover_the_cores_twice_at_most(
        self, cpus: int, workers: int
    ) -> None:
        threads = _threads(cpus, workers)
        self.assertGreaterEqual(threads, 2)  # a worker never has one thread
        # Together the workers can use every core twice over, and no more
        # (unless each already has the minimum).
        self.assertGreaterEqual(threads * workers, 2 * cpus)
        if threads > 2:
            self.assertLess((threads - 1) * workers, 2 * cpus)
        self.assertEqual(_threads(cpus, 1), cpus)

    def test_the_debug_worker_is_one_of_the_workers(self) -> None:
        with self.assertRaisesRegex(UsageError, "--debug_worker must be 1 to 2"):
            parse("--workers", "2", "--debug_worker", "3")
        config = parse("--workers", "3", "--debug_worker", "3", "--profile")
        self.assertEqual((config.workers, config.debug_worker), (3, 3))


class EnvironmentTests(SynchronousTestCase):
    """IMAGESERVER_<OPTION> and IMAGESERVER_<OPTION>_FILE; the command line wins."""

    def test_every_kind_of_option(self) -> None:
        config = parse(environ={
            "IMAGESERVER_AWS_BUCKET": "b", "IMAGESERVER_MAXIMUM_WIDTH": "2000",
            "IMAGESERVER_EXTENSIONS": "jpg,webp", "IMAGESERVER_HTTP_TIMEOUT": "2.5",
            "IMAGESERVER_ENABLE_STATSD": "yes", "IMAGESERVER_OUTPUTS": "x64.webp",
        })  # fmt: skip
        self.assertEqual(
            (config.aws_bucket, config.maximum_width, config.extensions,
             config.http_timeout, config.enable_statsd, config.outputs),
            ("b", 2000, ("jpg", "webp"), 2.5, True, ("x64.webp",)),
        )  # fmt: skip
        off = parse(environ={"IMAGESERVER_ENABLE_STATSD": "off"})
        self.assertFalse(off.enable_statsd)

    def test_the_command_line_wins(self) -> None:
        environ = {"IMAGESERVER_MAXIMUM_WIDTH": "2000", "IMAGESERVER_PORT": "8001"}
        config = parse("--maximum-width", "300", environ=environ)
        self.assertEqual(config.maximum_width, 300)
        self.assertTrue(config.endpoint.startswith("tcp:8001:"))
        self.assertTrue(parse("--enable_statsd", environ={
            "IMAGESERVER_ENABLE_STATSD": "0"}).enable_statsd)  # fmt: skip

    def test_secrets_from_a_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("s3cr=t\n")
        config = parse(environ={"IMAGESERVER_SECRET_FILE": path,
                                "IMAGESERVER_AWS_SECRET_KEY_FILE": path})  # fmt: skip
        self.assertEqual((config.secret, config.aws_secret_key), ("s3cr=t", "s3cr=t"))

    def test_bad_variables_are_usage_errors_that_name_them(self) -> None:
        missing = self.mktemp()
        for environ, named in (
            ({"IMAGESERVER_MAXIMUM_WIDTH": "wide"}, "IMAGESERVER_MAXIMUM_WIDTH"),
            ({"IMAGESERVER_ENABLE_STATSD": "maybe"}, "IMAGESERVER_ENABLE_STATSD"),
            ({"IMAGESERVER_SECRET_FILE": missing}, "IMAGESERVER_SECRET_FILE"),
            ({"IMAGESERVER_SECRET": "a", "IMAGESERVER_SECRET_FILE": missing},
             "IMAGESERVER_SECRET_FILE"),
        ):  # fmt: skip
            with self.assertRaises(UsageError, msg=environ) as caught:
                parse(environ=environ)
            self.assertIn(named, str(caught.exception))

    def test_the_help_says_so(self) -> None:
        self.assertIn("IMAGESERVER_<OPTION>", str(Options()))


class LoopbackOnlyTests(SynchronousTestCase):
    """What runs code (the manhole) or shows the process's insides (/debug/*
    with --profile) listens on this host only, unless the operator says so;
    both by one check."""

    BEYOND = (
        "tcp:7009",
        "tcp:7009:interface=0.0.0.0",
        # Twisted's parser binds the last of a repeated argument.
        "tcp:7009:interface=127.0.0.1:interface=0.0.0.0",
        r"tcp6:7009:interface=\:\:1:interface=\:\:",
    )
    HERE = (
        "7009",
        "tcp:7009:interface=127.0.0.1",
        r"tcp6:7009:interface=\:\:1",
        "unix:/run/imageserver-admin.sock",
    )

    def test_profile_needs_a_loopback_admin_port(self) -> None:
        for endpoint in self.HERE:
            parse("--profile", "--admin_port", endpoint)
            parse("--admin_port", endpoint)
        for endpoint in self.BEYOND:
            parse("--admin_port", endpoint)  # probes and metrics may go further
            with self.assertRaises(UsageError, msg=endpoint) as caught:
                parse("--profile", "--admin_port", endpoint)
            self.assertEqual(str(caught.exception),
                "with --profile, --admin_port must listen on loopback "
                "(tcp:PORT:interface=127.0.0.1) unless --profile_allow_remote",
            )  # fmt: skip
            parse("--profile", "--admin_port", endpoint, "--profile_allow_remote")
        # A port number binds to --listen; the default stays on loopback.
        with self.assertRaises(UsageError):
            parse("--profile", "--listen", "0.0.0.0", "--admin_port", "7002")
        parse("--profile", "--listen", "0.0.0.0")

    def test_the_manhole_by_the_same_rule(self) -> None:
        keys = ("--manhole_keys", "authorized_keys")
        for endpoint in self.HERE:
            parse("--manhole", endpoint, *keys)
        for endpoint in self.BEYOND:
            with self.assertRaises(UsageError, msg=endpoint) as caught:
                parse("--manhole", endpoint, *keys)
            self.assertEqual(str(caught.exception),
                "--manhole must listen on loopback "
                "(tcp:PORT:interface=127.0.0.1) unless --manhole_allow_remote",
            )  # fmt: skip
            parse("--manhole", endpoint, *keys, "--manhole_allow_remote")


class DocumentedPresetsTests(SynchronousTestCase):
    """docs/api.md's presets example starts a server as pasted; without the
    wider --maximum_width it needs, the error names what the operator wrote."""

    def example(self) -> list[str]:
        docs = os.path.join(CHECKOUT_DIR, "docs")
        with open(os.path.join(docs, "api.md")) as f:
            page = f.read()
        found = re.search(r"^`(--maximum_width \d+) --presets '([^']+)'`", page, re.M)
        assert found, "docs/api.md has no presets example"
        return [*found[1].split(), "--presets", found[2]]

    def test_the_example_as_pasted(self) -> None:
        config = parse(*self.example())
        self.assertEqual(config.maximum_width, 1200)

    def test_without_the_wider_maximum(self) -> None:
        with self.assertRaises(UsageError) as caught:
            parse(*self.example()[2:])
        self.assertEqual(
            str(caught.exception),
            "--presets: preset 'hero=1200x600-gn': '1200x600-gn' is larger than the "
            "maximum of 1000 pixels (--maximum_width)",
        )
