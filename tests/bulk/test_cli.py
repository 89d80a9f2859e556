"""The command line: files, a stdin stream, skip-existing, S3, exit codes."""

import fcntl
import hashlib
import io
import os
import pty
import re
import socket
import struct
import subprocess
import sys
import termios
from typing import Any

from twisted.internet import reactor
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.static import Data

from imageserver.bulk.batches import Item, parse_line
from imageserver.bulk.cli import Options, process
from imageserver.imaging import renderer
from imageserver.sources.fetcher import SourceFetcher
from imageserver.storage.local import LocalStorage
from tests import CHECKOUT_DIR
from tests.s3server import CREDENTIALS, shared
from tests.support import decode, encode, quadrants, serve

CHECKOUT = CHECKOUT_DIR
PHOTO = encode(quadrants((400, 300)))
PHOTO_HASH = hashlib.md5(PHOTO).hexdigest()
OTHER = encode(quadrants((120, 90)), "PNG")
OTHER_HASH = hashlib.md5(OTHER).hexdigest()


def folder(root: str, digest: str, namespace: str = "p") -> str:
    return os.path.join(
        root, namespace, digest[:3], digest[3:6], digest[6:9], digest[9:]
    )


class ParseLineTests(SynchronousTestCase):
    def test_fields_in_any_order(self) -> None:
        url = "https://example.com/a.jpg"
        for line in (f"{url}\t{PHOTO_HASH}\n", f"{PHOTO_HASH}\t{url}", f" {url} \t"):
            item = parse_line(3, line)
            assert item is not None
            self.assertEqual((item.line, item.url), (3, url))
        self.assertEqual(parse_line(1, PHOTO_HASH), Item(1, digest=PHOTO_HASH))

    def test_blank_and_malformed_lines(self) -> None:
        self.assertIsNone(parse_line(1, "\n"))
        self.assertIsNone(parse_line(1, " \t \r\n"))
        for line in ("not a url", "ftp://x/y", "ABCDEF" * 6, "x\ty\tz"):
            with self.assertRaises(ValueError, msg=line):
                parse_line(1, line)


