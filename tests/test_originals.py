"""--serve_originals: what an original carries, and every way to its bytes."""

from __future__ import annotations

import io

from PIL import ExifTags, Image, ImageCms
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from imageserver import formats
from imageserver.naming import OUTPUT_FORMATS
from imageserver.options import ServerOptions
from tests.support import AppHarness, quadrants

#: Text that must never leave the server in a variant, nor with originals off.
PLACE = "secret-place-51.5N"
ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def photo_with_metadata() -> bytes:
    """A JPEG with what phones write: EXIF with GPS, XMP, an ICC profile and
    a comment, each carrying `PLACE` or a GPS position."""
    exif = Image.Exif()
    exif[ExifTags.Base.ImageDescription] = PLACE
    exif[ExifTags.IFD.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N",
        ExifTags.GPS.GPSLatitude: (51.0, 30.0, 0.0),
        ExifTags.GPS.GPSLongitudeRef: "W",
        ExifTags.GPS.GPSLongitude: (0.0, 7.0, 0.0),
        ExifTags.GPS.GPSAreaInformation: PLACE,
    }
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.'
        'org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:dc="http://purl'
        f'.org/dc/elements/1.1/" dc:title="{PLACE}"/></rdf:RDF></x:xmpmeta>'
    ).encode()
    out = io.BytesIO()
    quadrants((64, 48)).save(
        out, "JPEG", exif=exif, xmp=xmp, icc_profile=ICC, comment=PLACE.encode()
    )
    return out.getvalue()


PHOTO = photo_with_metadata()


def metadata_of(data: bytes) -> list[str]:
    """What of the photo's metadata ``data`` still carries."""
    found = [PLACE] if PLACE.encode() in data else []
    with Image.open(io.BytesIO(data)) as image:
        if image.getexif().get_ifd(ExifTags.IFD.GPSInfo):
            found.append("GPS")
        if image.info.get("icc_profile") == ICC:
            # (JPEG XL's decoder describes its colour space as a profile of
            # its own: that one is not the photo's.)
            found.append("icc_profile")
        for key in ("xmp", "XML:com.adobe.xmp", "comment", "exif"):
            if image.info.get(key):
                found.append(key)
    return found


class PhotoTests(SynchronousTestCase):
    def test_the_photo_carries_every_kind_of_metadata(self) -> None:
        """The fixture is what it claims (else the tests below prove nothing)."""
        self.assertEqual(
            sorted(metadata_of(PHOTO)),
            sorted([PLACE, "GPS", "icc_profile", "xmp", "comment", "exif"]),
        )


class ServedOriginalsTests(SynchronousTestCase):
    """By default (the Go image-server's behaviour) the original is the upload."""

    def test_original_is_the_upload_byte_for_byte(self) -> None:
        app = AppHarness(self)
        folder = app.upload(PHOTO)
        response, body = app.request("GET", f"{folder}/original")
        self.assertEqual((response.code, body), (200, PHOTO))
        self.assertIn("GPS", metadata_of(body))

    def test_variants_of_every_format_carry_no_metadata(self) -> None:
        app = AppHarness(self, extensions=tuple(OUTPUT_FORMATS))
        folder = app.upload(PHOTO)
        # svg is an SVG original's own markup (tests/web/test_documents_app).
        for fmt in (f for f in OUTPUT_FORMATS if not formats.output(f).markup):
            for size in ("full_size", "w32", "x20"):
                response, body = app.request("GET", f"{folder}/{size}.{fmt}")
                self.assertEqual(response.code, 200, (size, fmt))
                self.assertEqual(metadata_of(body), [], f"{size}.{fmt}")


