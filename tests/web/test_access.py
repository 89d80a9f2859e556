"""Who may do what: signed URLs (several secrets, expiry) and write tokens."""

import contextlib
import io
import json
import os
import re
import uuid
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from imageserver.access.signing import (
    main,
    refusal,
    secrets_of,
    sign,
    signature,
    verify,
)
from imageserver.access.tokens import WriteTokens, digest_of, parse
from imageserver.access.tokens import main as tokens_main
from imageserver.config import Config
from imageserver.service import writes_are_open
from imageserver.web.access import CHALLENGE, AccessPolicy, lists
from imageserver.web.app import UNSIGNED_ROUTES, ImageServerApp
from imageserver.web.site import Admission
from tests.rawhttp import (
    exchange,
    json_of,
    request_bytes,
    status_of,
)
from tests.support import AppHarness, LoopbackSite, decode, encode, quadrants

PHOTO = encode(quadrants((200, 100)))
SECRET = b"correct horse battery staple"
NOW = 1_800_000_000


class SigningTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        signed = sign(SECRET, "/p/6e0/072/682/e66287b662827da75b244a3/w200.jpg")
        _, _, query = signed.partition("?")
        self.assertTrue(query.startswith("sig="))
        self.assertTrue(verify(SECRET, signed))
        with_query = sign(SECRET, "http://img.example/p?source=http%3A%2F%2Fa%2Fb.jpg")
        self.assertTrue(verify(SECRET, with_query.removeprefix("http://img.example")))

    def test_anything_changed_fails(self) -> None:
        signed = sign(SECRET, "/p/6e0/072/682/e66287b662827da75b244a3/w200.jpg")
        self.assertFalse(verify(SECRET, signed.replace("w200", "w900")))
        self.assertFalse(verify(b"other secret", signed))
        self.assertFalse(verify(SECRET, signed.split("?")[0]))
        self.assertFalse(verify(SECRET, signed + "&outputs=x1.jpg"))
        self.assertFalse(verify(SECRET, signed[:-1]))

    def test_known_value(self) -> None:
        # printf /p | openssl dgst -sha256 -hmac key -binary | base64url
        self.assertEqual(
            signature(b"key", "/p"), "AYiH1gM3x-4XmQu6uTnPNwYjFoUQ-5WN2mvCmETtsqI"
        )

    def test_helper(self) -> None:
        self.patch(os, "environ", {"IMAGESERVER_SECRET": "key"})
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(main(["/p"]), 0)
            self.assertEqual(main(["--method", "HEAD", "/p"]), 0)
            self.assertEqual(main(["--method", "POST", "/p"]), 0)
        self.assertEqual(out.getvalue().splitlines(), [
            "/p?sig=AYiH1gM3x-4XmQu6uTnPNwYjFoUQ-5WN2mvCmETtsqI",
            "/p?sig=AYiH1gM3x-4XmQu6uTnPNwYjFoUQ-5WN2mvCmETtsqI",
            # printf 'POST /p' | openssl dgst -sha256 -hmac key -binary | base64url
            f"/p?sig={signature(b'key', 'POST /p')}",
        ])  # fmt: skip
        self.assertEqual(signature(b"key", "POST /p"),
                         "PmMudnVhS6NI97ihYdXmgtu6fB6z5QmSCsTnrpcURZQ")  # fmt: skip

    def test_the_helper_reads_the_secret_from_a_file_too(self) -> None:
        """Newcomer: IMAGESERVER_SECRET_FILE, which the server reads, was
        ignored by the helper ("IMAGESERVER_SECRET is not set")."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("key\n")
        out, err = io.StringIO(), io.StringIO()
        self.patch(os, "environ", {"IMAGESERVER_SECRET_FILE": path})
        with contextlib.redirect_stdout(out):
            self.assertEqual(main(["/p"]), 0)
        signed = "/p?sig=AYiH1gM3x-4XmQu6uTnPNwYjFoUQ-5WN2mvCmETtsqI"
        self.assertEqual(out.getvalue(), signed + "\n")
        for environ, message in (
            ({}, "neither IMAGESERVER_SECRET nor IMAGESERVER_SECRET_FILE is set"),
            ({"IMAGESERVER_SECRET": "k", "IMAGESERVER_SECRET_FILE": path},
             "both IMAGESERVER_SECRET and IMAGESERVER_SECRET_FILE are set"),
            ({"IMAGESERVER_SECRET_FILE": path + ".missing"}, "cannot read"),
        ):  # fmt: skip
            self.patch(os, "environ", environ)
            with contextlib.redirect_stderr(err):
                self.assertEqual(main(["/p"]), 2)
            self.assertIn(message, err.getvalue())

    def test_a_signature_is_for_its_method(self) -> None:
        path = "/p/6e0/072/682/e66287b662827da75b244a3/notes.txt?exp=9999999999"
        for method in ("GET", "HEAD", "POST", "DELETE"):
            signed = sign(SECRET, path, method=method)
            for other in ("GET", "HEAD", "POST", "DELETE"):
                reads = {method, other} <= {"GET", "HEAD"}
                self.assertEqual(verify(SECRET, signed, other),
                                 reads or method == other, (method, other))  # fmt: skip

    def test_only_request_targets_are_signed(self) -> None:
        # "POST /p" signed as a read would be POST's signature of /p.
        for url in ("POST /p", "p", "http://img.example"):
            with self.assertRaises(ValueError, msg=url):
                sign(SECRET, url)


def with_origin(case: TestCase) -> AppHarness:
    """An app whose namespace ``o`` is a directory holding ``a/b.jpg``."""
    root = os.path.abspath(case.mktemp())
    os.makedirs(os.path.join(root, "a"))
    with open(os.path.join(root, "a", "b.jpg"), "wb") as f:
        f.write(PHOTO)
    return AppHarness(case, origin=(f"o=file://{root}",))


def example_paths(folder: str) -> list[str]:
    """A path for every route of the app, open paths used as namespaces too."""
    values = {
        "namespace": ["p", "status_check", "o"],
        "image": [folder.lstrip("/")],
        "name": ["w20.png", "notes.txt", "process", "info.json"],
        "job_id": [str(uuid.uuid4())],
        "path": ["a/b.jpg", "a/b.jpg/w20.png", "a/b.jpg/info.json"],
    }
    paths = {"/status_check", "/openapi.json", "/status_check/batch"}
    for rule in ImageServerApp.app.url_map.iter_rules():
        candidates = [""]
        for part in re.split(r"(<[^>]+>)", rule.rule):
            variable = re.fullmatch(r"<(?:\w+:)?(\w+)>", part)
            options = values[variable[1]] if variable else [part]
            candidates = [c + o for c in candidates for o in options]
        paths.update(candidates)
    return sorted(paths)


def stored(root: str) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def spellings(method: str) -> list[str]:
    """``method`` as sent by a careful client, in lower case, in mixed case."""
    mixed = "".join(c.lower() if i % 2 else c for i, c in enumerate(method))
    return [method, method.lower(), mixed]


class MethodSpellingTests(TestCase):
    """Every route x method x spelling x credential, over a real socket to the
    site as the server builds it: a method is what it is spelt, and only the
    spellings the routes implement get past the site."""

    def setUp(self) -> None:
        self.app = with_origin(self)
        self.folder = self.app.upload(PHOTO)
        self.app.request("POST", f"{self.folder}/notes.txt", data=b"notes")
        self.app.request("GET", f"{self.folder}/w20.png")
        self.clock = Clock()
        self.clock.advance(NOW)

    def listen(self, admit: Admission) -> int:
        return LoopbackSite(self, self.app.resource, admit).port

    def assertReached(self, answer: bytes, method: str, target: str) -> None:
        """The route answered: not refused by the site, nor by access (an
        upload into an origin's namespace is the route's own 403)."""
        if (method, target.partition("?")[0]) == ("POST", "/o"):
            self.assertIn(b"served from its origin", answer)
            return
        self.assertNotIn(status_of(answer), (401, 403, 501), (method, target))

    async def send(
        self, port: int, method: str, path: str, headers: dict[str, str]
    ) -> bytes:
        return await exchange(port, request_bytes(method, path, headers, PHOTO))

    async def test_write_tokens(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"{TOKEN}\n")
        tokens = WriteTokens(path)
        tokens.load()
        port = self.listen(AccessPolicy(self.clock, tokens=tokens))
        credentials = {
            "none": {},
            "wrong": {"Authorization": "Bearer not-the-token-at-all"},
            "right": {"Authorization": f"Bearer {TOKEN}"},
        }
        before = stored(self.app.root)
        served = []
        for path in example_paths(self.folder):
            for method in METHODS:
                for spelt in spellings(method):
                    for credential, headers in credentials.items():
                        # A listing (/{namespace}/similar) is read with a token.
                        token_read = lists(path.encode())
                        if (spelt in ("GET", "HEAD") and not token_read) or (
                            spelt in ("POST", "DELETE", "GET", "HEAD")
                            and credential == "right"
                        ):
                            served.append((spelt, path, headers))
                            continue
                        answer = await self.send(port, spelt, path, headers)
                        if spelt in ("POST", "DELETE", "GET", "HEAD"):
                            expected = 401 if credential == "none" else 403
                        elif spelt == "OPTIONS":  # sent with a body: it takes none
                            expected = 400
                        else:
                            expected = 501
                        self.assertEqual(
                            status_of(answer), expected, (spelt, path, credential)
                        )
        # Nothing refused changed what is stored.
        self.assertEqual(stored(self.app.root), before)
        # What the routes implement, spelt as they spell it, reaches them.
        for spelt, path, headers in served:
            answer = await self.send(port, spelt, path, headers)
            self.assertReached(answer, spelt, path)

    async def test_signatures(self) -> None:
        port = self.listen(
            AccessPolicy(self.clock, secrets=[SECRET], unsigned=UNSIGNED_ROUTES)
        )
        before = stored(self.app.root)
        open_routes = {(m.decode(), p.decode()) for m, p in UNSIGNED_ROUTES}
        served = []
        for path in example_paths(self.folder):
            for method in METHODS:
                signatures = {
                    "none": path,
                    "wrong": sign(b"not the secret", path, method=method),
                    "for reading": sign(SECRET, path),
                    "for the method": sign(SECRET, path, method=method),
                }
                for spelt in spellings(method):
                    for signed, target in signatures.items():
                        opened = (spelt.replace("HEAD", "GET"), path) in open_routes
                        if spelt in ("GET", "HEAD", "POST", "DELETE") and (
                            opened
                            or signed == "for the method"
                            or (spelt in ("GET", "HEAD") and signed == "for reading")
                        ):
                            served.append((spelt, target))
                            continue
                        answer = await self.send(port, spelt, target, {})
                        expected = 403
                        if spelt == "OPTIONS":  # sent with a body: it takes none
                            expected = 400
                        elif spelt not in ("GET", "HEAD", "POST", "DELETE"):
                            expected = 501
                        self.assertEqual(
                            status_of(answer), expected, (spelt, path, signed)
                        )
                        if expected == 403 and signed == "for reading":
                            self.assertIn("signed for reading only",
                                          json_of(answer)["error"])  # fmt: skip
        self.assertEqual(stored(self.app.root), before)
        for spelt, target in served:
            answer = await self.send(port, spelt, target, {})
            self.assertReached(answer, spelt, target)


class SignedReadsTests(TestCase):
    def setUp(self) -> None:
        self.app = with_origin(self)
        self.folder = self.app.upload(PHOTO)
        self.clock = Clock()
        self.clock.advance(NOW)
        self.site = LoopbackSite(
            self,
            self.app.resource,
            AccessPolicy(self.clock, secrets=[SECRET], unsigned=UNSIGNED_ROUTES),
        )

    async def get(self, path: str) -> tuple[int, bytes]:
        return await self.request("GET", path)

    async def request(
        self, method: str, path: str, data: bytes = b""
    ) -> tuple[int, bytes]:
        code, _, body = await self.site.request(method, path, data=data)
        return code, body

    def example_paths(self) -> list[str]:
        return example_paths(self.folder)

    async def test_every_route_and_method_needs_a_signature(self) -> None:
        methods = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
        before = sorted(os.listdir(self.app.root))
        open_routes = {(m.decode(), p.decode()) for m, p in UNSIGNED_ROUTES}
        for path in self.example_paths():
            for method in methods:
                for query in ("", "?outputs=x10.jpg&source=http://127.0.0.1/a.jpg"):
                    data = PHOTO if method == "POST" else b""
                    code, _ = await self.request(method, path + query, data=data)
                    opened = (method.replace("HEAD", "GET"), path) in open_routes
                    expected = 200 if opened else 403
                    if method == "OPTIONS":  # asks, changes nothing
                        expected = 204
                    elif method not in ("GET", "HEAD", "POST", "DELETE"):
                        expected = 501
                    self.assertEqual(code, expected, (method, path))
        # Nothing was stored: no namespace appeared, no source was fetched.
        self.assertEqual(sorted(os.listdir(self.app.root)), before)

    async def test_signed_urls_are_served(self) -> None:
        code, body = await self.get(sign(SECRET, f"{self.folder}/w20.png"))
        self.assertEqual((code, decode(body).size), (200, (20, 10)))

    async def test_unsigned_or_wrongly_signed_is_403(self) -> None:
        unsigned = f"{self.folder}/w20.png"
        for path in (
            unsigned,
            sign(b"nope", unsigned),
            sign(SECRET, unsigned).replace("w20", "w21"),
        ):
            code, body = await self.get(path)
            self.assertEqual(code, 403, path)
            self.assertEqual(
                json.loads(body), {"error": "this URL needs a valid signature (sig)"}
            )

    async def test_status_check_stays_open(self) -> None:
        self.assertEqual((await self.get("/status_check"))[0], 200)

    async def test_a_url_signed_for_reading_neither_stores_nor_deletes(self) -> None:
        self.app.request("POST", f"{self.folder}/notes.txt", data=b"the notes")
        self.assertEqual(
            (await self.get(sign(SECRET, f"{self.folder}/w20.png")))[0], 200
        )
        before = stored(self.app.root)
        for method, path in (
            ("POST", f"{self.folder}/notes.txt"),
            ("DELETE", f"{self.folder}/notes.txt"),
            ("DELETE", f"{self.folder}/w20.png"),
            ("DELETE", self.folder),
            ("POST", f"{self.folder}/process?outputs=w30.png"),
        ):
            code, body = await self.request(
                method, sign(SECRET, path), data=b"<script>tampered</script>"
            )
            self.assertEqual(code, 403, (method, path))
            self.assertEqual(json.loads(body), {"error": (
                f"this URL is signed for reading only: a {method} needs a URL "
                f"signed for {method} (python -m imageserver.signing --method "
                f"{method})")})  # fmt: skip
        self.assertEqual(stored(self.app.root), before)
        # Signed for the method, it is done.
        notes = f"{self.folder}/notes.txt"
        code, _ = await self.request(
            "POST", sign(SECRET, notes, method="POST"), data=b"v2"
        )
        self.assertEqual(code, 200)
        self.assertEqual(await self.get(sign(SECRET, notes)), (200, b"v2"))
        code, _ = await self.request("DELETE", sign(SECRET, notes, method="DELETE"))
        self.assertEqual(code, 204)
        # ... and that signature is for DELETE alone.
        code, _ = await self.request(
            "POST", sign(SECRET, notes, method="DELETE"), data=b"x"
        )
        self.assertEqual(code, 403)


class RotationAndExpiryTests(TestCase):
    def setUp(self) -> None:
        self.app = AppHarness(self)
        self.folder = self.app.upload(PHOTO)
        self.clock = Clock()
        self.clock.advance(NOW)

    async def get(self, secrets: list[bytes], path: str) -> tuple[int, Any]:
        site = LoopbackSite(
            self, self.app.resource, AccessPolicy(self.clock, secrets=secrets)
        )
        code, _, body = await site.request("GET", path)
        return code, body

    async def test_any_secret_verifies_while_both_are_held(self) -> None:
        old, new = b"old secret", b"new secret"
        path = f"{self.folder}/w20.png"
        for held in ([old], [new, old]):
            self.assertEqual((await self.get(held, sign(old, path)))[0], 200)
        self.assertEqual((await self.get([new, old], sign(new, path)))[0], 200)
        # Rolled out: the old secret's URLs stop working.
        self.assertEqual((await self.get([new], sign(old, path)))[0], 403)

    async def test_an_expiring_url_works_until_its_time(self) -> None:
        path = sign(SECRET, f"{self.folder}/w20.png", expires=NOW + 60)
        self.assertIn("&exp=", path.replace("?exp=", "&exp="))
        self.assertLess(path.index("exp="), path.index("sig="))
        self.assertEqual((await self.get([SECRET], path))[0], 200)
        self.clock.advance(60)
        self.assertEqual((await self.get([SECRET], path))[0], 200)
        self.clock.advance(1)
        code, body = await self.get([SECRET], path)
        self.assertEqual(code, 403)
        self.assertEqual(
            json.loads(body),
            {"error": f"this URL expired at {NOW + 60} (Unix seconds)"},
        )

    async def test_the_expiry_is_signed(self) -> None:
        path = sign(SECRET, f"{self.folder}/w20.png", expires=NOW + 60)
        later = path.replace(f"exp={NOW + 60}", f"exp={NOW + 6000}")
        code, body = await self.get([SECRET], later)
        self.assertEqual(code, 403)
        self.assertIn("signature", json.loads(body)["error"])

    async def test_an_expiry_that_is_not_a_time_is_refused(self) -> None:
        path = sign(SECRET, f"{self.folder}/w20.png?exp=soon")
        self.assertEqual(refusal([SECRET], path, NOW), "exp must be Unix seconds")

    async def test_urls_without_expiry_stay_valid(self) -> None:
        path = sign(SECRET, f"{self.folder}/w20.png")
        self.clock.advance(10**9)
        self.assertEqual((await self.get([SECRET], path))[0], 200)

    async def test_the_helper_signs_with_the_first_secret_and_an_expiry(self) -> None:
        self.patch(os, "environ", {"IMAGESERVER_SECRET": "first,second"})
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(main(["--expires-in", "300", "/p"]), 0)
        signed = out.getvalue().strip()
        self.assertRegex(signed, r"^/p\?exp=\d+&sig=[\w-]{43}$")
        self.assertTrue(verify(b"first", signed))
        self.assertFalse(verify(b"second", signed))

    async def test_secrets_are_separated_by_commas_or_lines(self) -> None:
        self.assertEqual(secrets_of(" a, b\nc\n\n"), (b"a", b"b", b"c"))
        self.assertEqual(secrets_of(""), ())


TOKEN = "write-token-0123456789"
HASHED = "another-token-abcdefghij"


class WriteTokenTests(TestCase):
    def setUp(self) -> None:
        self.app = AppHarness(self)
        self.folder = self.app.upload(PHOTO)
        self.path = self.mktemp()
        self.write_file(f"# writers\n{TOKEN}\n\nsha256:{digest_of(HASHED).hex()}\n")
        self.tokens = WriteTokens(self.path)
        self.tokens.load()
        self.clock = Clock()
        self.clock.advance(NOW)

    def write_file(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)

    async def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        secrets: tuple[bytes, ...] = (),
        data: bytes = b"",
    ) -> tuple[int, dict[str, list[str]], bytes]:
        policy = AccessPolicy(
            self.clock, secrets=secrets, tokens=self.tokens, unsigned=UNSIGNED_ROUTES
        )
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        site = LoopbackSite(self, self.app.resource, policy)
        return await site.request(method, path, headers, data)

    async def test_every_write_needs_a_token_and_nothing_is_stored_without(
        self,
    ) -> None:
        before = sorted(os.walk(self.app.root))
        writes = [
            ("POST", "/p"),
            ("POST", "/p?source=http://127.0.0.1/a.jpg"),
            ("POST", "/p/batch"),
            ("POST", f"{self.folder}/process?outputs=x10.jpg"),
            ("POST", f"{self.folder}/notes.txt"),
            ("DELETE", f"{self.folder}/info.json"),
            ("DELETE", self.folder),
        ]
        for method, path in writes:
            for data in (PHOTO, b""):
                code, headers, body = await self.request(method, path, data=data)
                self.assertEqual(code, 401, (method, path))
                self.assertEqual(headers["www-authenticate"], [CHALLENGE])
                self.assertIn("Bearer", json.loads(body)["error"])
                for wrong in ("not-the-token-at-all", TOKEN + "x", f"sha256:{HASHED}"):
                    code, _, body = await self.request(method, path, wrong, data=data)
                    self.assertEqual(code, 403, (method, path, wrong))
                    self.assertEqual(
                        json.loads(body), {"error": "this token may not write"}
                    )
        self.assertEqual(sorted(os.walk(self.app.root)), before)

    async def test_a_listed_token_or_one_whose_hash_is_listed_writes(self) -> None:
        for token in (TOKEN, HASHED):
            code, _, _ = await self.request(
                "POST", "/p", token, data=encode(quadrants((64, 32)))
            )
            self.assertEqual(code, 200, token)
        code, _, _ = await self.request("DELETE", self.folder, TOKEN)
        self.assertEqual(code, 204)

    async def test_malformed_authorization_is_401(self) -> None:
        site = LoopbackSite(
            self, self.app.resource, AccessPolicy(self.clock, tokens=self.tokens)
        )
        for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", TOKEN):
            code, _, _ = await site.request(
                "POST", "/p", {"Authorization": header}, PHOTO
            )
            self.assertEqual(code, 401, header)
        # Two headers, one right: which one counts is not left to chance.
        twice = request_bytes("POST", "/p", {"Authorization": "Bearer x"}, PHOTO)
        twice = twice.replace(
            b"\r\n\r\n", f"\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode(), 1
        )
        answer = await exchange(site.port, twice)
        self.assertEqual(status_of(answer), 401)
        self.assertIn("one Authorization header", json_of(answer)["error"])

    async def test_reads_stay_open_without_secret(self) -> None:
        code, _, _ = await self.request("GET", f"{self.folder}/w20.png")
        self.assertEqual(code, 200)

    async def test_with_a_secret_writes_need_a_token_not_a_signature(self) -> None:
        secrets = (SECRET,)
        code, _, _ = await self.request(
            "POST", "/p", TOKEN, secrets, data=encode(quadrants((64, 32)))
        )
        self.assertEqual(code, 200)
        # A signature is no token.
        code, _, _ = await self.request(
            "POST", sign(SECRET, "/p"), None, secrets, data=PHOTO
        )
        self.assertEqual(code, 401)
        # Reads still need their signature.
        path = f"{self.folder}/w20.png"
        self.assertEqual((await self.request("GET", path, TOKEN, secrets))[0], 403)
        self.assertEqual(
            (await self.request("GET", sign(SECRET, path), None, secrets))[0], 200
        )

    async def test_a_changed_file_is_read_again(self) -> None:
        new = "the-new-token-9876543210"
        self.write_file(f"{new}\n")
        self.tokens.refresh()
        self.assertEqual((await self.request("DELETE", self.folder, TOKEN))[0], 403)
        self.assertEqual((await self.request("DELETE", self.folder, new))[0], 204)

    async def test_a_rewrite_of_the_same_size_and_time_is_noticed(self) -> None:
        """Reloading went by size and modification time: a token replaced by
        another of the same length within one timestamp stayed in force."""
        other = "write-token-9876543210"
        self.assertEqual(len(other), len(TOKEN))
        stat = os.stat(self.path)
        self.write_file(f"{other}\n")
        os.utime(self.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        self.tokens.refresh()
        self.assertTrue(self.tokens.allows(other))
        self.assertFalse(self.tokens.allows(TOKEN))

    async def test_an_unusable_file_keeps_the_tokens_in_force(self) -> None:
        for text in ("", "short\n", "sha256:abc\n"):
            self.write_file(text)
            self.tokens.refresh(force=True)
            self.assertTrue(self.tokens.allows(TOKEN), text)
        os.unlink(self.path)
        self.tokens.refresh()
        self.assertTrue(self.tokens.allows(TOKEN))
        self.flushLoggedErrors()


class RefusedBeforeTheBodyTests(TestCase):
    """A request that may not write is refused when its head has arrived: no
    ``100 Continue`` invites its body, none of it is read or held."""

    def setUp(self) -> None:
        self.app = AppHarness(self)
        self.folder = self.app.upload(PHOTO)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"{TOKEN}\n")
        tokens = WriteTokens(path)
        tokens.load()
        self.clock = Clock()
        self.clock.advance(NOW)
        self.guarded = LoopbackSite(
            self,
            self.app.resource,
            AccessPolicy(
                self.clock, secrets=[SECRET], tokens=tokens, unsigned=UNSIGNED_ROUTES
            ),
        )

    async def test_no_100_continue_and_no_body_read(self) -> None:
        before = stored(self.app.root)
        for target in ("/p", f"{self.folder}/notes.txt", "/p/batch"):
            for framing in ("Content-Length: 900000", "Transfer-Encoding: chunked"):
                for credential, code in (
                    ("", 401),
                    ("Authorization: Bearer not-the-token-at-all\r\n", 403),
                ):
                    head = (
                        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        f"Expect: 100-continue\r\n{credential}{framing}\r\n\r\n"
                    )
                    # The body is never sent: the answer must come without it,
                    # and the server closes the connection.
                    answer = await exchange(self.guarded.port, head.encode())
                    self.assertEqual(status_of(answer), code, (target, framing))
                    self.assertNotIn(b"100 Continue", answer)
                    self.assertEqual(self.guarded.site.body_budget.held, 0)
        self.assertEqual(stored(self.app.root), before)

    async def test_a_refused_request_without_a_body_gets_no_100_continue(
        self,
    ) -> None:
        for method, target in (("DELETE", self.folder), ("POST", "/p")):
            head = request_bytes(method, target, {"Expect": "100-continue"})
            answer = await exchange(self.guarded.port, head)
            self.assertEqual(status_of(answer), 401, method)
            self.assertNotIn(b"100 Continue", answer, method)

    async def test_a_refused_read_keeps_the_connection(self) -> None:
        target = f"{self.folder}/w20.png"
        twice = request_bytes("GET", target) * 2
        twice = twice.replace(b"Connection: close\r\n", b"", 1)
        answer = await exchange(self.guarded.port, twice)
        self.assertEqual(answer.count(b"HTTP/1.1 403 Forbidden"), 2)


class TokenFileTests(SynchronousTestCase):
    def test_lines_are_tokens_or_their_hashes(self) -> None:
        digests = parse(f"{TOKEN}\n  # comment\nsha256:{'ab' * 32}\n")
        self.assertEqual(digests, {digest_of(TOKEN), bytes.fromhex("ab" * 32)})

    def test_a_byte_order_mark_is_not_part_of_the_first_token(self) -> None:
        """An editor's BOM was kept in the first token, which then matched no
        Authorization header; a file read as UTF-8 keeps it in the text."""
        self.assertEqual(parse(f"\ufeff{TOKEN}\n"), {digest_of(TOKEN)})
        self.assertEqual(parse(f"\ufeff# tokens\n{TOKEN}\n"), {digest_of(TOKEN)})

    def test_bad_lines_are_named(self) -> None:
        for text, message in (
            ("", "no tokens"),
            ("# only a comment\n", "no tokens"),
            (f"{TOKEN}\nshort\n", "line 2: a token is at least 16 visible ASCII"),
            ("sha256:xyz\n", "line 1: sha256: must be followed by 64 hex digits"),
            ("has a space in it!!\n", "line 1: a token is at least 16"),
            (f"{TOKEN}\u200b\n", "line 1: a token is at least 16 visible ASCII"),
            (f"{TOKEN}\n{TOKEN}\x07\n", "line 2: a token is at least 16 visible ASCII"),
            # Printable, but no client could send it in a header as written.
            (f"{TOKEN}\u0301\n", "line 1: a token is at least 16 visible ASCII"),
            # A line break only for str.splitlines: one line, refused.
            (f"{TOKEN}\u2028{TOKEN}\n", "line 1: a token is at least 16 visible"),
            (f"{TOKEN}\x85{TOKEN}\n", "line 1: a token is at least 16 visible"),
        ):
            with self.assertRaises(ValueError, msg=text) as caught:
                parse(text)
            self.assertIn(message, str(caught.exception))

    def test_the_helper_makes_a_token_and_its_line(self) -> None:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(tokens_main(["new"]), 0)
        token_line, file_line = out.getvalue().splitlines()
        token = token_line.removeprefix("token: ")
        self.assertEqual(parse(file_line.removeprefix("line for the file: ")), {
            digest_of(token)})  # fmt: skip


class OpenWritesWarningTests(SynchronousTestCase):
    def test_only_a_port_beyond_loopback_without_protection(self) -> None:
        self.assertFalse(writes_are_open(Config()))
        self.assertTrue(writes_are_open(Config(listen="0.0.0.0")))
        self.assertFalse(writes_are_open(Config(listen="0.0.0.0", secret="s")))
        self.assertFalse(writes_are_open(Config(listen="0.0.0.0", write_tokens="f")))


class ListingTokenTests(TestCase):
    """/{namespace}/similar tells which images a namespace holds: with write
    tokens it is read with one, however its path is spelt."""

    async def test_similar_needs_a_token_in_every_spelling(self) -> None:
        app = AppHarness(self, open_similar=True)  # the access policy decides
        _, info = app.json("POST", "/p", data=PHOTO)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"{TOKEN}\n")
        tokens = WriteTokens(path)
        tokens.load()
        clock = Clock()
        site = LoopbackSite(self, app.resource, AccessPolicy(clock, tokens=tokens))
        query = f"?to={info['hash']}"
        for spelt in ("/p/similar", "/p/%73imilar", "/p/simil%61r", "/%70/similar"):
            for method in ("GET", "HEAD"):
                code, _, body = await site.request(method, spelt + query, {}, b"")
                self.assertEqual(code, 401, (method, spelt))
                code, _, body = await site.request(
                    method,
                    spelt + query,
                    {"Authorization": "Bearer wrong-token-here"},
                    b"",
                )
                self.assertEqual(code, 403, (method, spelt))
            code, _, body = await site.request(
                "GET", spelt + query, {"Authorization": f"Bearer {TOKEN}"}, b""
            )
            self.assertEqual(code, 200, spelt)
            self.assertEqual(json.loads(body)["similar"], [])
        # Other reads stay open.
        code, _, _ = await site.request(
            "GET", f"{app.upload(PHOTO)}/info.json", {}, b""
        )
        self.assertEqual(code, 200)
