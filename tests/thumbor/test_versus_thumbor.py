"""The real thumbor is the oracle: thumbor 7.8 (from PyPI, in a virtual
environment of its own) and a real `twistd -n imageserver --thumbor` serve
the same files; a corpus of thumbor URLs over the grammar and the filters
(tests/thumbor/corpus.py, drawn from a seed, and a hand-made list of every
part) must get the same status, format and size from both, and pixels
within the tolerance docs/thumbor.md states.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

from libthumbor import CryptoURL
from PIL import Image, ImageChops, ImageStat
from twisted.trial.unittest import SynchronousTestCase

from tests import CHECKOUT_DIR
from tests.s3server import free_port
from tests.thumbor.corpus import SOURCES, corpus, write_sources

THUMBOR = "thumbor==7.8.0"
VENV = os.path.join(
    os.path.expanduser("~"), ".cache", "imageserver-tests", "thumbor-7.8.0"
)
KEY = "oracle-key"
#: docs/thumbor.md: the least PSNR (dB, over RGB flattened on grey) of any
#: answer outside the differences it names, and the least median.
LEAST_PSNR = 20.0
LEAST_MEDIAN_PSNR = 35.0
#: Every part of the grammar and every filter at least once.
HAND_MADE = [
    "/unsafe/landscape.jpg",
    "/unsafe/200x200/landscape.jpg",
    "/unsafe/200x100/landscape.jpg",
    "/unsafe/6x0/landscape.jpg",
    "/unsafe/10x0/landscape.jpg",
    "/unsafe/800x0/landscape.jpg",
    "/unsafe/origx100/landscape.jpg",
    "/unsafe/-200x-100/landscape.jpg",
    "/unsafe/100x100/left/landscape.jpg",
    "/unsafe/100x100/right/bottom/landscape.jpg",
    "/unsafe/100x100/top/filters:focal(10x10:20x20)/landscape.jpg",
    "/unsafe/10x10:9000x9000/landscape.jpg",
    "/unsafe/300x0:100x100/landscape.jpg",
    "/unsafe/50x40:250x240/fit-in/100x100/landscape.jpg",
    "/unsafe/fit-in/200x200/landscape.jpg",
    "/unsafe/fit-in/800x800/landscape.jpg",
    "/unsafe/fit-in/0x100/landscape.jpg",
    "/unsafe/fit-in/6x6/landscape.jpg",
    "/unsafe/full-fit-in/200x200/landscape.jpg",
    "/unsafe/adaptive-fit-in/200x300/landscape.jpg",
    "/unsafe/adaptive-full-fit-in/200x300/landscape.jpg",
    "/unsafe/fit-in/-100x-100/landscape.jpg",
    "/unsafe/trim/200x100/landscape.jpg",
    "/unsafe/trim:bottom-right:10/200x100/landscape.jpg",
    "/unsafe/200x100/smart/portrait.jpg",
    "/unsafe/meta/200x100/landscape.jpg",
    "/unsafe/meta/fit-in/200x200/portrait.jpg",
    "/unsafe/meta/fit-in/400x400/filters:fill(white)/landscape.jpg",
    "/unsafe/meta/-0x-0/odd.jpg",
    "/unsafe/meta/100x0:400x300/100x10/landscape.jpg",
    "/unsafe/meta/-100x-50/filters:rotate(90)/landscape.jpg",
    "/unsafe/fit-in/100x100/filters:fill(ffffff)/landscape.jpg",
    "/unsafe/fit-in/100x100/filters:fill(fff)/landscape.jpg",
    "/unsafe/fit-in/100x100/filters:fill(face)/landscape.jpg",
    "/unsafe/200x100/filters:background_color(abcdef)/alpha.png",
    "/unsafe/adaptive-fit-in/150x100/filters:fill(red)/square.png",
    "/unsafe/100x10/filters:focal(20x20:10x10)/landscape.jpg",
    "/unsafe/10x100/filters:focal(390x20:370x10)/landscape.jpg",
    "/unsafe/filters:proportion(1e-1)/landscape.jpg",
    "/unsafe/filters:proportion(.5)/landscape.jpg",
    "/unsafe/fit-in/100x100/filters:fill(red)/square.png",
    "/unsafe/fit-in/100x50/filters:fill(ff00ff)/square.png",
    "/unsafe/fit-in/400x400/filters:upscale()/odd.jpg",
    "/unsafe/800x100/filters:no_upscale()/landscape.jpg",
    "/unsafe/filters:proportion(0.5)/landscape.jpg",
    "/unsafe/200x100/filters:rotate(90)/landscape.jpg",
    "/unsafe/200x100/filters:rotate(270):quality(50)/landscape.jpg",
    "/unsafe/200x100/filters:format(webp)/landscape.jpg",
    "/unsafe/200x100/filters:format(png)/landscape.jpg",
    "/unsafe/200x100/filters:format(avif)/landscape.jpg",
    "/unsafe/200x100/filters:brightness(30)/landscape.jpg",
    "/unsafe/200x100/filters:contrast(-40)/landscape.jpg",
    "/unsafe/200x100/filters:contrast(40):brightness(-30)/landscape.jpg",
    "/unsafe/200x100/filters:saturation(1.5)/landscape.jpg",
    "/unsafe/200x100/filters:grayscale()/landscape.jpg",
    "/unsafe/200x100/filters:blur(3)/landscape.jpg",
    "/unsafe/200x100/filters:sharpen(2,1,true)/landscape.jpg",
    "/unsafe/200x100/filters:round_corner(20,255,255,255)/landscape.jpg",
    "/unsafe/200x100/filters:background_color(red)/alpha.png",
    "/unsafe/200x100/filters:max_bytes(3000)/landscape.jpg",
    "/unsafe/200x100/filters:strip_exif():strip_icc()/landscape.jpg",
    "/unsafe/200x100/filters:noise(10):equalize():rgb(10,0,0)/landscape.jpg",
    "/unsafe/200x100/filters:stretch()/landscape.jpg",
    "/unsafe/200x100/filters:unknown(1):quality(abc)/landscape.jpg",
    "/unsafe/200x100/filters:()/landscape.jpg",
    "/unsafe/100x0/sub/landscape.jpg",
    "/unsafe/100x0/sub%2Flandscape.jpg",  # an encoded slash, decoded by both
    "/unsafe/100x0/land%73cape.jpg",
    # Not thumbor URLs, or of nothing: the same status.
    "/unsafe/200x100/missing.jpg",
    "/unsafe/fit-in/meta/landscape.jpg",
    "/unsafe/200x100/200x100/landscape.jpg",
    "/unsafe/filters:grayscale/landscape.jpg",
    "/Landscape/x.jpg",
    "/0123456789012345678901234567=/200x100/landscape.jpg",
    "/unsafe/origx0/landscape.jpg",
]
#: Documented differences (docs/thumbor.md), as (thumbor's status, ours):
#: where thumbor fails with a 500 (origx0, an orig size with fill() or
#: no_upscale(), a turn of a one-pixel picture), this server answers.
STATUS_DIFFERENCES = {(500, 400), (500, 200)}
#: This server's one order of the adjustments (docs/api.md).
ADJUSTMENTS = ("brightness(", "contrast(", "saturation(", "blur(", "sharpen(",
               "grayscale(")  # fmt: skip


def thumbor_command() -> str:
    """thumbor's command, installed from PyPI the first time (kept in the
    user's cache: the same for every checkout and run)."""
    command = os.path.join(VENV, "bin", "thumbor")
    if not os.path.exists(command):
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run(
            [
                os.path.join(VENV, "bin", "python"),
                "-m",
                "pip",
                "install",
                "-q",
                THUMBOR,
            ],
            check=True,
            timeout=900,
        )
    return command


