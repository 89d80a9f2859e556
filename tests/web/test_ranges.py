"""Byte ranges (RFC 9110 section 14) of originals, client files and
variants: a property test of the header's reading against a model, then the
real app."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase, TestCase

from imageserver.web.ranges import Part, Unsatisfiable, requested, still_current
from tests.support import AppHarness, LoopbackSite, encode, noise


def _model(specs: list[tuple[int | None, int | None]], length: int) -> object:
    """What RFC 9110 section 14 says a server of single parts answers."""
    if not specs or length == 0:
        return None
    wanted = []
    for first, last in specs:
        if first is None:  # a suffix
            assert last is not None
            if last:
                wanted.append(set(range(max(length - last, 0), length)))
            continue
        if last is not None and last < first:
            return None
        if first < length:
            end = length - 1 if last is None else min(last, length - 1)
            wanted.append(set(range(first, end + 1)))
    if not wanted:
        return Unsatisfiable()
    union = set().union(*wanted)
    if max(union) - min(union) + 1 != len(union):
        return None  # apart: whole
    return Part(min(union), max(union), length)


_SPEC = st.one_of(
    st.tuples(st.integers(0, 300), st.none()),
    st.tuples(st.integers(0, 300), st.integers(0, 300)),
    st.tuples(st.none(), st.integers(0, 300)),
)


def _header(specs: list[tuple[int | None, int | None]]) -> str:
    return "bytes=" + ",".join(
        f"-{last}" if first is None else f"{first}-{'' if last is None else last}"
        for first, last in specs
    )


class HeaderTests(SynchronousTestCase):
    @settings(max_examples=500)
    @given(specs=st.lists(_SPEC, min_size=1, max_size=4), length=st.integers(0, 250))
    def test_ranges_as_the_rfc_reads_them(
        self, specs: list[tuple[int | None, int | None]], length: int
    ) -> None:
        self.assertEqual(requested(_header(specs), length), _model(specs, length))

    def test_what_is_answered_whole(self) -> None:
        for value in (
            None,
            "",
            "bytes=",
            "items=0-1",
            "bytes 0-1",
            "bytes=a-b",
            "bytes=1-2-3",
            "bytes=--1",
            "bytes=\u0661-\u0662",  # other scripts' digits are no digits
            "bytes=0-0,10-10",  # apart
            "bytes=5-1",  # backwards: the header is invalid
            "bytes=,",  # no range at all
        ):
            self.assertIsNone(requested(value, 100), value)

    def test_parts(self) -> None:
        for value, part in (
            ("bytes=0-0", Part(0, 0, 100)),
            ("BYTES=0-9", Part(0, 9, 100)),
            ("bytes=90-", Part(90, 99, 100)),
            ("bytes=90-1000", Part(90, 99, 100)),
            ("bytes=-10", Part(90, 99, 100)),
            ("bytes=-1000", Part(0, 99, 100)),
            ("bytes= 0-4 , 5-9", Part(0, 9, 100)),  # adjacent: one part
            ("bytes=0-5,3-9,", Part(0, 9, 100)),
        ):
            self.assertEqual(requested(value, 100), part, value)
            self.assertEqual(Part(0, 9, 100).content_range, "bytes 0-9/100")
        self.assertEqual(requested("bytes=100-", 100), Unsatisfiable())
        self.assertEqual(requested("bytes=-0", 100), Unsatisfiable())
        self.assertEqual(requested("bytes=" + "9" * 19 + "-", 100), Unsatisfiable())
        self.assertEqual(requested("bytes=0-" + "9" * 19, 100), Part(0, 99, 100))

    def test_if_range(self) -> None:
        etag, date = '"abc"', "Sun, 06 Dec 2026 05:12:36 GMT"
        for value, current in (
            (None, True),
            ('"abc"', True),
            (' "abc" ', True),
            ('W/"abc"', False),  # a weak tag never matches (strong comparison)
            ('"abd"', False),
            (date, False),  # a date never: see still_current
        ):
            self.assertEqual(still_current(value, etag), current, value)


class AppTests(TestCase):
    """The real app behind the site as the server builds it, over a socket."""

    def setUp(self) -> None:
        self.app = AppHarness(self)
        self.photo = encode(noise((120, 90)))
        self.folder = self.app.upload(self.photo)
        self.notes = os.urandom(5000)
        self.app.request("POST", f"{self.folder}/notes.bin", data=self.notes)
        self.site = LoopbackSite(self, self.app.resource)

    async def get(
        self, name: str, method: str = "GET", **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        code, found, body = await self.site.request(
            method,
            f"{self.folder}/{name}",
            {k.replace("_", "-"): v for k, v in headers.items()},
        )
        return code, {k: v[-1] for k, v in found.items()}, body

    async def test_originals_files_and_variants_give_parts(self) -> None:
        _, _, variant = await self.get("w40.png")
        for name, whole in (
            ("original", self.photo),
            ("notes.bin", self.notes),
            ("w40.png", variant),
        ):
            code, headers, body = await self.get(name, Range="bytes=10-29")
            self.assertEqual((code, body), (206, whole[10:30]), name)
            self.assertEqual(headers["content-range"], f"bytes 10-29/{len(whole)}")
            self.assertEqual(headers["content-length"], "20")
            self.assertEqual(headers["accept-ranges"], "bytes")
            code, headers, body = await self.get(name, Range="bytes=-7")
            self.assertEqual((code, body), (206, whole[-7:]), name)
            code, headers, body = await self.get(name, "HEAD", Range="bytes=0-4")
            self.assertEqual((code, body, headers["content-length"]), (206, b"", "5"))
            code, headers, body = await self.get(name, Range=f"bytes={len(whole)}-")
            self.assertEqual(code, 416, name)
            self.assertEqual(headers["content-range"], f"bytes */{len(whole)}")
            self.assertEqual(headers["content-type"], "application/json")
            self.assertEqual(headers["cache-control"], "no-store")
            self.assertIn(b"error", body)
            # Several parts apart: the whole object.
            code, headers, body = await self.get(name, Range="bytes=0-1,10-11")
            self.assertEqual((code, body), (200, whole), name)
            self.assertNotIn("content-range", headers)

    async def test_if_range_and_conditions(self) -> None:
        _, headers, _ = await self.get("original")
        etag, date = headers["etag"], headers["last-modified"]
        code, _, body = await self.get("original", Range="bytes=0-3", If_Range=etag)
        self.assertEqual((code, body), (206, self.photo[:4]))
        code, _, body = await self.get("original", Range="bytes=0-3", If_Range=date)
        self.assertEqual((code, body), (200, self.photo))
        # Changed since the client's copy: the whole new object.
        code, _, body = await self.get("original", Range="bytes=0-3", If_Range='"old"')
        self.assertEqual((code, body), (200, self.photo))
        # A matching If-None-Match decides first.
        code, _, body = await self.get(
            "original", Range="bytes=0-3", If_None_Match=etag
        )
        self.assertEqual((code, body), (304, b""))