class UnservedOriginalsTests(SynchronousTestCase):
    """--serve_originals off: no request reaches an original's bytes."""

    def setUp(self) -> None:
        self.app = AppHarness(
            self,
            serve_originals=False,
            presets=("thumb=x20",),
            extensions=tuple(OUTPUT_FORMATS),
        )
        self.folder = self.app.upload(PHOTO)

    def test_every_spelling_and_method_is_refused(self) -> None:
        # (method, path after the folder, the status): every way a name could
        # reach the stored key "original".
        cases = [
            ("GET", "/original", 404),
            ("HEAD", "/original", 404),
            ("GET", "/origina%6C", 404),
            ("GET", "/%6Friginal", 404),
            ("GET", "/Original", 404),
            ("GET", "/ORIGINAL", 404),
            ("HEAD", "/ORIGINAL", 404),
            ("GET", "/original.", 404),
            ("GET", "/original.jpg", 404),
            ("GET", "/./original", 404),
            ("GET", "/x/../original", 404),
            ("GET", "/original/", 404),
            ("GET", "/original?outputs=original", 404),
            ("GET", "/original.auto", 404),
            ("POST", "/process?outputs=original", 400),
            ("POST", "/process?outputs=Original", 400),
            ("POST", "/Original", 400),
            ("DELETE", "/original", 400),
        ]
        for method, path, status in cases:
            response, body = self.app.request(method, self.folder + path)
            self.assertEqual(response.code, status, (method, path, body))
            self.assertNotIn(PLACE.encode(), body, (method, path))
            self.assertNotIn(PHOTO[:200], body, (method, path))
        for name in ("original", "Original", "ORIGINAL", "origina%6C"):
            code, error = self.app.json("GET", f"{self.folder}/{name}")
            self.assertEqual(code, 404)
            self.assertIn("--serve_originals", error["error"], name)

    def test_an_upload_asking_for_the_original_is_refused(self) -> None:
        for outputs in ("original", "Original", "thumb.jpg,original"):
            code, error = self.app.json("POST", f"/p?outputs={outputs}", data=PHOTO)
            self.assertEqual(code, 400, outputs)
            self.assertNotIn(PLACE, str(error))

    def test_variants_presets_and_auto_are_served_without_metadata(self) -> None:
        for name in ("full_size.jpg", "thumb.png", "thumb.auto", "full_size.auto"):
            response, body = self.app.request(
                "GET", f"{self.folder}/{name}", headers={"Accept": "image/webp"}
            )
            self.assertEqual(response.code, 200, name)
            self.assertEqual(metadata_of(body), [], name)

    def test_info_json_is_still_served(self) -> None:
        code, info = self.app.json("GET", f"{self.folder}/info.json")
        self.assertEqual((code, info["width"]), (200, 64))


class OptionTests(SynchronousTestCase):
    def parse(self, *args: str, **environ: str) -> ServerOptions:
        options = ServerOptions()
        options.environ = environ
        options.parseOptions(list(args))
        return options

    def test_on_by_default_turned_off_in_words_or_in_the_environment(self) -> None:
        self.assertTrue(self.parse().config.serve_originals)
        for word in ("off", "no", "false", "0", "OFF"):
            self.assertFalse(
                self.parse("--serve_originals", word).config.serve_originals
            )
            self.assertFalse(
                self.parse(f"--serve-originals={word}").config.serve_originals
            )
            self.assertFalse(
                self.parse(IMAGESERVER_SERVE_ORIGINALS=word).config.serve_originals
            )
        self.assertTrue(self.parse("--serve_originals", "on").config.serve_originals)
        self.assertFalse(
            self.parse(
                "--serve_originals", "off", IMAGESERVER_SERVE_ORIGINALS="on"
            ).config.serve_originals
        )

    def test_a_word_that_is_not_on_or_off_is_a_usage_error(self) -> None:
        with self.assertRaises(usage.UsageError):
            self.parse("--serve_originals", "maybe")
        with self.assertRaises(usage.UsageError):
            self.parse(IMAGESERVER_SERVE_ORIGINALS="maybe")


class PresetsOnlyTests(SynchronousTestCase):
    def test_presets_only_limits_variants_not_the_original(self) -> None:
        for serve, status in ((True, 200), (False, 404)):
            app = AppHarness(
                self, presets=("thumb=x20",), presets_only=True, serve_originals=serve
            )
            folder = app.upload(PHOTO)
            response, body = app.request("GET", f"{folder}/original")
            self.assertEqual(response.code, status, serve)
            self.assertEqual(body == PHOTO, serve)
            response, _ = app.request("GET", f"{folder}/w20.jpg")
            self.assertEqual(response.code, 403)