class ProcessTests(TestCase):
    """``imageserver process`` in-process, on the real reactor and thread pools."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.files = {}
        for name, data in (
            ("photo.jpg", PHOTO),
            ("other.png", OTHER),
            ("bad.jpg", b"x"),
        ):
            self.files[name] = os.path.join(self.root, name)
            with open(self.files[name], "wb") as f:
                f.write(data)
        sources = Resource()
        sources.putChild(b"photo.jpg", Data(PHOTO, "image/jpeg"))
        sources.putChild(b"other.png", Data(OTHER, "image/png"))
        self.source = serve(self, sources)

    async def run_cli(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        options = Options()
        options.parseOptions(["process", "--local_base_path", f"{self.root}/store",
                              "--allow_private_sources", *args])  # fmt: skip
        out, err = io.StringIO(), io.StringIO()
        status = await process(
            reactor, options.subOptions, io.StringIO(stdin), out, err
        )
        return status, out.getvalue(), err.getvalue()

    async def test_files(self) -> None:
        status, out, err = await self.run_cli(
            "--outputs",
            "x50.jpg,w20.webp",
            self.files["photo.jpg"],
            self.files["other.png"],
        )
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(sorted(out.splitlines()), sorted([
            f"{PHOTO_HASH}\t{self.files['photo.jpg']}\t400\t300",
            f"{OTHER_HASH}\t{self.files['other.png']}\t120\t90",
        ]))  # fmt: skip
        stored = folder(f"{self.root}/store", PHOTO_HASH)
        self.assertEqual(
            sorted(os.listdir(stored)), ["info.json", "original", "w20.webp", "x50.jpg"]
        )
        with open(os.path.join(stored, "w20.webp"), "rb") as f:
            self.assertEqual(decode(f.read()).size, (20, 15))

    async def test_failures_are_reported_and_the_exit_status_says_so(self) -> None:
        status, out, err = await self.run_cli(
            self.files["photo.jpg"], self.files["bad.jpg"], f"{self.root}/missing.jpg"
        )
        self.assertEqual(status, 1)
        self.assertEqual(len(out.splitlines()), 1)
        self.assertIn(
            f"{self.files['bad.jpg']}: the file is not an image in a supported "
            "format (JPEG, PNG, GIF, WEBP, AVIF, TIFF, BMP, HEIF, JXL, SVG, PDF, "
            "MP4, MOV, WEBM)\n",
            err,
        )
        self.assertIn("missing.jpg: cannot read: No such file or directory", err)

    async def test_an_unexpected_failure_fails_its_item_alone(self) -> None:
        """A bug met by one item in decoding, storage or fetching: one line each."""
        render_many = renderer.render_many
        put = LocalStorage.put
        fetch = SourceFetcher.fetch
        names = []
        for n in range(6):
            names.append(os.path.join(self.root, f"more{n}.png"))
            with open(names[-1], "wb") as f:
                f.write(encode(quadrants((30 + n, 20)), "PNG"))

        def broken_decoder(data: bytes, *args: Any) -> Any:
            if data == PHOTO:
                raise RuntimeError("decoder bug")
            return render_many(data, *args)

        async def broken_storage(storage: Any, key: str, *a: Any, **k: Any) -> Any:
            if OTHER_HASH[9:] in key:
                raise RuntimeError("storage bug")
            return await put(storage, key, *a, **k)

        async def broken_fetch(fetcher: Any, url: str) -> bytes:
            if url.endswith("third.png"):
                raise RuntimeError("fetcher bug")
            return await fetch(fetcher, url)

        self.patch(renderer, "render_many", broken_decoder)
        self.patch(LocalStorage, "put", broken_storage)
        self.patch(SourceFetcher, "fetch", broken_fetch)
        stream = f"{self.source}/third.png\n"
        status, out, err = await self.run_cli(
            "--outputs", "x20.jpg", self.files["photo.jpg"], self.files["other.png"],
            *names,
        )  # fmt: skip
        self.assertEqual(status, 1)
        self.assertEqual(sorted(err.splitlines()), sorted([
            f"{self.files['photo.jpg']}: internal error (RuntimeError: decoder bug)",
            f"{self.files['other.png']}: internal error (RuntimeError: storage bug)",
        ]))  # fmt: skip
        self.assertEqual(len(out.splitlines()), len(names))
        status, out, err = await self.run_cli("--outputs", "x20.jpg", "-", stdin=stream)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, "line 1: internal error (RuntimeError: fetcher bug)\n")

    async def test_stdin_stream(self) -> None:
        await self.run_cli(self.files["photo.jpg"])  # the hash is in the store now
        stream = "\n".join([
            f"{self.source}/other.png",                 # 1: a URL
            PHOTO_HASH,                                 # 2: a stored hash
            "",                                         # 3: blank
            "this is not right",                        # 4: malformed
            f"{OTHER_HASH}\t{self.source}/other.png",   # 5: hash and URL
            f"{self.source}/other.png",                 # 6: a duplicate of 1
            "0123456789abcdef0123456789abcdef",          # 7: unknown hash, no URL
            f"{self.source}/nothing.jpg",               # 8: a source that 404s
        ]) + "\n"  # fmt: skip
        status, out, err = await self.run_cli("--outputs", "x30.png", "-", stdin=stream)
        self.assertEqual(status, 1)
        self.assertEqual(sorted(out.splitlines()), sorted([
            f"{OTHER_HASH}\t{self.source}/other.png\t120\t90",
            f"{PHOTO_HASH}\t\t400\t300",
            f"{OTHER_HASH}\t{self.source}/other.png\t120\t90",
        ]))  # fmt: skip
        self.assertEqual(sorted(err.splitlines()), sorted([
            "line 4: not a URL or a 32-hex hash: 'this is not right'",
            "line 7: 0123456789abcdef0123456789abcdef is not in the store",
            "line 8: source answered 404",
        ]))  # fmt: skip
        for digest in (PHOTO_HASH, OTHER_HASH):
            self.assertIn("x30.png", os.listdir(folder(f"{self.root}/store", digest)))

    async def test_what_is_done_is_skipped(self) -> None:
        await self.run_cli("--outputs", "x50.jpg", self.files["photo.jpg"])
        path = os.path.join(folder(f"{self.root}/store", PHOTO_HASH), "x50.jpg")
        before = os.stat(path).st_mtime_ns
        status, _, _ = await self.run_cli("--outputs", "x50.jpg,x60.jpg", "-",
                                          stdin=PHOTO_HASH + "\n")  # fmt: skip
        self.assertEqual(status, 0)
        self.assertEqual(os.stat(path).st_mtime_ns, before)
        self.assertIn("x60.jpg", os.listdir(os.path.dirname(path)))

    async def test_s3(self) -> None:
        moto = shared()
        bucket = moto.new_bucket()
        status, _, err = await self.run_cli(
            "--aws_bucket", bucket, "--s3_endpoint_url", moto.url,
            "--aws_access_key_id", CREDENTIALS["aws_access_key_id"],
            "--aws_secret_key", CREDENTIALS["aws_secret_access_key"],
            "--outputs", "x50.jpg", self.files["photo.jpg"],
        )  # fmt: skip
        self.assertEqual((status, err), (0, ""))
        listing = moto.client().list_objects_v2(Bucket=bucket)["Contents"]
        prefix = folder("", PHOTO_HASH)  # the key layout: p/b9a/ebf/...
        self.assertEqual(
            {o["Key"] for o in listing if not o["Key"].startswith("SIMILAR/")},
            {f"{prefix}/{name}" for name in ("original", "info.json", "x50.jpg")},
        )


class OriginPathsTests(TestCase):
    """``imageserver process`` in an origin's namespace: its arguments (or
    lines) are paths of the origin, fetched when new, as the server does."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.origin = os.path.join(self.root, "origin")
        os.makedirs(os.path.join(self.origin, "sku"))
        self.write("sku/photo.jpg", PHOTO)
        self.write("other.png", OTHER)

    def write(self, path: str, data: bytes) -> None:
        with open(os.path.join(self.origin, path), "wb") as f:
            f.write(data)

    async def run_cli(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        return await ProcessTests.run_cli(
            self,  # type: ignore[arg-type]
            "--origin", f"shop=file://{self.origin}/", *args, stdin=stdin,
        )  # fmt: skip

    async def test_paths_as_arguments_and_lines(self) -> None:
        """The one origin's namespace is the default; each path once."""
        status, out, err = await self.run_cli(
            "--outputs", "x50.jpg", "sku/photo.jpg", "other.png", "sku/photo.jpg"
        )
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(sorted(out.splitlines()), sorted([
            f"{PHOTO_HASH}\tsku/photo.jpg\t400\t300",
            f"{OTHER_HASH}\tother.png\t120\t90",
        ]))  # fmt: skip
        stored = folder(f"{self.root}/store", PHOTO_HASH, "shop")
        self.assertEqual(
            sorted(os.listdir(stored)), ["info.json", "original", "x50.jpg"]
        )
        stream = "sku/photo.jpg\n\nother.png\n"
        status, out, err = await self.run_cli("--outputs", "w20.webp", "-",
                                              stdin=stream)  # fmt: skip
        self.assertEqual((status, err, len(out.splitlines())), (0, "", 2))
        self.assertIn("w20.webp", os.listdir(stored))

    async def test_refused_and_missing_paths_are_their_own_lines(self) -> None:
        os.symlink(os.path.join(self.origin, "other.png"),
                   os.path.join(self.origin, "link.png"))  # fmt: skip
        status, out, err = await self.run_cli(
            "sku/photo.jpg", "../origin/other.png", "/sku/photo.jpg", "none.jpg",
            "link.png",
        )  # fmt: skip
        self.assertEqual(status, 1)
        self.assertEqual(out, f"{PHOTO_HASH}\tsku/photo.jpg\t400\t300\n")
        self.assertEqual(sorted(err.splitlines()), sorted([
            "../origin/other.png: '../origin/other.png': empty, '.' and '..' "
            "segments are not origin paths",
            "/sku/photo.jpg: '/sku/photo.jpg': empty, '.' and '..' segments are "
            "not origin paths",
            "none.jpg: no object 'none.jpg' at the origin of 'shop'",
            "link.png: no object 'link.png' at the origin of 'shop'",
        ]))  # fmt: skip

    async def test_a_stale_path_is_checked_before_its_outputs(self) -> None:
        """Bulk work warms what the origin has now: past --origin_ttl a
        changed object is fetched and its outputs made, not the old one's."""
        await self.run_cli("--origin_ttl", "0", "sku/photo.jpg")
        self.write("sku/photo.jpg", OTHER)
        status, out, err = await self.run_cli(
            "--origin_ttl", "0", "--outputs", "x40.png", "sku/photo.jpg"
        )
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, f"{OTHER_HASH}\tsku/photo.jpg\t120\t90\n")
        self.assertIn(
            "x40.png", os.listdir(folder(f"{self.root}/store", OTHER_HASH, "shop"))
        )
        os.remove(os.path.join(self.origin, "sku/photo.jpg"))
        status, out, err = await self.run_cli("--origin_ttl", "0", "sku/photo.jpg")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("no object 'sku/photo.jpg'", err)

    async def test_the_operator_is_told_why_an_origin_failed(self) -> None:
        """The command line's user runs the origin too: an item line says
        what the origin did (a client of the server is told less); a URL is
        an upload, refused in an origin's namespace."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        options = Options()
        options.parseOptions(["process", "--local_base_path", f"{self.root}/store",
                              "--allow_private_sources", "--origin",
                              f"web=http://127.0.0.1:{closed}/", "-"])  # fmt: skip
        out, err = io.StringIO(), io.StringIO()
        stdin = io.StringIO("a.jpg\nhttps://example.com/b.jpg\n")
        status = await process(reactor, options.subOptions, stdin, out, err)
        self.assertEqual((status, out.getvalue()), (1, ""))
        self.assertEqual(sorted(err.getvalue().splitlines()), [
            f"a.jpg: the origin of 'web' failed for 'a.jpg': origin "
            f"http://127.0.0.1:{closed}/: source host 127.0.0.1 refused the "
            f"connection on port {closed}",
            "https://example.com/b.jpg: namespace 'web' is served from its "
            "origin (--origin): its images come from there; upload into "
            "another namespace",
        ])  # fmt: skip

    async def test_an_item_line_is_one_line_whatever_its_path_holds(self) -> None:
        """A path with a line break or an escape sequence is shown quoted; a
        line of standard input past 64 KiB is refused without being held."""
        stdin = "x\nfake.jpg: ok\n\x1b[2Jclear.jpg\n" + "y" * 70_000 + "\nz.jpg\n"
        status, out, err = await self.run_cli("-", stdin=stdin)
        self.assertEqual((status, out), (1, ""))
        lines = err.splitlines()
        self.assertEqual(len(lines), 5, lines)
        self.assertIn("'\\x1b[2Jclear.jpg': '", err)
        self.assertIn("line 4: longer than 65536 characters", err)
        self.assertNotIn("\x1b", err)
        status, out, err = await self.run_cli("x\nfake.jpg: ok")
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertTrue(err.startswith("'x\\nfake.jpg: ok': "), err)

    def test_a_namespace_that_cannot_be_is_named_with_its_option(self) -> None:
        options = Options()
        with self.assertRaisesRegex(UsageError, "--origin Shop=...: 'Shop' is not"):
            options.parseOptions(["process", "--origin", "Shop=file:///tmp/", "x"])

    async def test_files_go_to_another_namespace(self) -> None:
        """--namespace names which: files into a plain one, paths into the
        origin's."""
        photo = os.path.join(self.root, "photo.jpg")
        with open(photo, "wb") as f:
            f.write(PHOTO)
        status, _, err = await self.run_cli("--namespace", "p", photo)
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(os.path.isdir(folder(f"{self.root}/store", PHOTO_HASH)))


