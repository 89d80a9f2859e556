"""An SSH manhole: a Python prompt inside the running server, for live debugging.

Off unless ``--manhole`` is given; always authenticated (authorized keys, or
bcrypt password hashes); on loopback unless ``--manhole_allow_remote``.
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
from twisted.conch.ssh.keys import Key
from twisted.cred import credentials, error, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.python.filepath import FilePath
from zope.interface import implementer

from imageserver.listening import Listening


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
        self._factory = manhole_ssh.ConchFactory(
            portal.Portal(realm, checkers)  # type: ignore[arg-type]
        )
        self._factory.noisy = False
        Listening(reactor, endpoint, self._factory, "manhole").setServiceParent(self)

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
