"""A real browser: headless Chromium loads a page of .auto, @2x and preset
images, and of a watermarked, a round and a text variant.

Needs Debian's ``chromium`` (``.ci/install-browser`` installs it). Without it
the test is skipped, unless ``REQUIRE_BROWSER_TEST`` is set (CI sets
it), when that is a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile

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


class ChromiumTests(TwistdCase):
    timeout = 120

    async def test_chromium_loads_auto_dense_and_preset_images(self) -> None:
        if CHROMIUM is None:
            if os.environ.get("REQUIRE_BROWSER_TEST"):
                self.fail("chromium is not installed (run .ci/install-browser)")
            raise SkipTest("chromium is not installed (run .ci/install-browser)")
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
        profile = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, profile, True)
        out, err, code = await getProcessOutputAndValue(
            CHROMIUM,
            [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--force-device-scale-factor=2",
                "--virtual-time-budget=20000", "--dump-dom",
                f"{pages_url}/page.html",
            ],
            env={**os.environ},
        )  # fmt: skip
        found = re.search(rb"<pre id=\"result\">(.*?)</pre>", out, re.DOTALL)
        self.assertIsNotNone(found, (code, err[-2000:]))
        assert found is not None
        images = json.loads(found.group(1).decode().replace("&quot;", '"'))
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
