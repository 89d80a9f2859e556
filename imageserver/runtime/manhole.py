"""An SSH manhole: a Python prompt inside the running server, for live debugging.

Off unless ``--manhole`` is given; always authenticated (authorized keys, or
bcrypt password hashes); on loopback unless ``--manhole_allow_remote``.
A session is a prompt on a terminal: a command (``ssh host 'command'``) or a
session without a terminal (input piped to ``ssh`` without ``-tt``) is
refused with a line on the client's standard error and exit status 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import bcrypt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.application.service import MultiService
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import (
    IAuthorizedKeysDB,
    SSHPublicKeyChecker,
    readAuthorizedKeyFile,
)
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.session import SSHSessionProcessProtocol
from twisted.cred import credentials, error, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from zope.interface import implementer

from imageserver.runtime.listening import Listening


@implementer(IAuthorizedKeysDB)
class AuthorizedKeys:
    """An ``authorized_keys`` file, read at each login: edits apply at once.

    The keys decide, whatever user name the client gives.
    """

    def __init__(self, path: str) -> None:
        self._path = FilePath(path)

    def getAuthorizedKeys(self, username: bytes) -> Iterable[Key]:
        with self._path.open() as f:
            return list(readAuthorizedKeyFile(f))


@implementer(ICredentialsChecker)
class BcryptPasswords:
    """``user:bcrypt-hash`` lines; checked in a thread (bcrypt is slow on purpose)."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, path: str) -> None:
        self._path = path

    def requestAvatarId(self, creds: Any) -> Deferred[bytes | tuple[()]]:
        return deferToThread(self._check, creds.username, creds.password)  # type: ignore[arg-type]

    def _check(self, username: bytes, password: bytes) -> bytes:
        with open(self._path, "rb") as f:
            for line in f:
                user, _, hashed = line.strip().partition(b":")
                if user == username and hashed and bcrypt.checkpw(password, hashed):
                    return username
        raise error.UnauthorizedLogin("wrong user name or password")


def host_keys(folder: str) -> dict[bytes, Key]:
    """An RSA and an ed25519 host key, made once and kept mode 0600.

    Both are offered: conch advertises only its host keys' algorithms for
    client signatures, so with ed25519 alone an RSA client key would fail.
    """
    os.makedirs(folder, mode=0o700, exist_ok=True)
    found = {}
    for name, make in (
        ("ssh_host_rsa_key", lambda: rsa.generate_private_key(65537, 3072)),
        ("ssh_host_ed25519_key", ed25519.Ed25519PrivateKey.generate),
    ):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            pem = make().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
        key = Key.fromFile(path)
        found[key.sshType()] = key
    return found


#: What a client that asked for something other than a prompt reads.
NO_COMMANDS = (
    "the manhole is an interactive Python prompt: it runs no commands; "
    "log in with ssh -t and no command (ssh -tt to pipe lines into the prompt)"
)
NO_TERMINAL = (
    "the manhole is an interactive Python prompt and needs a terminal: "
    "log in with ssh -t (ssh -tt to pipe lines into the prompt)"
)


class _Sink:
    """The transport of a refused session: what the client still sends is dropped."""

    def write(self, data: bytes) -> None:
        pass

    def loseConnection(self) -> None:
        pass


class PromptSession(manhole_ssh.TerminalSession):
    """conch's terminal session, finished: commands and sessions without a
    terminal are refused in words the client sees, the end of the client's
    input ends the session, and a resized window resizes the prompt."""

    _transport: manhole_ssh.TerminalSessionTransport | None = None

    def __init__(self, original: Any, reactor: Any) -> None:
        super().__init__(original)
        self._reactor = reactor
        self._process: SSHSessionProcessProtocol | None = None

    def openShell(self, proto: SSHSessionProcessProtocol) -> None:
        if not hasattr(self, "width"):  # no pty-req came first
            self._refuse(proto, NO_TERMINAL)
            return
        self._process = proto
        self._transport = self.transportFactory(
            proto,
            self.chainedProtocolFactory(),
            IConchUser(self.original),
            self.width,
            self.height,
        )

    def execCommand(self, proto: SSHSessionProcessProtocol, cmd: bytes) -> None:
        self._refuse(proto, NO_COMMANDS)

    def _refuse(self, proto: SSHSessionProcessProtocol, message: str) -> None:
        proto.makeConnection(_Sink())

        def answer() -> None:
            # After conch has acknowledged the request this answers.
            proto.errReceived((message + "\r\n").encode())
            proto.processEnded(Failure(ProcessTerminated(exitCode=1)))

        self._reactor.callLater(0, answer)

    def windowChanged(self, newWindowSize: tuple[int, int, int, int]) -> None:
        self.height, self.width = newWindowSize[:2]
        if self._transport is not None:
            prompt = self._transport.chainedProtocol.terminalProtocol
            prompt.terminalSize(self.width, self.height)

    def eofReceived(self) -> None:
        # The client's input ended (a pipe ran dry): every line of it has
        # been run, so the session ends as after Ctrl-D, with status 0.
        if self._process is not None:
            self._process.processEnded(Failure(ProcessDone(0)))
            self._process = None


class ManholeService(MultiService):
    """Listens on ``endpoint``; each login gets a Python prompt on ``namespace``.

    The host keys are read (or made) when the service starts, just before its
    port opens.
    """

    def __init__(
        self,
        reactor: Any,
        endpoint: str,
        namespace: dict[str, Any],
        host_key_folder: str,
        authorized_keys: str | None = None,
        passwords: str | None = None,
    ) -> None:
        super().__init__()
        self._host_key_folder = host_key_folder
        checkers: list[Any] = []
        if authorized_keys:
            checkers.append(SSHPublicKeyChecker(AuthorizedKeys(authorized_keys)))
        if passwords:
            checkers.append(BcryptPasswords(passwords))
        if not checkers:
            raise ValueError("a manhole needs authorized keys or a password file")

        def prompt() -> insults.ServerProtocol:
            return insults.ServerProtocol(manhole.ColoredManhole, namespace)

        realm = manhole_ssh.TerminalRealm()
        realm.chainedProtocolFactory = prompt  # type: ignore[assignment]
        realm.sessionFactory = lambda original: PromptSession(original, reactor)  # type: ignore[assignment]
        self._factory = manhole_ssh.ConchFactory(
            portal.Portal(realm, checkers)  # type: ignore[arg-type]
        )
        self._factory.noisy = False
        Listening(reactor, endpoint, self._factory, "manhole", "ssh").setServiceParent(
            self
        )

    def _load_host_keys(self) -> None:
        if not self._factory.privateKeys:
            keys = host_keys(self._host_key_folder)
            self._factory.privateKeys = keys  # type: ignore[assignment]
            self._factory.publicKeys = {  # type: ignore[assignment]
                name: key.public() for name, key in keys.items()
            }

    def privilegedStartService(self) -> None:
        self._load_host_keys()  # twistd opens ports here
        super().privilegedStartService()

    def startService(self) -> None:
        self._load_host_keys()  # or here, when started without that phase
        super().startService()
