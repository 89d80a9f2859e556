"""The SSH manhole, reached with the system's OpenSSH client over loopback."""

import fcntl
import os
import shutil
import struct
import termios
from typing import Any

import bcrypt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from imageserver.config import Config
from imageserver.runtime.manhole import (
    NO_COMMANDS,
    NO_TERMINAL,
    ManholeService,
    host_keys,
)
from tests.s3server import free_port


def client_key(folder: str, name: str, kind: str = "ed25519") -> str:
    """Write an SSH key pair; return the private key's path (.pub beside it)."""
    key = (
        ed25519.Ed25519PrivateKey.generate()
        if kind == "ed25519"
        else rsa.generate_private_key(65537, 2048)
    )
    path = os.path.join(folder, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
    with open(path + ".pub", "wb") as f:
        f.write(
            key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
        )
    return path


class SSH(ProcessProtocol):
    """``ssh -tt`` into the manhole: types ``lines``, then Ctrl-D."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self.output = b""
        self.ended: Deferred[int] = Deferred()
        self._typed = False

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self._typed and b">>> " in self.output:
            self._typed = True
            for line in self.lines:
                self.transport.write(line + b"\r")  # type: ignore[union-attr]
            self.transport.write(b"\x04")  # type: ignore[union-attr]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.exit_code = reason.value.exitCode
        self.ended.callback(self.exit_code)


async def ssh_into(port: int, folder: str, key: str, lines: list[bytes]) -> SSH:
    """Log into a manhole on loopback ``port`` with ``key`` and type ``lines``."""
    session = SSH(lines)
    # An empty configuration and a known-hosts file of the test's own: nothing
    # from the machine's or the user's ssh set-up plays a part.
    config = os.path.join(folder, "ssh_config")
    known_hosts = os.path.join(folder, "known_hosts")
    open(config, "w").close()
    reactor.spawnProcess(session, "ssh", [
        "ssh", "-F", config, "-tt", "-i", key, "-p", str(port),
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "UpdateHostKeys=no", "-o", "PreferredAuthentications=publickey",
        "admin@127.0.0.1",
    ], env={"PATH": os.environ.get("PATH", "")})  # fmt: skip
    await session.ended
    return session


class Client(ProcessProtocol):
    """An ``ssh`` process: what it printed, on each stream, and its status."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int] = Deferred()
        self.prompted: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if b">>> " in self.out and not self.prompted.called:
            self.prompted.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value.exitCode)


class ManholeTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        if shutil.which("ssh") is None:
            self.skipTest("the OpenSSH client is not installed")
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.good = client_key(self.folder, "good")
        self.good_rsa = client_key(self.folder, "good_rsa", "rsa")
        self.bad = client_key(self.folder, "bad")
        with open(os.path.join(self.folder, "authorized_keys"), "wb") as f:
            for key in (self.good, self.good_rsa):
                with open(key + ".pub", "rb") as pub:
                    f.write(pub.read() + b"\n")
        self.port = free_port()
        self.service = ManholeService(
            reactor,
            f"tcp:{self.port}:interface=127.0.0.1",
            {"answer": 6 * 7, "config": Config()},
            os.path.join(self.folder, "host_keys"),
            authorized_keys=os.path.join(self.folder, "authorized_keys"),
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)

    async def ssh(self, key: str, lines: list[bytes]) -> SSH:
        return await ssh_into(self.port, self.folder, key, lines)

    def client(self, *options: str, command: str = "", **spawn: Any) -> Client:
        """``ssh`` with ``options`` (and ``command``) and the good key."""
        client = Client()
        config = os.path.join(self.folder, "ssh_config")
        open(config, "w").close()
        args = ["ssh", "-F", config, *options, "-i", self.good, "-p", str(self.port),
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR",
                "-o", f"UserKnownHostsFile={self.folder}/known_hosts",
                "admin@127.0.0.1"] + ([command] if command else [])  # fmt: skip
        env = {"PATH": os.environ.get("PATH", ""), "TERM": "xterm"}
        reactor.spawnProcess(client, "ssh", args, env=env, **spawn)
        return client

    def failures_logged(self) -> list[Any]:
        failures: list[Any] = []

        def observe(event: Any) -> None:
            if event.get("log_failure") is not None:
                failures.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return failures

    async def test_a_command_is_refused_in_words_on_stderr(self) -> None:
        failures = self.failures_logged()
        for options in ((), ("-t",), ("-tt",)):
            client = self.client(*options, command="answer")
            client.transport.closeStdin()  # type: ignore[union-attr]
            self.assertEqual(await client.ended, 1, options)
            self.assertIn(NO_COMMANDS.encode(), client.err, options)
            self.assertNotIn(b"42", client.out, options)
        self.assertEqual(failures, [])

    async def test_a_session_without_a_terminal_is_refused_in_words(self) -> None:
        failures = self.failures_logged()
        client = self.client("-T")
        client.transport.write(b"answer\n")  # type: ignore[union-attr]
        client.transport.closeStdin()  # type: ignore[union-attr]
        self.assertEqual(await client.ended, 1)
        self.assertIn(NO_TERMINAL.encode(), client.err)
        self.assertEqual(failures, [])

    async def test_piped_lines_run_and_their_end_ends_the_session(self) -> None:
        failures = self.failures_logged()
        client = self.client("-tt")
        client.transport.write(b"answer + 1\r")  # type: ignore[union-attr]
        client.transport.closeStdin()  # type: ignore[union-attr]
        self.assertEqual(await client.ended, 0)
        self.assertIn(b"43", client.out)
        self.assertEqual(failures, [])

    async def test_a_resized_terminal_keeps_the_prompt(self) -> None:
        failures = self.failures_logged()
        client = self.client("-t", usePTY=True)
        await client.prompted
        master = client.transport.fileno()  # type: ignore[union-attr]
        # The kernel tells ssh (SIGWINCH), which tells the server.
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))
        client.transport.write(b"answer * 2\r")  # type: ignore[union-attr]
        client.transport.write(b"\x04")  # type: ignore[union-attr]
        await client.ended
        self.assertIn(b"84", client.out)
        self.assertEqual(failures, [])

    async def test_the_right_key_gets_a_prompt_on_the_running_objects(self) -> None:
        session = await self.ssh(self.good, [b"answer + 1", b"config.port"])
        self.assertIn(b"43", session.output)
        self.assertIn(b"'7000'", session.output)

    async def test_an_rsa_key_works_too(self) -> None:
        session = await self.ssh(self.good_rsa, [b"answer"])
        self.assertIn(b"42", session.output)

    async def test_a_wrong_key_is_refused(self) -> None:
        session = await self.ssh(self.bad, [b"answer"])
        self.assertEqual(session.exit_code, 255)
        self.assertIn(b"Permission denied (publickey", session.output)
        self.assertNotIn(b">>> ", session.output)


