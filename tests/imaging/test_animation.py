"""Animated GIF, WebP, APNG and AVIF in; animated gif, webp, png and avif out."""

from __future__ import annotations

import io

from PIL import Image
from twisted.trial.unittest import SynchronousTestCase

from imageserver.imaging import renderer
from imageserver.naming import VariantRules
from tests.support import BLUE, GREEN, RED, AppHarness, encode

RULES = VariantRules(frozenset({"jpg", "png", "gif", "webp", "avif"}), 90, 2000)
LIMITS = renderer.Limits(50_000_000, 1000, 2000)
COLOURS = (RED, GREEN, BLUE)
DURATIONS = [50, 70, 90]


def animation(fmt: str, size: tuple[int, int] = (120, 80), frames: int = 3) -> bytes:
    pictures = [Image.new("RGB", size, COLOURS[i % 3]) for i in range(frames)]
    out = io.BytesIO()
    pictures[0].save(
        out, fmt, save_all=True, append_images=pictures[1:],
        duration=(DURATIONS * frames)[:frames], loop=0,
    )  # fmt: skip
    return out.getvalue()


def frames_of(data: bytes) -> list[tuple[tuple[int, int], tuple[int, ...], int]]:
    """Each frame's size, centre colour and duration."""
    image = Image.open(io.BytesIO(data))
    found = []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        image.load()
        rgb = image.convert("RGB")
        centre = rgb.getpixel((rgb.width // 2, rgb.height // 2))
        found.append((image.size, centre, int(image.info.get("duration") or 0)))
    return found


def close(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return all(abs(x - y) <= 40 for x, y in zip(a, b, strict=False))


class AnimationTests(SynchronousTestCase):
    def test_every_animated_format_to_every_animated_format(self) -> None:
        for source in ("GIF", "WEBP", "PNG", "AVIF"):
            data = animation(source)
            for name, size in (
                ("w60.gif", (60, 40)), ("x40.webp", (40, 40)),
                ("x40-fit.png", (40, 27)), ("x40-pad.avif", (40, 40)),
            ):  # fmt: skip
                variant = RULES.parse(name)
                assert variant is not None
                info, (out,) = renderer.render_many(data, [variant], LIMITS)
                self.assertEqual((info.frames, info.duration_ms), (3, 210), source)
                frames = frames_of(out)
                self.assertEqual(len(frames), 3, (source, name))
                for (got_size, centre, duration), colour, wanted in zip(
                    frames, COLOURS, DURATIONS, strict=True
                ):
                    self.assertEqual(got_size, size, (source, name))
                    self.assertTrue(close(centre, colour), (source, name, centre))
                    self.assertEqual(duration, wanted, (source, name))

    def test_jpeg_variants_are_the_first_frame(self) -> None:
        out = renderer.render(animation("GIF"), RULES.parse("w60.jpg"), LIMITS)  # type: ignore[arg-type]
        (frame,) = frames_of(out)
        self.assertTrue(close(frame[1], RED))

    def test_too_many_frames_give_the_first_alone(self) -> None:
        data = animation("GIF", frames=12)
        few = renderer.Limits(50_000_000, 1000, 2000, frames=11)
        info, (out,) = renderer.render_many(data, [RULES.parse("w60.gif")], few)  # type: ignore[list-item]
        self.assertEqual((info.frames, len(frames_of(out))), (1, 1))
        self.assertIn("more than 11 frames", info.still_because or "")

    def test_too_many_pixels_in_all_give_the_first_alone(self) -> None:
        data = animation("WEBP", size=(30, 30), frames=12)
        # 900 pixels a frame, 2 x 1000 in all: 2 frames at most.
        small = renderer.Limits(1000, 0, 2000)
        info, (out,) = renderer.render_many(data, [RULES.parse("w30.webp")], small)  # type: ignore[list-item]
        self.assertEqual(len(frames_of(out)), 1)
        self.assertIn("more than 2 frames", info.still_because or "")

    def test_a_hundred_thousand_tiny_frames_cost_the_limit_only(self) -> None:
        data = animation("GIF", size=(4, 4), frames=3)
        starts = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\x21\xf9"]
        block = data[starts[1] : starts[2]]
        flood = data[: starts[2]] + block * 100_000 + b";"
        info, (out,) = renderer.render_many(flood, [RULES.parse("x4.gif")], LIMITS)  # type: ignore[list-item]
        self.assertEqual(len(frames_of(out)), 1)
        self.assertIn("more than 300 frames", info.still_because or "")

    def test_info_json_reports_frames_and_duration(self) -> None:
        app = AppHarness(self)
        code, info = app.json("POST", "/p", data=animation("GIF"))
        self.assertEqual((code, info["frames"], info["duration_ms"]), (200, 3, 210))
        code, still = app.json("POST", "/p", data=encode(Image.new("RGB", (9, 9))))
        self.assertEqual((still["frames"], "duration_ms" in still), (1, False))