def get(port: int, path: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=120) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def wait_until_up(port: int, process: subprocess.Popen[bytes], log: str) -> None:
    for _ in range(300):
        try:
            get(port, "/healthcheck")
            return
        except OSError:
            if process.poll() is not None:
                with open(log) as f:
                    said = f.read()
                raise AssertionError(f"a server ended at start: {said}") from None
            time.sleep(0.1)
    raise AssertionError(f"port {port} never answered")


def flattened(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    grey = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
    return Image.alpha_composite(grey, rgba).convert("RGB")


def psnr(a: Image.Image, b: Image.Image) -> float:
    rms = ImageStat.Stat(ImageChops.difference(flattened(a), flattened(b))).rms
    error = math.sqrt(sum(band * band for band in rms) / 3)
    return 99.0 if error == 0 else 20 * math.log10(255 / error)


def pixels_differ_on_purpose(url: str, size: tuple[int, int]) -> str | None:
    """Why docs/thumbor.md says this answer's pixels differ, or None."""
    image = url.rsplit("/", 1)[1]
    alpha = SOURCES.get(image, (0, 0, "", False))[3]
    jpeg = "format(jpeg)" in url or "format(JPG)" in url or "format(jpg)" in url
    if alpha and (jpeg or "round_corner" in url or "fill(" in url):
        return (
            "a transparent source is flattened here where thumbor keeps or blackens it"
        )
    if "/smart/" in url:
        return "smart crops by the picture here, in the centre in thumbor"
    if "/trim" in url:
        return "trim's tolerance"
    filters = url.split("filters:")[1] if "filters:" in url else ""
    if "fill(" in filters and any(
        f in filters for f in ("proportion", "upscale", "rotate")
    ):
        return "a fill's picture is fitted to its canvas here, cropped by thumbor"
    given = [f for f in ADJUSTMENTS if f in filters]
    if given != sorted(given, key=filters.find):
        return "the adjustments in this server's order: clipped at another step"
    if "round_corner(" in filters:
        radius = int(filters.split("round_corner(")[1].split(",")[0].split("|")[0])
        if 2 * radius > min(size):
            return "a corner past half a side: elliptical in thumbor, round here"
    if any(f in filters for f in ("noise(", "equalize(", "rgb(", "stretch(")):
        return "a filter ignored here"
    return None


class VersusThumborTests(SynchronousTestCase):
    maxDiff = None

    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder, True)
        images = os.path.join(self.folder, "images")
        os.makedirs(images)
        write_sources(images)
        os.makedirs(os.path.join(images, "sub"))
        shutil.copy(os.path.join(images, "landscape.jpg"), os.path.join(images, "sub"))
        conf = os.path.join(self.folder, "thumbor.conf")
        with open(conf, "w") as f:
            f.write(
                "LOADER = 'thumbor.loaders.file_loader'\n"
                f"FILE_LOADER_ROOT_PATH = {images!r}\n"
                "ALLOW_UNSAFE_URL = True\n"
                f"SECURITY_KEY = {KEY!r}\n"
                "STORAGE = 'thumbor.storages.no_storage'\n"
            )
        self.thumbor_port, self.port, admin = free_port(), free_port(), free_port()
        self.start(
            "thumbor",
            [thumbor_command(), "-i", "127.0.0.1", "-p", str(self.thumbor_port),
             "-c", conf, "-l", "error"],
            self.thumbor_port,
        )  # fmt: skip
        self.start(
            "imageserver",
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "imageserver", "--port", str(self.port),
             "--admin-port", str(admin),
             "--local_base_path", os.path.join(self.folder, "store"),
             "--origin", f"files=file://{images}/", "--thumbor",
             "--thumbor_loader", "files", "--thumbor_allow_unsafe",
             "--thumbor_security_key", KEY, "--maximum_width", "8000"],
            self.port,
        )  # fmt: skip

    def start(self, name: str, command: list[str], port: int) -> None:
        log = os.path.join(self.folder, f"{name}.log")
        env = {**os.environ, "PYTHONPATH": CHECKOUT_DIR}
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        self.addCleanup(process.wait, 30)
        self.addCleanup(process.terminate)
        wait_until_up(port, process, log)

    def both(self, path: str) -> dict[str, Any]:
        theirs, ours = get(self.thumbor_port, path), get(self.port, path)
        return {"url": path, "theirs": theirs, "ours": ours}

    def test_the_corpus_is_answered_as_thumbor_answers_it(self) -> None:
        urls = HAND_MADE + corpus(seed=26, count=300)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            rows = list(pool.map(self.both, urls))
        wrong, scores = [], []
        for row in rows:
            status, body, _ = row["theirs"]
            our_status, our_body, _ = row["ours"]
            url = row["url"]
            if status != our_status:
                if (status, our_status) not in STATUS_DIFFERENCES and not (
                    our_status == 400 and b"--maximum_width" in our_body
                ):
                    wrong.append(f"{url}: status {our_status}, thumbor {status}")
                continue
            if status != 200:
                continue
            if "/meta/" in url:
                theirs_meta = json.loads(body)["thumbor"]
                ours_meta = json.loads(our_body)["thumbor"]
                for part in ("target", "operations"):
                    if theirs_meta[part] != ours_meta[part] and "/smart/" not in url:
                        wrong.append(
                            f"{url}: meta {part} {ours_meta[part]}, "
                            f"thumbor {theirs_meta[part]}"
                        )
                continue
            theirs, mine = (
                Image.open(io.BytesIO(body)),
                Image.open(io.BytesIO(our_body)),
            )
            if (mine.format, mine.size) != (theirs.format, theirs.size):
                wrong.append(
                    f"{url}: {mine.format} {mine.size}, thumbor "
                    f"{theirs.format} {theirs.size}"
                )
                continue
            if pixels_differ_on_purpose(url, mine.size) is None and min(mine.size) >= 8:
                score = psnr(theirs, mine)
                scores.append(score)
                if score < LEAST_PSNR:
                    wrong.append(f"{url}: {score:.1f} dB from thumbor's pixels")
        self.assertEqual(wrong, [], f"{len(wrong)} of {len(rows)} answers differ")
        self.assertGreater(len(scores), len(rows) // 2)
        self.assertGreaterEqual(statistics.median(scores), LEAST_MEDIAN_PSNR)

    def test_libthumbors_urls_verify_and_tampered_ones_do_not(self) -> None:
        crypto = CryptoURL(key=KEY)
        signed = crypto.generate(
            width=120, height=80, smart=False, filters=["quality(70)"],
            image_url="landscape.jpg",
        )  # fmt: skip
        wrong_key = CryptoURL(key="other").generate(
            width=120, image_url="landscape.jpg"
        )
        for path, status in [
            (signed, 200),
            (signed.replace("120x80", "121x80"), 400),
            (wrong_key, 400),
        ]:
            row = self.both(path)
            self.assertEqual((row["theirs"][0], row["ours"][0]), (status, status), path)