class HostKeyTests(SynchronousTestCase):
    def test_made_once_private_to_the_owner(self) -> None:
        folder = self.mktemp()
        first = host_keys(folder)
        self.assertEqual(sorted(first), [b"ssh-ed25519", b"ssh-rsa"])
        for name in os.listdir(folder):
            self.assertEqual(os.stat(os.path.join(folder, name)).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(folder).st_mode & 0o777, 0o700)
        again = host_keys(folder)
        self.assertEqual(
            {k: v.fingerprint() for k, v in first.items()},
            {k: v.fingerprint() for k, v in again.items()},
        )


class PasswordTests(SynchronousTestCase):
    def test_bcrypt_password_file(self) -> None:
        from twisted.cred.credentials import UsernamePassword
        from twisted.cred.error import UnauthorizedLogin

        from imageserver.runtime.manhole import BcryptPasswords

        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"admin:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)) + b"\n")
        checker = BcryptPasswords(path)
        self.assertEqual(checker._check(b"admin", b"s3cret"), b"admin")
        with self.assertRaises(UnauthorizedLogin):
            checker._check(b"admin", b"wrong")
        with self.assertRaises(UnauthorizedLogin):
            checker._check(b"root", b"s3cret")
        self.assertIsInstance(UsernamePassword(b"a", b"b"), UsernamePassword)


class ManholeOptionTests(SynchronousTestCase):
    def test_needs_authentication(self) -> None:
        with self.assertRaises(ValueError):
            Config(manhole="7003")

    def test_loopback_only_unless_asked(self) -> None:
        keys = {"manhole_keys": "authorized_keys"}
        self.assertEqual(
            Config(manhole="7003", **keys).manhole_endpoint,
            "tcp:7003:interface=127.0.0.1",
        )
        for endpoint in ("tcp:7003:interface=127.0.0.1", r"tcp6:7003:interface=\:\:1",
                         "unix:/run/imageserver-manhole.sock"):  # fmt: skip
            Config(manhole=endpoint, **keys)
        for endpoint in (
            "tcp:7003",
            "tcp:7003:interface=0.0.0.0",
            "ssl:7003",
            # Twisted's parser binds the last of a repeated argument.
            "tcp:7003:interface=127.0.0.1:interface=0.0.0.0",
            r"tcp6:7003:interface=\:\:1:interface=\:\:",
        ):
            with self.assertRaises(ValueError, msg=endpoint):
                Config(manhole=endpoint, **keys)
        Config(manhole="tcp:7003:interface=0.0.0.0", manhole_allow_remote=True, **keys)
