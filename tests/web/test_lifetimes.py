"""How long browsers and CDNs may keep each kind of answer: the defaults,
and the --cache_control_*, --preset_max_age and
--origin_stale_while_revalidate options, over every kind of name."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from imageserver.storage import IMMUTABLE, PRESET_LIFETIME, REVALIDATE
from tests.support import AppHarness, encode, quadrants
from tests.thumbor.test_endpoint import file_origin

PHOTO = encode(quadrants((200, 100)))
PRESETS = ("thumb=x50", "card=w80", "avatars:thumb=x20")


def cache_controls(case: SynchronousTestCase, **settings: Any) -> dict[str, str]:
    """The Cache-Control of each kind of answer, by kind."""
    _, app = file_origin(
        case,
        {"a/b.jpg": PHOTO},
        presets=PRESETS,
        thumbor_allow_unsafe=True,
        watermarks=(),
        **settings,
    )
    found: dict[str, str] = {}
    for namespace in ("p", "avatars"):
        folder = app.upload(PHOTO, namespace)
        app.request("POST", f"{folder}/notes.txt", data=b"notes")
        names = {
            "variant": "w40.png",
            "original": "original",
            "info": "info.json",
            "file": "notes.txt",
            "preset": "thumb.png",
            "other preset": "card.png",
            "auto": "w40.auto",
            "preset auto": "thumb.auto",
        }
        for kind, name in names.items():
            response, _ = app.request("GET", f"{folder}/{name}")
            case.assertEqual(response.code, 200, name)
            (value,) = response.headers.getRawHeaders("Cache-Control")
            found[f"{namespace} {kind}"] = value
    for kind, path in (
        ("origin path", "/files/a/b.jpg/w40.png"),
        ("thumbor", "/unsafe/40x0/a/b.jpg"),
        ("thumbor meta", "/unsafe/meta/40x0/a/b.jpg"),
    ):
        response, _ = app.request("GET", path)
        case.assertEqual(response.code, 200, path)
        (value,) = response.headers.getRawHeaders("Cache-Control")
        found[kind] = value
    return found


class LifetimeTests(SynchronousTestCase):
    def test_the_defaults(self) -> None:
        by_path = "public, max-age=3600"  # --origin_ttl
        self.assertEqual(
            cache_controls(self),
            {
                "p variant": IMMUTABLE,
                "p original": IMMUTABLE,
                "p info": REVALIDATE,
                "p file": REVALIDATE,
                "p preset": PRESET_LIFETIME,
                "p other preset": PRESET_LIFETIME,
                "p auto": PRESET_LIFETIME,
                "p preset auto": PRESET_LIFETIME,
                "avatars variant": IMMUTABLE,
                "avatars original": IMMUTABLE,
                "avatars info": REVALIDATE,
                "avatars file": REVALIDATE,
                "avatars preset": PRESET_LIFETIME,
                "avatars other preset": PRESET_LIFETIME,
                "avatars auto": PRESET_LIFETIME,
                "avatars preset auto": PRESET_LIFETIME,
                "origin path": by_path,
                "thumbor": by_path,
                "thumbor meta": by_path,
            },
        )

    def test_each_option_sets_its_kind_alone(self) -> None:
        by_path = "public, max-age=120, stale-while-revalidate=30"
        self.assertEqual(
            cache_controls(
                self,
                cache_control_variants="public, max-age=86400",
                cache_control_files="no-store",
                cache_control_presets="public, max-age=300, s-maxage=60",
                # the avatars' own thumb, and the thumb of every other namespace
                preset_max_age=("avatars:thumb=10", "thumb=20"),
                origin_ttl=120,
                origin_stale_while_revalidate=30,
            ),
            {
                "p variant": "public, max-age=86400",
                "p original": "public, max-age=86400",
                "p info": "no-store",
                "p file": "no-store",
                "p preset": "public, max-age=20",
                "p other preset": "public, max-age=300, s-maxage=60",
                "p auto": "public, max-age=300, s-maxage=60",
                "p preset auto": "public, max-age=20",
                "avatars variant": "public, max-age=86400",
                "avatars original": "public, max-age=86400",
                "avatars info": "no-store",
                "avatars file": "no-store",
                "avatars preset": "public, max-age=10",
                "avatars other preset": "public, max-age=300, s-maxage=60",
                "avatars auto": "public, max-age=300, s-maxage=60",
                "avatars preset auto": "public, max-age=10",
                "origin path": by_path,
                "thumbor": by_path,
                "thumbor meta": by_path,
            },
        )

    def test_redirects_and_errors_keep_their_own(self) -> None:
        """A 301 to a canonical spelling is kept for ever whatever the
        variants' lifetime (the grammar never changes)."""
        app = AppHarness(self, cache_control_variants="public, max-age=60")
        folder = app.upload(PHOTO)
        response, _ = app.request(
            "GET", f"{folder}/x20-q40-gn.jpg", allow_redirects=False
        )
        self.assertEqual(response.code, 301)
        self.assertEqual(
            response.headers.getRawHeaders("Cache-Control"),
            ["public, max-age=31536000, immutable"],
        )
