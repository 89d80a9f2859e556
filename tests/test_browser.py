"""A real browser: headless Chromium loads a page of .auto, @2x and preset
images, and of a watermarked, a round and a text variant.

Needs Debian's ``chromium`` (``.ci/install-browser`` installs it). Without it
the test is skipped, unless ``REQUIRE_BROWSER_TEST`` is set (CI sets
it), when that is a failure.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from typing import Any

from PIL import Image
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest
from twisted.web.resource import Resource
from twisted.web.static import Data

from tests.support import encode, noise, serve
from tests.test_twistd import TwistdCase

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PAGE = """<!doctype html>
<html><body>
<img id="auto" src="{folder}/w100.auto">
<img id="dense" srcset="{folder}/w50.auto 1x, {folder}/w50@2x.auto 2x">
<picture><source type="image/avif" srcset="{folder}/x60-smart.avif">
  <img id="picture" src="{folder}/x60-smart.jpg"></picture>
<img id="preset" src="{folder}/thumb.auto">
<img id="watermark" src="{folder}/w100-wmlogo_tile4_60_20.png">
<img id="round" src="{folder}/x60-round12.auto">
<img id="text" src="{folder}/w100-textknauyri_c_30.auto">
<script>
window.addEventListener("load", () => {{
  const found = {{}};
  for (const image of document.images) {{
    found[image.id] = {{
      width: image.naturalWidth, height: image.naturalHeight,
      src: image.currentSrc, complete: image.complete,
    }};
  }}
  document.body.innerHTML = "<pre id=result>" + JSON.stringify(found) + "</pre>";
}});
</script>
</body></html>
"""


#: A page of another origin that reads an info.json (a preflighted fetch,
#: with If-None-Match) and a variant's pixels through a canvas: both need the
#: server's CORS answer.
CORS_PAGE = """<!doctype html>
<html><body><script>
const result = {{}};
const done = () => {{
  document.body.innerHTML = "<pre id=result>" + JSON.stringify(result) + "</pre>";
}};
async function run() {{
  try {{
    const info = await fetch("{folder}/info.json");
    result.info = (await info.json()).width;
    const again = await fetch("{folder}/info.json",
      {{headers: {{"If-None-Match": info.headers.get("ETag")}}}});
    result.again = again.status;
  }} catch (e) {{
    result.info = "refused";
  }}
  const image = new Image();
  image.crossOrigin = "anonymous";
  image.onload = () => {{
    const canvas = document.createElement("canvas");
    canvas.width = image.width; canvas.height = image.height;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    try {{
      result.pixel = Array.from(context.getImageData(5, 5, 1, 1).data);
    }} catch (e) {{
      result.pixel = "tainted";
    }}
    done();
  }};
  image.onerror = () => {{ result.pixel = "refused"; done(); }};
  image.src = "{folder}/w40.png";
}}
run();
</script></body></html>
"""


#: A page that opts into client hints and delegates them to the image server
#: (its own origin is another): an image that the hints size.
HINTS_PAGE = """<!doctype html>
<html><body>
<img id="dpr" src="{folder}/w40-ch.png">
<img id="width" src="{folder}/w40-ch.png?sized" sizes="120px">
<script>
window.addEventListener("load", () => {{
  const found = {{}};
  for (const image of document.images) {{
    found[image.id] = [image.naturalWidth, image.naturalHeight];
  }}
  document.body.innerHTML = "<pre id=result>" + JSON.stringify(found) + "</pre>";
}});
</script>
</body></html>
"""


def _need_chromium(case: TwistdCase) -> str:
    if CHROMIUM is None:
        if os.environ.get("REQUIRE_BROWSER_TEST"):
            case.fail("chromium is not installed (run .ci/install-browser)")
        raise SkipTest("chromium is not installed (run .ci/install-browser)")
    return CHROMIUM


async def _dump_dom(case: TwistdCase, url: str, *flags: str) -> dict[str, Any]:
    """What the page at ``url`` leaves in its ``<pre id=result>``, as JSON,
    once headless Chromium has run it."""
    profile = tempfile.mkdtemp()
    case.addCleanup(shutil.rmtree, profile, True)
    out, err, code = await getProcessOutputAndValue(
        _need_chromium(case),
        [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", *flags,
            "--virtual-time-budget=20000", "--dump-dom", url,
        ],
        env={**os.environ},
    )  # fmt: skip
    found = re.search(rb"<pre id=\"result\">(.*?)</pre>", out, re.DOTALL)
    case.assertIsNotNone(found, (code, err[-2000:]))
    assert found is not None
    result: dict[str, Any] = json.loads(found.group(1).decode().replace("&quot;", '"'))
    return result


class _WithHeaders(Resource):
    """``resource`` answered with ``headers`` too."""

    isLeaf = True

    def __init__(self, resource: Data, headers: dict[bytes, bytes]) -> None:
        super().__init__()
        self._resource, self._headers = resource, headers

    def render(self, request: Any) -> bytes:
        for name, value in self._headers.items():
            request.setHeader(name, value)
        return self._resource.render(request)  # type: ignore[no-any-return]


class ChromiumTests(TwistdCase):
    timeout = 120

    async def test_only_allowed_origins_read_info_and_pixels(self) -> None:
        """--cors_origins: a page of an allowed origin reads an info.json and
        a variant's pixels; a page of another origin reads neither."""
        _need_chromium(self)
        allowed, other = Resource(), Resource()
        allowed_url, other_url = serve(self, allowed), serve(self, other)
        await self.start_server("--cors_origins", allowed_url)
        colour = (10, 200, 30)
        _, body = await self.call(
            "POST", "/p", data=encode(Image.new("RGB", (80, 60), colour))
        )
        digest = json.loads(body)["hash"]
        folder = (
            f"http://127.0.0.1:{self.port}/p/{digest[:3]}/{digest[3:6]}/"
            f"{digest[6:9]}/{digest[9:]}"
        )
        page = CORS_PAGE.format(folder=folder).encode()
        for pages in (allowed, other):
            pages.putChild(b"page.html", Data(page, "text/html"))
        read = await _dump_dom(self, f"{allowed_url}/page.html")
        self.assertEqual(read["info"], 80)
        self.assertEqual(read["again"], 304)
        self.assertEqual(len(read["pixel"]), 4)
        for got, wanted in zip(read["pixel"], (*colour, 255), strict=True):
            self.assertLessEqual(abs(got - wanted), 3, read)
        refused = await _dump_dom(self, f"{other_url}/page.html")
        self.assertEqual(refused, {"info": "refused", "pixel": "refused"})

    async def test_client_hints_choose_density_and_width(self) -> None:
        """--client_hints: Chromium at a device pixel ratio of 2 sends
        Sec-CH-DPR (and Sec-CH-Width for an image with sizes) to the image
        server its page delegated them to; the -ch name answers 2x the
        pixels, and the sized one the layout's width in device pixels."""
        _need_chromium(self)
        pages = Resource()
        pages_url = serve(self, pages)
        await self.start_server("--client_hints")
        _, body = await self.call("POST", "/p", data=encode(noise((640, 480))))
        digest = json.loads(body)["hash"]
        server = f"http://127.0.0.1:{self.port}"
        folder = f"{server}/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"
        page = Data(HINTS_PAGE.format(folder=folder).encode(), "text/html")
        delegate = f'(self "{server}")'
        headers = {
            b"Accept-CH": b"Sec-CH-DPR, Sec-CH-Width",
            b"Permissions-Policy": (f"ch-dpr={delegate}, ch-width={delegate}".encode()),
        }
        pages.putChild(b"page.html", _WithHeaders(page, headers))
        sizes = await _dump_dom(
            self, f"{pages_url}/page.html", "--force-device-scale-factor=2"
        )
        # 40 CSS pixels at 2x: 80 pixels; 120 CSS pixels at 2x: 240.
        self.assertEqual(sizes, {"dpr": [80, 60], "width": [250, 188]})

    async def test_chromium_loads_auto_dense_and_preset_images(self) -> None:
        _need_chromium(self)
        # Issue 26's overlays: a watermark (its original put in the store
        # before the start, which checks it), a mask and a text.
        root = os.path.abspath(self.mktemp())
        logo = encode(Image.new("RGBA", (40, 20), (255, 0, 0, 200)), "PNG")
        h = hashlib.md5(logo).hexdigest()
        mark = f"p/{h[:3]}/{h[3:6]}/{h[6:9]}/{h[9:]}"
        os.makedirs(os.path.join(root, mark))
        with open(os.path.join(root, mark, "original"), "wb") as f:
            f.write(logo)
        await self.start_server(
            "--presets", "thumb=x40-smart", "--local_base_path", root,
            "--watermarks", f"logo={mark}",
        )  # fmt: skip
        _, body = await self.call("POST", "/p", data=encode(noise((640, 480))))
        digest = json.loads(body)["hash"]
        folder = (
            f"http://127.0.0.1:{self.port}/p/{digest[:3]}/{digest[3:6]}/"
            f"{digest[6:9]}/{digest[9:]}"
        )
        pages = Resource()
        pages.putChild(
            b"page.html", Data(PAGE.format(folder=folder).encode(), "text/html")
        )
        pages_url = serve(self, pages)
        images = await _dump_dom(
            self, f"{pages_url}/page.html", "--force-device-scale-factor=2"
        )
        self.assertEqual(
            {name: (i["width"], i["height"]) for name, i in images.items()},
            {
                "auto": (100, 75),
                "dense": (50, 37),  # 100x75 pixels at 2x: 50x37.5 CSS pixels
                "picture": (60, 60),
                "preset": (40, 40),
                "watermark": (100, 75),
                "round": (60, 60),
                "text": (100, 75),
            },
        )
        self.assertTrue(images["dense"]["src"].endswith("/w50@2x.auto"))
        self.assertTrue(images["picture"]["src"].endswith("/x60-smart.avif"))
        # What Chromium was sent: AVIF for every .auto, no JPEG at all.
        _, metrics = await self.call("GET", "/metrics", port=self.admin_port)
        counts = {
            (fmt, outcome): float(value)
            for fmt, outcome, value in re.findall(
                r'imageserver_variants_total\{format="(\w+)",outcome="(\w+)"\} (\S+)',
                metrics.decode(),
            )
        }
        self.assertEqual(counts.get(("jpg", "generated"), 0), 0)
        self.assertEqual(counts.get(("avif", "generated"), 0), 6)
        self.assertEqual(counts.get(("png", "generated"), 0), 1)


