"""SVG, PDF and video originals through the renderer and the rasteriser
process: the right picture (a known frame at a known time, the right page,
the SVG's colours at known points), at the size asked for, within limits."""

from __future__ import annotations

import base64
import gc
import http.server
import io
import os
import signal
import sys
import tempfile
import threading
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from twisted.trial.unittest import SynchronousTestCase

from imageserver import formats
from imageserver.config import Config
from imageserver.errors import ImageTooLarge, InvalidRequest, UnsupportedImage
from imageserver.imaging import documents, renderer, svg
from imageserver.naming import VariantRules
from tests import documents as make
from tests import hostile
from tests.support import encode

RULES: VariantRules = replace(Config().rules, maximum_width=4000)
LIMITS = replace(Config().decode_limits, side=4000)


def render(
    data: bytes, *names: str, limits: renderer.Limits = LIMITS
) -> list[Image.Image]:
    _, outputs = renderer.render_many(data, [RULES.canonical(n) for n in names], limits)
    images = []
    for output in outputs:
        image = Image.open(io.BytesIO(output))
        image.load()
        images.append(image)
    return images


def rgb(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(image.convert("RGB").getpixel(xy))  # type: ignore[arg-type]


def near(found: tuple[int, ...], wanted: tuple[int, ...], within: int = 7) -> bool:
    return all(abs(a - b) <= within for a, b in zip(found, wanted, strict=True))


class FormatTableTests(SynchronousTestCase):
    """Each drawn kind is one row of the format table, recognised by its
    bytes alone, and no image is taken for one."""

    def test_every_kind_is_recognised_by_its_row_alone(self) -> None:
        files = [
            ("SVG", make.svg()),
            ("PDF", make.pdf([(100, 50, (255, 0, 0))])),
            *((kind.split(".")[1].upper(), make.video(kind, frames=2))
              for kind in make.VIDEO_KINDS),
        ]  # fmt: skip
        for name, data in files:
            rows = renderer._candidates(data)
            self.assertEqual([r.pillow for r in rows], [name])
            self.assertTrue(rows[0].drawn)
        for name, row in formats.INPUTS.items():
            if row.drawn:
                continue
            data = hostile.flat(name, 16, 16)
            self.assertEqual([r.pillow for r in renderer._candidates(data)][:1], [name])

    def test_svg_is_recognised_after_what_may_come_first(self) -> None:
        body = b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>'
        for head in (b"", b"\xef\xbb\xbf", b"  \n", b'<?xml version="1.0"?>\n',
                     b"<!-- made by hand -->",
                     b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
                     b'"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">',
                     b'<!DOCTYPE svg [<!ENTITY ns "x">]>'):  # fmt: skip
            self.assertTrue(formats.INPUTS["SVG"].sniff(head + body), head)  # type: ignore[misc]
        for other in (b"<html><svg/></html>", b"<svgx/>", b"svg"):
            self.assertFalse(formats.INPUTS["SVG"].sniff(other), other)  # type: ignore[misc]


class SvgTests(SynchronousTestCase):
    def test_drawn_at_the_size_asked_for(self) -> None:
        """A 100x50 SVG at 800 wide is drawn at 800, not enlarged from 100:
        the edge between its halves is one pixel wide."""
        (wide,) = render(make.svg(), "w800.png")
        self.assertEqual(wide.size, (800, 400))
        self.assertEqual(rgb(wide, (398, 200)), (255, 0, 0))
        self.assertEqual(rgb(wide, (401, 200)), (0, 0, 255))
        (full,) = render(make.svg(), "full_size.png")
        self.assertEqual(full.size, (100, 50))

    @settings(max_examples=25, deadline=None)
    @given(
        width=st.integers(1, 2000),
        height=st.integers(1, 2000),
        box=st.integers(8, 600),
    )
    def test_any_declared_size_is_scaled_as_a_raster_of_that_size(
        self, width: int, height: int, box: int
    ) -> None:
        """An x``box``-fit variant of an SVG declaring any size has the size a
        raster of that size would get, and its colours where they belong."""
        data = make.svg(str(width), str(height), view_box="0 0 100 50")
        info = renderer.probe(data, LIMITS)
        self.assertEqual((info.width, info.height), (width, height))
        (image,) = render(data, f"x{box}-fit.png")
        scale = min(box / width, box / height)
        expected = (max(1, round(width * scale)), max(1, round(height * scale)))
        self.assertLessEqual(abs(image.width - expected[0]), 1)
        self.assertLessEqual(abs(image.height - expected[1]), 1)

    def test_units_and_view_box_give_the_size_browsers_give(self) -> None:
        for width, height, view_box, size in (
            ("1in", "0.5in", "0 0 100 50", (96, 48)),
            ("72pt", "36pt", "0 0 100 50", (96, 48)),
            ("100%", "100%", "0 0 400 200", (400, 200)),
            ("200", "", "0 0 100 50", (200, 100)),
        ):
            data = make.svg(width, height, view_box)
            if not height:
                data = data.replace(b' height=""', b"")
            info = renderer.probe(data, LIMITS)
            self.assertEqual((info.width, info.height), size, (width, height))
        bare = b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="9"/></svg>'
        info = renderer.probe(bare, LIMITS)
        self.assertEqual((info.width, info.height), (300, 150))
        self.assertEqual(info.content_type, "image/svg+xml")

    def test_transparency_is_kept(self) -> None:
        data = (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
                b'<rect width="5" height="10" fill="red"/></svg>')  # fmt: skip
        (image,) = render(data, "full_size.png")
        self.assertEqual(image.convert("RGBA").getpixel((8, 5))[3], 0)
        self.assertEqual(image.convert("RGBA").getpixel((2, 5)), (255, 0, 0, 255))
        (flat,) = render(data, "full_size.jpg")
        self.assertEqual(rgb(flat, (8, 5)), (255, 255, 255))

    def test_text_is_drawn_with_the_servers_font(self) -> None:
        data = (b'<svg xmlns="http://www.w3.org/2000/svg" width="200" height="60">'
                b'<text x="10" y="45" font-size="40" font-family="Nowhere">Hi</text>'
                b"</svg>")  # fmt: skip
        (image,) = render(data, "full_size.png")
        self.assertGreater(image.convert("RGBA").getchannel("A").getbbox()[2], 30)  # type: ignore[index]


class _Listener:
    """A loopback TCP port that counts the connections made to it."""

    def __init__(self) -> None:
        self.count = 0
        handler = self._handler()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.count += 1
                body = encode(Image.new("RGB", (50, 50), (0, 255, 0)), "PNG")
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SvgSafetyTests(SynchronousTestCase):
    """Nothing outside the SVG is read: no file, no URL, no entity."""

    def setUp(self) -> None:
        self.listener = _Listener()
        self.addCleanup(self.listener.close)
        folder = tempfile.mkdtemp()
        self.canary = os.path.join(folder, "canary.png")
        with open(self.canary, "wb") as f:
            f.write(encode(Image.new("RGB", (50, 50), (0, 255, 0)), "PNG"))
        with open(os.path.join(folder, "canary.svg"), "wb") as f:
            f.write(make.svg())

    def attacks(self) -> dict[str, bytes]:
        url = f"http://127.0.0.1:{self.listener.port}/x.png"
        green = base64.b64encode(
            b'<svg xmlns="http://www.w3.org/2000/svg" width="50" height="50">'
            + f'<image width="50" height="50" href="{self.canary}"/></svg>'.encode()
        ).decode()
        image = '<image x="0" y="0" width="100" height="50" {}="{}"/>'
        return {
            "absolute path": make.svg(body=image.format("href", self.canary)),
            "file URL": make.svg(
                body=image.format("xlink:href", "file://" + self.canary)
            ),
            "relative path": make.svg(body=image.format("href", "canary.png")),
            "http": make.svg(body=image.format("href", url)),
            "nested svg data": make.svg(
                body=image.format("href", "data:image/svg+xml;base64," + green)
            ),
            "css import": make.svg(body=f"<style>@import url({url});</style>"),
            "css url": make.svg(
                body=f'<rect width="100" height="50" style="fill:url({url})"/>'
                f"<style>rect {{ fill: url({url}) }}</style>"
            ),
            "css escape": make.svg(
                body=f'<rect width="100" height="50" style="fill:\\75 rl({url})"/>'
            ),
            "use of a file": make.svg(body=f'<use href="{self.canary[:-3]}svg#x"/>'),
            "feImage": make.svg(
                body=f'<filter id="f"><feImage href="{url}"/></filter>'
                '<rect width="100" height="50" filter="url(#f)"/>'
            ),
            "external entity": (
                f'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "{url}">'
                f'<!ENTITY y SYSTEM "file://{self.canary}">]>'
            ).encode()
            + make.svg(body="<text>&x;&y;</text>"),
            "external dtd": (
                f'<?xml version="1.0"?><!DOCTYPE svg SYSTEM "{url}">'
            ).encode()
            + make.svg(),
            "xinclude": make.svg(
                body='<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" '
                f'href="{url}"/>'
            ),
        }

    def test_no_attack_reads_anything(self) -> None:
        for name, data in self.attacks().items():
            try:
                outputs = render(data, "full_size.png", "w300.png")
            except UnsupportedImage:
                continue  # refused is safe too
            for image in outputs:
                colours = {c for _, c in image.convert("RGB").getcolors(1 << 20) or []}
                self.assertNotIn((0, 255, 0), colours, name)
        self.assertEqual(self.listener.count, 0)

    def test_what_is_kept_has_no_reference_outside(self) -> None:
        for name, data in self.attacks().items():
            try:
                cleaned = svg.clean(data, svg.SvgLimits()).data
            except UnsupportedImage:
                continue
            self.assertNotIn(b"127.0.0.1", cleaned, name)
            self.assertNotIn(self.canary.encode(), cleaned, name)
            self.assertNotIn(b"canary", cleaned, name)
            self.assertNotIn(b"@import", cleaned, name)
        scripted = make.svg(
            body='<script>alert(1)</script><rect onload="alert(2)" width="1" '
            'height="1"/><foreignObject><p>x</p></foreignObject>'
            '<a href="javascript:alert(3)"><rect width="1" height="1"/></a>'
        )
        cleaned = svg.clean(scripted, svg.SvgLimits()).data
        for word in (b"script", b"alert", b"onload", b"foreignObject", b"javascript"):
            self.assertNotIn(word, cleaned)

    def test_embedded_raster_images_are_drawn(self) -> None:
        """A PNG in a data URL is the one image reference kept."""
        png = base64.b64encode(encode(Image.new("RGB", (4, 4), (0, 255, 0)), "PNG"))
        data = make.svg(
            body=f'<image width="100" height="50" href="data:image/png;base64,'
            f'{png.decode()}" preserveAspectRatio="none"/>'
        )
        (image,) = render(data, "full_size.png")
        self.assertTrue(near(rgb(image, (50, 25)), (0, 255, 0)))


class SvgLimitTests(SynchronousTestCase):
    def refused(self, data: bytes, error: type[Exception] = ImageTooLarge) -> str:
        with self.assertRaises(error) as caught:
            renderer.render_many(data, [RULES.canonical("w100.png")], LIMITS)
        return str(caught.exception)

    def test_billion_laughs_is_refused(self) -> None:
        entities = '<!ENTITY a "aaaaaaaaaa">' + "".join(
            f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'
            for i in range(9)
        )
        data = f'<?xml version="1.0"?><!DOCTYPE svg [{entities}]>'.encode() + make.svg(
            body="<text>&j;</text>"
        )
        self.assertIn("could not be parsed", self.refused(data, UnsupportedImage))

    def test_use_explosion_is_refused_before_drawing(self) -> None:
        defs = '<rect id="a0" width="1" height="1"/>' + "".join(
            f'<g id="a{i + 1}">' + f'<use href="#a{i}"/>' * 10 + "</g>"
            for i in range(7)
        )
        data = make.svg(body=f'<defs>{defs}</defs><use href="#a7"/>')
        self.assertEqual(
            self.refused(data),
            "the SVG has more than 20000 elements once its use elements are expanded "
            "(--max_svg_elements)",
        )

    def test_use_cycles_and_chains_are_refused(self) -> None:
        cycle = make.svg(
            body='<g id="a"><use href="#b"/></g><g id="b"><use href="#a"/></g>'
        )
        self.assertEqual(
            self.refused(cycle), "the SVG's use elements refer to themselves"
        )
        chain = "".join(
            f'<g id="c{i}"><use href="#c{i + 1}"/></g>' for i in range(5000)
        )
        self.assertIn("use elements", self.refused(make.svg(body=chain)))

    def test_elements_depth_and_filters_are_bounded(self) -> None:
        many = make.svg(body='<rect width="1" height="1"/>' * 20_001)
        self.assertEqual(
            self.refused(many),
            "the SVG has more than 20000 elements (--max_svg_elements)",
        )
        deep = make.svg(body="<g>" * 70 + "</g>" * 70)
        self.assertEqual(
            self.refused(deep),
            "the SVG nests elements more than 64 deep (--max_svg_depth)",
        )
        blurs = "".join('<feGaussianBlur stdDeviation="5"/>' for _ in range(33))
        filters = make.svg(body=f'<filter id="f">{blurs}</filter>')
        self.assertEqual(
            self.refused(filters),
            "the SVG has more than 32 filter primitives (--max_svg_filters)",
        )

    def test_a_declared_canvas_is_held_to_the_pixel_limit(self) -> None:
        data = make.svg("100000", "100000")
        self.assertEqual(
            self.refused(data),
            "the image is 100000x100000, over the limit of 50000000 pixels",
        )

    def test_an_embedded_image_is_held_to_the_pixel_limit(self) -> None:
        head = base64.b64encode(hostile.png_claiming(100_000, 100_000)).decode()
        data = make.svg(
            body=f'<image width="9" height="9" href="data:image/png;base64,{head}"/>'
        )
        self.assertEqual(
            self.refused(data),
            "the SVG's embedded images have more than 50000000 pixels",
        )

    def test_a_filter_bomb_is_stopped_by_the_cpu_limit(self) -> None:
        """Blurs of a wide radius over a large canvas, within every count:
        the job is killed at --rasterise_seconds, and the next job works."""
        blurs = "".join(
            f'<feGaussianBlur stdDeviation="{300 + i}" result="b{i}"/>'
            for i in range(30)
        )
        data = make.svg(
            "3000", "3000", "0 0 3000 3000",
            f'<filter id="f" x="0" y="0" width="1" height="1">{blurs}</filter>'
            '<rect width="3000" height="3000" fill="red" filter="url(#f)"/>',
        )  # fmt: skip
        limits = replace(LIMITS, documents=replace(LIMITS.documents, seconds=1.0))
        with self.assertRaises(documents.RasteriserFailed) as caught:
            renderer.render_many(data, [RULES.canonical("full_size.png")], limits)
        self.assertEqual(
            str(caught.exception),
            "drawing the SVG took more than 1 s of CPU (--rasterise_seconds)",
        )
        (image,) = render(make.svg(), "w10.png")
        self.assertEqual(image.size, (10, 5))


PAGES = ((200, 100, (255, 0, 0)), (100, 300, (0, 0, 255)), (50, 50, (0, 200, 0)))


class PdfTests(SynchronousTestCase):
    PAGES = PAGES

    def test_first_page_by_default_and_any_page_by_option(self) -> None:
        data = make.pdf(self.PAGES)
        info = renderer.probe(data, LIMITS)
        self.assertEqual(
            (info.width, info.height, info.content_type), (200, 100, "application/pdf")
        )
        assert info.document is not None
        self.assertEqual(info.document.pages, 3)
        first, second, third = render(
            data, "w100.png", "w100-page2.png", "w100-page3.png"
        )
        self.assertEqual(first.size, (100, 50))
        self.assertEqual(second.size, (100, 300))
        self.assertEqual(third.size, (100, 100))
        for image, colour in zip(
            (first, second, third), ((255, 0, 0), (0, 0, 255), (0, 200, 0)), strict=True
        ):
            self.assertTrue(
                near(rgb(image, (10, image.height // 2)), colour), (image, colour)
            )
            self.assertEqual(rgb(image, (95, image.height // 2)), (0, 0, 0))

    def test_a_page_is_drawn_at_the_resolution_the_variant_needs(self) -> None:
        """A 100-point page at 2000 pixels: vector edges stay one pixel."""
        (image,) = render(make.pdf([(100, 100, (255, 0, 0))]), "w2000.png")
        self.assertEqual(image.size, (2000, 2000))
        self.assertEqual(rgb(image, (998, 500)), (255, 0, 0))
        self.assertEqual(rgb(image, (1001, 500)), (0, 0, 0))

    def test_a_page_past_the_last_is_a_clear_400(self) -> None:
        with self.assertRaises(InvalidRequest) as caught:
            render(make.pdf(self.PAGES), "w100-page4.png")
        self.assertEqual(
            str(caught.exception), "page 4 was asked for, and the PDF has 3 pages"
        )

    def test_a_rotated_page_is_shown_turned(self) -> None:
        data = make.pdf([(200, 100, (255, 0, 0))], rotate=90)
        info = renderer.probe(data, LIMITS)
        self.assertEqual((info.width, info.height), (100, 200))
        (image,) = render(data, "full_size.png")
        self.assertEqual(image.size, (100, 200))
        # Turned clockwise: the left (red) half is now on top.
        self.assertTrue(near(rgb(image, (50, 20)), (255, 0, 0)))
        self.assertEqual(rgb(image, (50, 180)), (0, 0, 0))

    def test_a_raster_pdf_from_pillow(self) -> None:
        data = make.raster_pdf([(255, 0, 0), (0, 0, 255)], (60, 40))
        first, second = render(data, "full_size.png", "full_size-page2.png")
        self.assertEqual(first.size, (60, 40))
        self.assertTrue(near(rgb(first, (30, 20)), (255, 0, 0)))
        self.assertTrue(near(rgb(second, (30, 20)), (0, 0, 255)))

    def test_page_count_and_page_size_are_bounded(self) -> None:
        many = make.pdf([(10, 10, (0, 0, 0))] * 2001)
        with self.assertRaises(ImageTooLarge) as caught:
            renderer.probe(many, LIMITS)
        self.assertEqual(
            str(caught.exception),
            "the PDF has 2001 pages, more than 2000 (--max_pdf_pages)",
        )
        huge = make.pdf([(100_000, 100_000, (0, 0, 0))])
        with self.assertRaises(ImageTooLarge) as caught:
            renderer.probe(huge, LIMITS)
        self.assertEqual(
            str(caught.exception),
            "the image is 100000x100000, over the limit of 50000000 pixels",
        )

    def test_a_broken_pdf_is_415(self) -> None:
        for data in (b"%PDF-1.7\n garbage", make.pdf(self.PAGES)[:200]):
            with self.assertRaises(UnsupportedImage):
                renderer.probe(data, LIMITS)


class VideoTests(SynchronousTestCase):
    def test_every_codec_and_container(self) -> None:
        """A poster, a frame at a time, and its info, from every kind."""
        for kind in make.VIDEO_KINDS:
            data = make.video(kind, frames=30, rate=10, key_every=10)
            info = renderer.probe(data, LIMITS)
            self.assertEqual((info.width, info.height), (320, 240), kind)
            assert info.document is not None
            self.assertEqual(info.document.codec, kind.split(".")[0], kind)
            self.assertAlmostEqual(info.document.frame_rate or 0, 10, delta=0.01)
            self.assertAlmostEqual(info.duration_ms or 0, 3000, delta=150, msg=kind)
            (at,) = render(data, "w160-t1500ms.png")
            self.assertEqual(at.size, (160, 120))
            self.assertTrue(
                near(rgb(at, (120, 90)), make.frame_colour(15)),
                (kind, rgb(at, (120, 90))),
            )
            self.assertTrue(near(rgb(at, (20, 20)), (255, 255, 255), 16), kind)

    def test_the_poster_passes_over_a_dark_start(self) -> None:
        """The first key frames are black (a fade-in): the poster is the
        first lively key frame."""
        data = make.video(frames=60, rate=10, key_every=10, dark=15)
        (poster,) = render(data, "w160.jpg")
        self.assertTrue(
            near(rgb(poster, (120, 90)), make.frame_colour(20)), rgb(poster, (120, 90))
        )
        (first,) = render(data, "w160-t0s.jpg")
        self.assertTrue(near(rgb(first, (120, 90)), (0, 0, 0), 16))

    @settings(max_examples=12, deadline=None)
    @given(at=st.integers(0, 59))
    def test_a_time_shows_the_frame_of_that_time(self, at: int) -> None:
        data = _SIXTY
        (image,) = render(data, f"w80-t{at * 100}ms.png")
        self.assertTrue(
            near(rgb(image, (60, 45)), make.frame_colour(at)),
            (at, rgb(image, (60, 45))),
        )
        (pct,) = render(data, f"w80-t{at * 100 // 60}pct.png")
        index = min(59, int(6.0 * (at * 100 // 60) / 100 * 10 + 1e-6))
        self.assertTrue(near(rgb(pct, (60, 45)), make.frame_colour(index)), (at, index))

    def test_an_animated_output_is_a_preview(self) -> None:
        (preview,) = render(_SIXTY, "w80.webp")
        self.assertEqual(getattr(preview, "n_frames", 1), 10)
        reds = []
        for index in range(10):
            preview.seek(index)
            reds.append(rgb(preview, (60, 45)))
            self.assertEqual(preview.info["duration"], documents.PREVIEW_FRAME_MS)
        # Frames at 0.3, 0.9, ... 5.7 s: frames 3, 9, ... 57.
        for index, colour in enumerate(reds):
            self.assertTrue(near(colour, make.frame_colour(3 + 6 * index)), reds)
        (gif,) = render(_SIXTY, "w80-t1s.gif")
        self.assertEqual(getattr(gif, "n_frames", 1), 1)

    def test_a_rotated_video_is_shown_turned(self) -> None:
        data = make.video(size=(320, 240), frames=5, rotation=90)
        info = renderer.probe(data, LIMITS)
        self.assertEqual((info.width, info.height), (240, 320))
        (image,) = render(data, "full_size.png")
        self.assertEqual(image.size, (240, 320))

    def test_decoding_stops_at_the_budget(self) -> None:
        """One key frame in 60: a time at the end decodes at most
        --max_video_decoded_frames from it, and shows the last of those."""
        data = make.video(frames=60, rate=10, key_every=60)
        limits = replace(LIMITS, documents=replace(LIMITS.documents, decoded=20))
        (image,) = render(data, "w80-t5s.png", limits=limits)
        self.assertTrue(
            near(rgb(image, (60, 45)), make.frame_colour(19)), rgb(image, (60, 45))
        )

    def test_limits_before_decoding(self) -> None:
        data = make.video(frames=30, rate=10)
        short = replace(LIMITS, documents=replace(LIMITS.documents, video_seconds=2))
        with self.assertRaises(ImageTooLarge) as caught:
            renderer.probe(data, short)
        self.assertEqual(
            str(caught.exception),
            "the video is 3 s long, over the limit of 2 s (--max_video_seconds)",
        )
        only_vp9 = replace(LIMITS, documents=replace(LIMITS.documents, codecs=("vp9",)))
        with self.assertRaises(UnsupportedImage) as caught:
            renderer.probe(data, only_vp9)
        self.assertEqual(
            str(caught.exception),
            "the video is coded in h264; accepted: vp9 (--video_codecs)",
        )
        with self.assertRaises(ImageTooLarge) as caught:
            renderer.probe(data, replace(LIMITS, pixels=320 * 240 - 1))
        self.assertIn("the image is 320x240, over the limit of", str(caught.exception))

    def test_a_cut_video_is_refused_or_shows_what_is_there(self) -> None:
        data = make.video(frames=30)
        with self.assertRaises(UnsupportedImage):
            renderer.probe(data[: len(data) // 10], LIMITS)


_SIXTY = make.video(size=(160, 120), frames=60, rate=10, key_every=10)


PICKS = "the page and t options pick a PDF's page or a video's time; this original is"
PAGE_ONLY = "the page option is for PDF originals; this is"
TIME_ONLY = "the t option is for video originals; this is"


class PickTests(SynchronousTestCase):
    def test_a_pick_for_another_kind_is_a_clear_400(self) -> None:
        jpeg = encode(Image.new("RGB", (10, 10)), "JPEG")
        for data, name, message in (
            (jpeg, "w10-t5s.jpg", f"{PICKS} JPEG"),
            (jpeg, "w10-page2.jpg", f"{PICKS} JPEG"),
            (make.svg(), "w10-page2.png", f"{PAGE_ONLY} SVG"),
            (make.pdf([(9, 9, (0, 0, 0))]), "w10-t1s.png", f"{TIME_ONLY} PDF"),
            (_SIXTY, "w10-page2.png", f"{PAGE_ONLY} MP4"),
        ):  # fmt: skip
            with self.assertRaises(InvalidRequest) as caught:
                render(data, name)
            self.assertEqual(str(caught.exception), message, name)

    def test_variants_of_several_pictures_in_one_render(self) -> None:
        """An upload's outputs may pick several pages: each is drawn, the
        info is the first page's."""
        data = make.pdf(PAGES)
        names = ["w50-page3.png", "w50.png", "w50-page2.png"]
        info, outputs = renderer.render_many(
            data, [RULES.canonical(n) for n in names], LIMITS, with_placeholders=True
        )
        self.assertEqual((info.width, info.height), (200, 100))
        colours = [rgb(Image.open(io.BytesIO(o)), (5, 5)) for o in outputs]
        for found, wanted in zip(
            colours, ((0, 200, 0), (255, 0, 0), (0, 0, 255)), strict=True
        ):
            self.assertTrue(near(found, wanted), colours)


class RasteriserFailureTests(SynchronousTestCase):
    def test_a_killed_rasteriser_fails_its_job_alone(self) -> None:
        """A rasteriser that dies in a job (here, killed from outside) fails
        that job with a clear error; the next job gets a new one."""
        pool = documents.shared()
        render(make.svg(), "w10.png")
        for pid in pool.pids():
            os.kill(pid, 9)
        (image,) = render(make.svg(), "w20.png")
        self.assertEqual(image.size, (20, 10))

    def test_a_rasteriser_out_of_memory_fails_cleanly(self) -> None:
        limits = replace(
            LIMITS, documents=replace(LIMITS.documents, memory=400 * 1024**2)
        )
        pool = documents.shared()
        ran = []
        for _ in range(2):  # the second: remembered
            jobs = pool.jobs
            with self.assertRaises((UnsupportedImage, ImageTooLarge)) as caught:
                renderer.render_many(
                    make.svg("6000", "6000", "0 0 100 50"),
                    [RULES.canonical("full_size.png")],
                    replace(limits, side=10_000),
                )
            self.assertIn("memory", str(caught.exception))
            ran.append(pool.jobs - jobs)
        self.assertGreater(ran[0], 0)
        self.assertEqual(ran[1], 0)
        (image,) = render(make.svg(), "w20.png")
        self.assertEqual(image.size, (20, 10))


def _filter_bomb(tag: str) -> bytes:
    """An SVG that costs seconds of CPU at 3000 pixels (``tag``: a file of
    its own, which no other test's failure is remembered for)."""
    blurs = "".join(
        f'<feGaussianBlur stdDeviation="{300 + i}" result="b{i}"/>' for i in range(30)
    )
    return make.svg(
        "3000", "3000", "0 0 3000 3000",
        f"<desc>{tag}</desc>"
        f'<filter id="f" x="0" y="0" width="1" height="1">{blurs}</filter>'
        '<rect width="3000" height="3000" fill="red" filter="url(#f)"/>',
    )  # fmt: skip


ONE_SECOND = replace(LIMITS, documents=replace(LIMITS.documents, seconds=1.0))


class FailureMemoryTests(SynchronousTestCase):
    """Failures caused by the file are remembered by the pool: a job that
    failed is answered without running again, and a file killed at the CPU
    limit `COSTLY_AFTER` times is not drawn again (docs/security.md)."""

    def test_every_kind_of_failure_is_answered_again_without_a_job(self) -> None:
        pool = documents.shared()
        pages = replace(LIMITS, documents=replace(LIMITS.documents, pages=2))
        rows = [
            ("a page past the end", make.pdf(PAGES), "w100-page9.png", LIMITS,
             InvalidRequest, "page 9 was asked for, and the PDF has 3 pages"),
            ("pages past the limit", make.pdf(PAGES[:1] * 3), "w100.png", pages,
             ImageTooLarge, "the PDF has 3 pages, more than 2 (--max_pdf_pages)"),
            ("a corrupt PDF", b"%PDF-1.4\n" + b"\0" * 64, "w100.png", LIMITS,
             UnsupportedImage, "the PDF could not be read"),
            ("the CPU limit", _filter_bomb("every kind"), "full_size.png",
             ONE_SECOND, documents.RasteriserFailed,
             "drawing the SVG took more than 1 s of CPU (--rasterise_seconds)"),
        ]  # fmt: skip
        for name, data, variant, limits, kind, message in rows:
            failures = []
            jobs = []
            references = sys.getrefcount(data)
            for _ in range(2):
                jobs.append(pool.jobs)
                with self.assertRaises(kind, msg=name) as caught:
                    renderer.render_many(data, [RULES.canonical(variant)], limits)
                failures.append(str(caught.exception))
                del caught
            self.assertTrue(failures[0].startswith(message), (name, failures))
            self.assertEqual(failures[1], failures[0], name)
            self.assertGreater(jobs[1], jobs[0], name)  # the first ran
            self.assertEqual(pool.jobs, jobs[1], name)  # the second did not
            # What is remembered holds no reference to the file (a failure's
            # traceback would: 1024 of them, each an original of 50 MB).
            gc.collect()
            self.assertEqual(sys.getrefcount(data), references, name)

    def test_memory_run_out_where_jobs_ran_before_is_tried_anew(self) -> None:
        """What a process held from jobs before (another tenant's libraries,
        memory not given back) may count against the next: a job that runs
        out of memory there is run again in a new process, and only that
        failure is remembered. A file's own error is not tried again."""
        pool = documents.shared()
        limits = replace(
            LIMITS, side=10_000,
            documents=replace(LIMITS.documents, memory=400 * 1024**2),
        )  # fmt: skip
        huge = make.svg("6000", "6000", "0 0 100 50", "<desc>anew</desc>")
        broken = make.svg(body="<memory></svg>").replace(b"</svg></svg>", b"</svg>")
        for data, failure, runs in (
            (huge, (UnsupportedImage, ImageTooLarge), 3),  # probe, draw, again
            (broken, UnsupportedImage, 1),  # its probe
        ):
            render(make.svg("44", "44"), "w10.png", limits=limits)  # a job ran
            jobs = pool.jobs
            with self.assertRaises(failure):
                render(data, "full_size.png", limits=limits)
            self.assertEqual(pool.jobs - jobs, runs)
            with self.assertRaises(failure):
                render(data, "full_size.png", limits=limits)
            self.assertEqual(pool.jobs - jobs, runs)  # remembered
            for pid in pool.pids():  # no process that ran out is kept
                self.assertTrue(os.path.exists(f"/proc/{pid}/statm"), pid)

    def test_the_docs_say_how_many(self) -> None:
        with open(os.path.join(os.path.dirname(__file__), "..", "..", "docs",
                               "security.md")) as f:  # fmt: skip
            text = " ".join(f.read().split())
        self.assertIn(f"the last {documents.FAILURES_KEPT} failed jobs", text)
        self.assertIn(
            f"rasteriser's limits {documents.COSTLY_AFTER} times (killed at the CPU "
            "limit, out of memory, crashed), by any jobs",
            text,
        )
        self.assertIn(f"drawn up to {documents.COSTLY_AFTER}N times", text)
        self.assertIn(f"the last {documents.FAILURES_KEPT} failed jobs of each", text)
        self.assertIn(
            f"| {documents.COSTLY_AFTER} in each process "
            f"({documents.COSTLY_AFTER}N with `--workers N`)",
            text,
        )

    def test_a_file_killed_again_and_again_is_not_drawn_again(self) -> None:
        pool = documents.shared()
        bomb = _filter_bomb("again and again")
        for index in range(documents.COSTLY_AFTER):  # another job each time
            with self.assertRaises(documents.RasteriserFailed):
                render(bomb, f"w{3000 - index}.png", limits=ONE_SECOND)
        jobs = pool.jobs
        with self.assertRaises(documents.RasteriserFailed) as caught:
            render(bomb, "w10.png", limits=ONE_SECOND)
        self.assertEqual(
            str(caught.exception),
            "drawing this SVG went past the rasteriser's limits "
            f"{documents.COSTLY_AFTER} times: it is not drawn again "
            "(--rasterise_seconds, --rasterise_memory)",
        )
        # An upload of it, in any namespace, is refused alike.
        documents._probes.clear()
        with self.assertRaises(documents.RasteriserFailed):
            renderer.probe(bomb, ONE_SECOND)
        self.assertEqual(pool.jobs, jobs)
        # Other files are drawn; under another CPU limit, this one too.
        (image,) = render(make.svg(), "w10.png", limits=ONE_SECOND)
        self.assertEqual(image.size, (10, 5))
        (image,) = render(bomb, "w10.png")
        self.assertEqual(image.size, (10, 10))


class HeldMemoryTests(SynchronousTestCase):
    def test_a_large_document_is_not_kept_between_jobs(self) -> None:
        """The document a probe opened is kept for the jobs after it, but
        not past `KEEP_RESIDENT`: a PDF whose page tree takes 300 MB would
        have held it while idle (and counted against another tenant's job)."""
        from imageserver.imaging import rasteriser

        pool = documents.shared()
        documents.probe(make.junk_pdf(3_000_000), "PDF", LIMITS.documents, 1, 10**8)
        render(make.svg("41", "41"), "w10.png")  # the release came before
        for pid in pool.pids():
            with open(f"/proc/{pid}/statm") as statm:
                resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            self.assertLess(resident, rasteriser.KEEP_RESIDENT)

    def test_a_library_that_fails_to_close_fails_no_job(self) -> None:
        """What was kept is let go even where its library raises on close
        (a failure that cannot be caused from a file: injected)."""
        from imageserver.imaging import rasteriser

        class Failing:
            def close(self) -> None:
                raise RuntimeError("injected")

        self.patch(rasteriser, "_pdf_opened", {"a": Failing()})
        self.patch(rasteriser, "_opened", {"b": (Failing(), None)})
        rasteriser._forget()
        self.assertEqual((rasteriser._pdf_opened, rasteriser._opened), ({}, {}))


class RedTeamFindingTests(SynchronousTestCase):
    """What the attacks on drawn originals found, each fixed."""

    def test_a_time_past_the_end_is_a_400(self) -> None:
        with self.assertRaises(InvalidRequest) as caught:
            render(_SIXTY, "w80-t7s.png")
        self.assertEqual(
            str(caught.exception),
            "t7s is past the end of the video, which is 6 s long: ask for a time "
            "within it, or tNpct",
        )
        (last,) = render(_SIXTY, "w80-t100pct.png")
        self.assertTrue(near(rgb(last, (60, 45)), make.frame_colour(59)))

    def test_a_container_that_counts_no_frames(self) -> None:
        """WebM counts no frames: they are its length times its rate."""
        info = renderer.probe(make.video("vp9.webm", frames=30, rate=10), LIMITS)
        self.assertEqual(info.frames, 30)

    def test_a_renderer_panic_is_a_415_with_no_trace(self) -> None:
        data = make.svg(
            "7000", "7000", "0 0 7000 7000",
            '<path stroke="red" stroke-width="1e30" d="M0 0 L1e38 1e38 L0 1e38"/>',
        )  # fmt: skip
        # resvg (tiny-skia) panics on it: the job's 415, in plain words.
        with self.assertRaises(UnsupportedImage) as caught:
            render(data, "w500.png")
        self.assertEqual(str(caught.exception), "the SVG could not be drawn")
        (image,) = render(make.svg(), "w10.png")  # the rasteriser goes on
        self.assertEqual(image.size, (10, 5))

    def test_a_small_crop_of_a_vast_drawing_is_refused(self) -> None:
        data = (b'<svg xmlns="http://www.w3.org/2000/svg" width="50000000" height="1">'
                b'<rect width="50000000" height="1" fill="red"/></svg>')  # fmt: skip
        with self.assertRaises(ImageTooLarge) as caught:
            render(data, "x1000.jpg")
        self.assertIn("would draw 50000000x1 of it", str(caught.exception))
        (fit,) = render(data, "x1000-fit.png")
        self.assertEqual(fit.size, (1000, 1))

    def test_sizes_in_em_and_a_prefixed_root(self) -> None:
        info = renderer.probe(make.svg("10em", "5em"), LIMITS)
        self.assertEqual((info.width, info.height), (160, 80))
        prefixed = (b'<svg:svg xmlns:svg="http://www.w3.org/2000/svg" width="20" '
                    b'height="10"><svg:rect width="20" height="10" fill="red"/>'
                    b"</svg:svg>")  # fmt: skip
        (image,) = render(prefixed, "full_size.png")
        self.assertEqual(rgb(image, (5, 5)), (255, 0, 0))
        long_comment = b"<!--" + b"x" * 20_000 + b"-->" + make.svg()
        self.assertEqual(renderer.probe(long_comment, LIMITS).width, 100)

    def test_a_stuck_rasteriser_is_a_503_not_the_files_fault(self) -> None:
        """A job still running at its wall-clock deadline (here its process
        stopped from outside before it is sent) waited for a CPU: the
        server is busy."""
        from imageserver.errors import Overloaded

        limits = replace(LIMITS, documents=replace(LIMITS.documents, seconds=0.5))
        data = make.svg("30", "30")
        render(data, "w10.png", limits=limits)  # probed: the next job draws
        for pid in documents.shared().pids():
            os.kill(pid, signal.SIGSTOP)
        with self.assertRaises(Overloaded) as caught:
            render(data, "w20.png", limits=limits)
        self.assertIn("the server is busy", str(caught.exception))
        (image,) = render(data, "w12.png", limits=limits)  # a new process
        self.assertEqual(image.size, (12, 12))
        # Not the file's failure: not remembered, the same job draws.
        (image,) = render(data, "w20.png", limits=limits)
        self.assertEqual(image.size, (20, 20))

    def test_a_vp9_poster_passes_over_a_dark_start(self) -> None:
        """FFmpeg's VP9 decoder decodes every frame whatever skip_frame
        says: the poster's key frames are reached by seeks."""
        data = make.video("vp9.webm", frames=60, rate=10, key_every=20, dark=15)
        (poster,) = render(data, "w160.jpg")
        self.assertTrue(near(rgb(poster, (120, 90)), make.frame_colour(20)))


class RoundTwoTests(SynchronousTestCase):
    """What the second round of attacks found, each fixed."""

    def test_no_css_function_fetches(self) -> None:
        data = make.svg(
            body='<style>svg{background-image:image-set("http://127.0.0.1:9/x" 1x)}'
            "rect{fill:rgb(1,2,3)}</style>"
            '<rect width="1" height="1" style="background:-webkit-image-set(url('
            'http://127.0.0.1:9/y) 1x);fill:url(#g)" src="x" tabindex="1" '
            'formaction="javascript:1"/>'
        )
        cleaned = svg.clean(data, svg.SvgLimits()).data
        self.assertNotIn(b"image-set", cleaned)
        self.assertNotIn(b"127.0.0.1", cleaned)
        for word in (b"src=", b"tabindex", b"formaction"):
            self.assertNotIn(word, cleaned)
        self.assertIn(b"rgb(1,2,3)", cleaned)
        self.assertIn(b"url(#g)", cleaned)

    def test_a_tall_thin_svg_is_drawn_at_the_output_size(self) -> None:
        """Drawn 1 pixel wide by resvg's own size rules, it was 10,000,000
        high for an h100 (8.7 s)."""
        data = (b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="10000000">'
                b'<rect width="1" height="10000000" fill="red"/></svg>')  # fmt: skip
        cost = hostile.cost(data, "h100.png", False)
        self.assertEqual(cost.outcome, "ok")
        self.assertLess(cost.cpu_s, 0.5, cost)

    def test_sizes_past_a_number_are_no_500(self) -> None:
        """A size past a float is no size (the browsers' 300 wide); past a
        billion a side, refused."""
        info = renderer.probe(make.svg("1e400", "10", "0 0 1e400 1e400"), LIMITS)
        self.assertEqual((info.width, info.height), (300, 10))
        info = renderer.probe(make.svg("1e308em", "1", "0 0 100 50"), LIMITS)
        self.assertEqual((info.width, info.height), (2, 1))  # the viewBox's ratio
        with self.assertRaises(ImageTooLarge):
            renderer.probe(make.svg("1e12", "1"), LIMITS)

    def test_svg_variants_take_no_page_nor_time(self) -> None:
        rules = replace(RULES, extensions=RULES.extensions | {"svg"})
        for name in ("w100-page2.svg", "w100-t5s.svg"):
            variant = rules.canonical(name)
            assert variant is not None
            with self.assertRaises(InvalidRequest):
                renderer.render(make.svg(), variant, LIMITS)

    def test_an_element_of_many_attributes_is_refused(self) -> None:
        attributes = " ".join(f'a{i}="1"' for i in range(501))
        with self.assertRaises(ImageTooLarge):
            svg.clean(make.svg(body=f"<rect {attributes}/>"), svg.SvgLimits())