class CommandTests(SynchronousTestCase):
    """``python -m imageserver`` as users run it."""

    def run_command(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "imageserver", *args],
            capture_output=True, text=True, cwd=self.root,
            env={**os.environ, "PYTHONPATH": CHECKOUT, **(env or {})}, timeout=60,
        )  # fmt: skip

    def test_options_from_the_environment(self) -> None:
        env = {"IMAGESERVER_OUTPUTS": "w10.png", "IMAGESERVER_LOCAL_BASE_PATH": "st"}
        done = self.run_command("process", "photo.jpg", env=env)
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        stored = folder(os.path.join(self.root, "st"), PHOTO_HASH)
        self.assertTrue(os.path.exists(os.path.join(stored, "w10.png")))
        wins = self.run_command("process", "--outputs", "w12.png", "photo.jpg", env=env)
        self.assertEqual(wins.returncode, 0)
        self.assertTrue(os.path.exists(os.path.join(stored, "w12.png")))
        bad = self.run_command("process", "photo.jpg",
                               env={"IMAGESERVER_MAXIMUM_WIDTH": "wide"})  # fmt: skip
        self.assertEqual(bad.returncode, 2)
        self.assertIn("IMAGESERVER_MAXIMUM_WIDTH", bad.stderr)

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        with open(os.path.join(self.root, "photo.jpg"), "wb") as f:
            f.write(PHOTO)

    def test_exit_statuses(self) -> None:
        ok = self.run_command("process", "--outputs", "w10.jpg", "photo.jpg")
        self.assertEqual((ok.returncode, ok.stderr), (0, ""))
        self.assertEqual(ok.stdout, f"{PHOTO_HASH}\tphoto.jpg\t400\t300\n")
        failed = self.run_command("process", "photo.jpg", "nope.jpg")
        self.assertEqual(failed.returncode, 1)
        usage = self.run_command("process", "--outputs", "w0.jpg", "photo.jpg")
        self.assertEqual(usage.returncode, 2)
        self.assertIn("--outputs", usage.stderr)
        self.assertEqual(self.run_command().returncode, 2)

    def test_help_shows_what_the_command_uses(self) -> None:
        shown = self.run_command("process", "--help").stdout
        for option in ("--outputs", "--local_base_path", "--aws_bucket",
                       "--namespace", "--concurrency"):  # fmt: skip
            self.assertIn(option, shown)
        for option in ("--port", "--admin_port", "--manhole", "--profile",
                       "--secret", "--max_connections"):  # fmt: skip
            self.assertNotIn(option + "=", shown)
            self.assertNotIn(option + " ", shown)

    def test_usage_errors_are_one_line_and_a_hint(self) -> None:
        result = self.run_command("process", "--port", "7000", "photo.jpg")
        self.assertEqual(result.returncode, 2)
        self.assertEqual(
            result.stderr,
            "imageserver: option --port not recognized\n"
            "Run 'imageserver --help' for the options.\n",
        )
        version = self.run_command("--version")
        self.assertEqual(
            (version.returncode, version.stdout), (0, "imageserver 0.1.0\n")
        )

    def test_progress_bar_only_on_a_terminal(self) -> None:
        primary, secondary = pty.openpty()
        self.addCleanup(os.close, primary)
        # A new pseudo-terminal is 0 columns wide; a real one is not.
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        with subprocess.Popen(
            [sys.executable, "-m", "imageserver", "process", "photo.jpg"],
            cwd=self.root, env={**os.environ, "PYTHONPATH": CHECKOUT},
            stdout=subprocess.PIPE, stderr=secondary,
        ) as child:  # fmt: skip
            os.close(secondary)
            out, _ = child.communicate(timeout=60)
            terminal = b""
            while True:
                try:
                    chunk = os.read(primary, 4096)
                except OSError:  # the child closed its end
                    break
                if not chunk:
                    break
                terminal += chunk
        self.assertEqual(child.returncode, 0)
        self.assertEqual(out.decode(), f"{PHOTO_HASH}\tphoto.jpg\t400\t300\n")
        self.assertIn(b"100%", terminal)
        self.assertIn(b"1/1", terminal)
        # Piped, the same run prints no bar at all.
        self.assertEqual(self.run_command("process", "photo.jpg").stderr, "")

    def test_results_and_the_bar_share_a_terminal_cleanly(self) -> None:
        """Each result line shows whole on a line of its own, never on the bar's."""
        names = []
        for n in range(4):
            names.append(f"p{n}.png")
            with open(os.path.join(self.root, names[-1]), "wb") as f:
                f.write(encode(quadrants((40 + n, 30)), "PNG"))
        primary, secondary = pty.openpty()
        self.addCleanup(os.close, primary)
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        with subprocess.Popen(
            [sys.executable, "-m", "imageserver", "process", *names],
            cwd=self.root, env={**os.environ, "PYTHONPATH": CHECKOUT},
            stdout=secondary, stderr=secondary,
        ) as child:  # fmt: skip
            os.close(secondary)
            terminal = b""
            while True:
                try:
                    chunk = os.read(primary, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                terminal += chunk
        self.assertEqual(child.wait(timeout=60), 0)
        screen = render_terminal(terminal.decode())
        results = [line for line in screen if line.endswith("\t30")]
        self.assertEqual(len(results), 4, screen)
        for line in results:
            self.assertRegex(line, r"\A[0-9a-f]{32}\tp[0-3]\.png\t4[0-3]\t30\Z")

    def test_usage_lines_name_the_program(self) -> None:
        for args, line in (
            (["--help"], "Usage: imageserver process|info [options] ..."),
            (["process", "--help"], "Usage: imageserver process [options] FILE... | -"),
            (["info", "--help"], "Usage: imageserver info FILE"),
        ):
            shown = self.run_command(*args)
            self.assertEqual(
                (shown.returncode, shown.stdout.splitlines()[0]), (0, line), args
            )

    def test_a_file_that_is_no_image_is_called_a_file(self) -> None:
        for name, data in (("bad.jpg", b"x"), ("empty.jpg", b"")):
            with open(os.path.join(self.root, name), "wb") as f:
                f.write(data)
        formats = (
            "JPEG, PNG, GIF, WEBP, AVIF, TIFF, BMP, HEIF, JXL, SVG, PDF, MP4, MOV, WEBM"
        )
        done = self.run_command("process", "bad.jpg", "empty.jpg")
        self.assertEqual(done.returncode, 1)
        self.assertEqual(
            sorted(done.stderr.splitlines()),
            [
                f"bad.jpg: the file is not an image in a supported format ({formats})",
                "empty.jpg: the file is empty",
            ],
        )
        info = self.run_command("info", "bad.jpg")
        self.assertEqual(
            (info.returncode, info.stderr),
            (
                1,
                f"bad.jpg: the file is not an image in a supported format "
                f"({formats})\n",
            ),
        )

    def test_info(self) -> None:
        result = self.run_command("info", "photo.jpg")
        self.assertEqual(result.returncode, 0)
        self.assertTrue(
            result.stdout.startswith(
                f'{{"hash": "{PHOTO_HASH}", "width": 400, "height": 300, '
                '"content_type": "image/jpeg", "frames": 1, "blurhash": "'
            ),
            result.stdout,
        )
        self.assertIn('"dominant_color": "#', result.stdout)

    def test_a_store_that_cannot_be_used_is_one_line_before_any_item(self) -> None:
        """A missing bucket or an unwritable path: exit 1 with one line saying
        why, not one 502 per item."""
        moto = shared()
        a_file = os.path.join(self.root, "photo.jpg")
        keys = {
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
        }
        for args, line in (
            (("--aws_bucket", "nosuchbucket", "--s3_endpoint_url", moto.url),
             f"--aws_bucket nosuchbucket: no such bucket at {moto.url}; create "
             "it, or name one that exists"),
            (("--local_base_path", f"{a_file}/store"),
             f"--local_base_path {a_file}/store cannot be written: Not a "
             "directory"),
        ):  # fmt: skip
            done = self.run_command("process", *args, "photo.jpg", "photo.jpg",
                                    env=keys)  # fmt: skip
            self.assertEqual(
                (done.returncode, done.stdout, done.stderr), (1, "", line + "\n")
            )


def render_terminal(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: carriage returns overwrite."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    lines = [""]
    column = 0
    for char in text.replace("\r\n", "\n"):
        if char == "\n":
            lines.append("")
            column = 0
        elif char == "\r":
            column = 0
        else:
            line = lines[-1]
            lines[-1] = line[:column] + char + line[column + 1 :]
            column += 1
    return [line.rstrip(" ") for line in lines]