#: A page of a video's poster and preview, the video itself (its original,
#: which Chromium reads in ranges), a PDF's cover and an SVG drawn large.
DRAWN_PAGE = """<!doctype html>
<html><body>
<img id="poster" src="{video}/w160.jpg">
<img id="preview" src="{video}/w160.webp">
<img id="frame" src="{video}/w80-t1s.auto">
<img id="cover" src="{pdf}/w120.png">
<img id="page" src="{pdf}/w60-page2.jpg">
<img id="logo" src="{svg}/w300.auto">
<video id="video" src="{video}/original" preload="metadata" muted></video>
<script>
const video = document.getElementById("video");
const metadata = new Promise(done => {{
  video.addEventListener("loadedmetadata", done);
  video.addEventListener("error", done);
}});
window.addEventListener("load", async () => {{
  await metadata;
  const found = {{}};
  for (const image of document.images) {{
    found[image.id] = [image.naturalWidth, image.naturalHeight];
  }}
  found.video = [video.videoWidth, video.videoHeight,
                 Math.round(video.duration * 10) / 10];
  document.body.innerHTML = "<pre id=result>" + JSON.stringify(found) + "</pre>";
}});
</script>
</body></html>
"""


class DrawnOriginalsInChromiumTests(TwistdCase):
    timeout = 120

    async def test_chromium_shows_posters_previews_and_pages(self) -> None:
        from tests import documents as make

        _need_chromium(self)
        await self.start_server()
        folders = {}
        for name, data in (
            ("video", make.video("vp9.webm", (320, 240), frames=30, rate=10)),
            ("pdf", make.pdf([(200, 100, (255, 0, 0)), (100, 300, (0, 0, 255))])),
            ("svg", make.svg()),
        ):
            _, body = await self.call("POST", "/p", data=data)
            digest = json.loads(body)["hash"]
            folders[name] = (
                f"http://127.0.0.1:{self.port}/p/{digest[:3]}/{digest[3:6]}/"
                f"{digest[6:9]}/{digest[9:]}"
            )
        pages = Resource()
        pages.putChild(
            b"page.html", Data(DRAWN_PAGE.format(**folders).encode(), "text/html")
        )
        found = await _dump_dom(self, f"{serve(self, pages)}/page.html")
        self.assertEqual(
            found,
            {
                "poster": [160, 120],
                "preview": [160, 120],
                "frame": [80, 60],
                "cover": [120, 60],
                "page": [60, 180],
                "logo": [300, 150],
                "video": [320, 240, 3.0],
            },
        )
        # The preview is animated: ten frames in what Chromium was sent.
        path = folders["video"].split(str(self.port), 1)[1]
        _, preview = await self.call("GET", path + "/w160.webp")
        frames = Image.open(io.BytesIO(preview)).n_frames  # type: ignore[attr-defined]
        self.assertEqual(frames, 10)
