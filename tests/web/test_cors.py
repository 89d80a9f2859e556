"""Other origins' pages (CORS, --cors_origins): reads opened to the origins
given, never writes; preflights; OPTIONS. The browser's side is in
tests/test_browser.py."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from imageserver.access.cors import (
    EXPOSED,
    MAX_AGE,
    READ_HEADERS,
    CorsPolicy,
    parse_origin,
)
from imageserver.access.signing import sign
from imageserver.access.tokens import WriteTokens
from imageserver.config import Config
from imageserver.web.access import AccessPolicy
from imageserver.web.app import UNSIGNED_ROUTES
from tests.support import LoopbackSite
from tests.test_docs import DOCS
from tests.web.test_access import PHOTO, SECRET, TOKEN, example_paths, with_origin

PAGE = "http://127.0.0.1:8080"
OTHER = "http://127.0.0.1:8081"


class OriginGrammarTests(SynchronousTestCase):
    def test_origins_are_read_as_browsers_serialise_them(self) -> None:
        for text, parsed in (
            ("https://shop.example", ("https", "shop.example", None)),
            ("HTTPS://Shop.Example/", ("https", "shop.example", None)),
            ("https://shop.example:443", ("https", "shop.example", None)),
            ("http://shop.example:80", ("http", "shop.example", None)),
            ("http://shop.example:8080", ("http", "shop.example", 8080)),
            ("http://127.0.0.1:9000", ("http", "127.0.0.1", 9000)),
            ("http://[::1]:9000", ("http", "::1", 9000)),
            ("https://*.shop.example", ("https", "*.shop.example", None)),
            ("https://xn--bcher-kva.example", ("https", "xn--bcher-kva.example", None)),
        ):
            self.assertEqual(parse_origin(text), parsed, text)

    def test_what_is_no_origin_is_refused_saying_why(self) -> None:
        for text, why in (
            ("shop.example", "http:// or https://"),
            ("ftp://shop.example", "http:// or https://"),
            ("null", "http:// or https://"),
            ("https://shop.example/path", "no path"),
            ("https://shop.example/?a=1", "no path"),
            ("https://user@shop.example", "no user name"),
            ("https://shop.example:99999", "port"),
            ("https://b\u00fccher.example", "punycode"),
            ("https://", "host"),
            ("https://-a.example", "host"),
            ("https://a_b.example", "host"),
        ):
            with self.assertRaises(ValueError, msg=text) as raised:
                parse_origin(text)
            self.assertIn(why, str(raised.exception), text)

    def test_the_option_is_checked_at_start(self) -> None:
        for value, why in (
            (("*", PAGE), "give it alone"),
            (("https://shop.example/x",), "no path"),
            (("https://*.com",), "top-level domain"),
        ):
            with self.assertRaises(ValueError) as raised:
                Config(cors_origins=value)
            self.assertIn("--cors_origins: ", str(raised.exception))
            self.assertIn(why, str(raised.exception))

    def test_which_origins_are_allowed(self) -> None:
        policy = CorsPolicy(["https://shop.example", "https://*.cdn.example:8443"])
        for origin, allowed in (
            ("https://shop.example", True),
            ("http://shop.example", False),
            ("https://shop.example:444", False),
            ("https://www.shop.example", False),
            ("https://shop.example.evil", False),
            ("https://a.cdn.example:8443", True),
            ("https://a.b.cdn.example:8443", True),
            ("https://cdn.example:8443", False),
            ("https://a.cdn.example", False),
            ("https://evilcdn.example:8443", False),
            ("null", False),
            ("", False),
            ("https://shop.example/", False),  # no browser sends that
            ("https://a.cdn.example:8443/", False),  # nor that
            ("HTTPS://a.cdn.example:8443", False),
            ("https://*.cdn.example:8443", False),
            ("https://a.cdn.example:08443", False),
        ):
            self.assertEqual(policy.allows(origin), allowed, origin)
        self.assertTrue(CorsPolicy(["*"]).allows("null"))

    @given(
        scheme=st.sampled_from(["http", "https"]),
        labels=st.lists(st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True), min_size=1),
        port=st.one_of(st.none(), st.integers(1, 65535)),
        other=st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True),
    )
    def test_an_origin_allows_itself_alone(
        self, scheme: str, labels: list[str], port: int | None, other: str
    ) -> None:
        host = ".".join(labels)
        origin = f"{scheme}://{host}" + ("" if port is None else f":{port}")
        policy = CorsPolicy([origin])
        default = {"http": 80, "https": 443}[scheme]
        sent = f"{scheme}://{host}" + ("" if port in (None, default) else f":{port}")
        self.assertTrue(policy.allows(sent))
        self.assertFalse(policy.allows(f"{scheme}://{other}.{host}"))
        if other != host:
            self.assertFalse(policy.allows(f"{scheme}://{other}"))
        if len(labels) > 1:  # *.com would open a top-level domain
            under = CorsPolicy([f"{scheme}://*.{host}"])
            self.assertTrue(under.allows(f"{scheme}://{other}.{host}"))
            self.assertFalse(under.allows(f"{scheme}://{host}"))

    def test_preflights(self) -> None:
        policy = CorsPolicy([PAGE])
        ok = policy.preflight(PAGE, "GET", ["If-None-Match", "range"])
        self.assertEqual((ok.code, ok.refusal), (204, None))
        lines = dict(ok.lines)
        self.assertEqual(lines[b"Access-Control-Allow-Origin"], PAGE.encode())
        self.assertEqual(lines[b"Access-Control-Allow-Methods"], b"GET, HEAD")
        self.assertEqual(
            lines[b"Access-Control-Allow-Headers"], b"if-none-match, range"
        )
        self.assertEqual(lines[b"Access-Control-Max-Age"], str(MAX_AGE).encode())
        for origin, method, headers, why in (
            (OTHER, "GET", [], "may not read"),
            (PAGE, "POST", [], "only reads"),
            (PAGE, "DELETE", [], "only reads"),
            (PAGE, "PUT", [], "only reads"),
            (PAGE, "GET", ["Authorization"], "may not send authorization"),
            (PAGE, "GET", ["x-anything"], "may not send x-anything"),
        ):
            refused = policy.preflight(origin, method, headers)
            self.assertEqual(refused.code, 403, (origin, method))
            assert refused.refusal is not None
            self.assertIn(why, refused.refusal)
            self.assertNotIn(b"Access-Control-Allow-Origin", dict(refused.lines))


def _values(headers: dict[str, list[str]], name: str) -> set[str]:
    return {
        v.strip().lower()
        for line in headers.get(name, [])
        for v in line.split(",")
        if v.strip()
    }


class SiteTests(TestCase):
    """Every route x method x Origin, over a real socket to the site as the
    server builds it."""

    def setUp(self) -> None:
        self.app = with_origin(self)
        self.folder = self.app.upload(PHOTO)
        self.app.request("POST", f"{self.folder}/notes.txt", data=b"notes")
        self.clock = Clock()
        self.clock.advance(1_800_000_000)

    async def test_reads_carry_cors_headers_for_allowed_origins_only(self) -> None:
        site = LoopbackSite(self, self.app.resource, cors=CorsPolicy([PAGE]))
        paths = [
            *example_paths(self.folder),
            f"{self.folder}/w20.auto",
            f"{self.folder}/nothing.png",
            "/p/no/such/route/at/all/here",
        ]
        for path in paths:
            for method in ("GET", "HEAD", "POST", "DELETE"):
                for origin in (PAGE, OTHER, None):
                    headers = {} if origin is None else {"Origin": origin}
                    data = b"" if method != "POST" else b"x"
                    code, got, _ = await site.request(method, path, headers, data)
                    where = (method, path, origin, code)
                    allow = got.get("access-control-allow-origin")
                    if method in ("GET", "HEAD"):
                        self.assertIn("origin", _values(got, "vary"), where)
                        self.assertEqual(
                            allow, [PAGE] if origin == PAGE else None, where
                        )
                        if origin == PAGE:
                            self.assertEqual(
                                _values(got, "access-control-expose-headers"),
                                {h.lower() for h in EXPOSED},
                            )
                    else:  # a write is never opened to another origin's page
                        self.assertIsNone(allow, where)
        # Vary is one header, with what else the answer varies by.
        _, got, _ = await site.request(
            "GET", f"{self.folder}/w20.auto", {"Origin": PAGE, "Accept": "image/webp"}
        )
        self.assertEqual(got["vary"], ["Accept, Origin"])

    async def test_any_origin(self) -> None:
        site = LoopbackSite(self, self.app.resource, cors=CorsPolicy(["*"]))
        for origin in (PAGE, "null", "https://anything.example"):
            code, got, _ = await site.request(
                "GET", f"{self.folder}/info.json", {"Origin": origin}
            )
            self.assertEqual(code, 200)
            self.assertEqual(got["access-control-allow-origin"], ["*"])
            self.assertNotIn("vary", got)  # the same answer for every page
        code, got, _ = await site.request("POST", "/p", {"Origin": PAGE}, PHOTO)
        self.assertEqual(code, 200)
        self.assertNotIn("access-control-allow-origin", got)

    async def test_off_by_default(self) -> None:
        site = LoopbackSite(self, self.app.resource)
        code, got, _ = await site.request(
            "GET", f"{self.folder}/info.json", {"Origin": PAGE}
        )
        self.assertEqual(code, 200)
        self.assertNotIn("access-control-allow-origin", got)
        self.assertNotIn("vary", got)
        code, got, body = await site.request(
            "OPTIONS",
            f"{self.folder}/info.json",
            {"Origin": PAGE, "Access-Control-Request-Method": "GET"},
        )
        self.assertEqual(code, 403)
        self.assertIn(b"--cors_origins", body)
        self.assertNotIn("access-control-allow-origin", got)

    async def test_options_and_preflights_on_every_route(self) -> None:
        site = LoopbackSite(self, self.app.resource, cors=CorsPolicy([PAGE]))
        for path in example_paths(self.folder):
            code, got, body = await site.request("OPTIONS", path)
            self.assertEqual((code, body), (204, b""), path)
            allowed = _values(got, "allow")
            self.assertIn("options", allowed)
            self.assertLessEqual(allowed, {"get", "head", "post", "delete", "options"})
            for method in ("GET", "HEAD", "POST", "DELETE", "PUT"):
                for origin in (PAGE, OTHER):
                    code, got, _ = await site.request(
                        "OPTIONS",
                        path,
                        {
                            "Origin": origin,
                            "Access-Control-Request-Method": method,
                            "Access-Control-Request-Headers": "if-none-match",
                        },
                    )
                    opened = origin == PAGE and method in ("GET", "HEAD")
                    self.assertEqual(code, 204 if opened else 403, (path, method))
                    self.assertEqual(
                        got.get("access-control-allow-origin"),
                        [PAGE] if opened else None,
                        (path, method, origin),
                    )
        code, _, body = await site.request("OPTIONS", "/")
        self.assertEqual(code, 404, body)
        # Not a header name: a 400 that says so.
        code, _, body = await site.request(
            "OPTIONS",
            f"{self.folder}/info.json",
            {"Origin": PAGE, "Access-Control-Request-Method": "GET",
             "Access-Control-Request-Headers": "a b"},
        )  # fmt: skip
        self.assertEqual(code, 400, body)
        # Methods are case-sensitive: "options" is not OPTIONS.
        code, _, _ = await site.request("options", f"{self.folder}/info.json")
        self.assertEqual(code, 501)

    async def test_preflights_need_no_credentials(self) -> None:
        """A browser sends a preflight without credentials or signature: it
        passes --write_tokens and --secret, and opens no write."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"{TOKEN}\n")
        tokens = WriteTokens(path)
        tokens.load()
        site = LoopbackSite(
            self,
            self.app.resource,
            AccessPolicy(
                self.clock, secrets=[SECRET], tokens=tokens, unsigned=UNSIGNED_ROUTES
            ),
            cors=CorsPolicy([PAGE]),
        )
        for target, method, expected in (
            (f"{self.folder}/w20.png", "GET", 204),
            (sign(SECRET, f"{self.folder}/w20.png"), "GET", 204),
            ("/p", "POST", 403),
            (self.folder, "DELETE", 403),
        ):
            code, got, _ = await site.request(
                "OPTIONS",
                target,
                {"Origin": PAGE, "Access-Control-Request-Method": method},
            )
            self.assertEqual(code, expected, target)
        # The read itself still needs its signature, and says so to the page.
        code, got, _ = await site.request(
            "GET", f"{self.folder}/w20.png", {"Origin": PAGE}
        )
        self.assertEqual(code, 403)
        self.assertEqual(got["access-control-allow-origin"], [PAGE])
        code, got, _ = await site.request(
            "GET", sign(SECRET, f"{self.folder}/w20.png"), {"Origin": PAGE}
        )
        self.assertEqual(code, 200)
        self.assertEqual(got["access-control-allow-origin"], [PAGE])


class ReadHeadersTests(SynchronousTestCase):
    def test_what_reads_may_send_is_documented(self) -> None:
        with open(os.path.join(DOCS, "api.md")) as f:
            page = f.read()
        for header in sorted(READ_HEADERS):
            self.assertIn(f"`{header}`", page.lower())
        exposed = "Access-Control-Expose-Headers: " + ", ".join(EXPOSED)
        self.assertIn(exposed, " ".join(page.split()))
