"""The variant of this server's grammar that answers a thumbor URL.

thumbor's geometry follows from the URL and the source's size alone: the
manual crop, the target size (a side of 0 in proportion, rounded half to
even), the crop that fills a plain ``WxH`` (at the focal point or the
alignment, its width rounded up), the fitted size of ``fit-in`` (half up),
the mirrors and turns. So a thumbor URL becomes one canonical variant name
with that crop box and that exact size, rendered once, stored, and shared
with the native URLs of the same output. What cannot be known before
decoding (a trim's border) is left to the variant's own options.

The filters become the variant's options; the ones this server has no
option for are ignored, as thumbor ignores a filter it does not know.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from PIL import ImageColor

from imageserver.errors import InvalidRequest
from imageserver.naming import ascii_digits
from imageserver.thumbor.urls import Filter, Size, ThumborUrl

#: thumbor's source format -> this server's extension (what thumbor serves
#: a source as when no format() says otherwise).
SOURCE_FORMATS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/avif": "avif",
    "image/tiff": "png",
}
#: format() filter values -> extensions.
FORMATS = {
    "jpeg": "jpg",
    "jpg": "jpg",
    "png": "png",
    "gif": "gif",
    "webp": "webp",
    "avif": "avif",
}
#: The most digits of a number in a filter's arguments (a longer one is
#: ignored, as thumbor ignores an argument it cannot use).
MAX_FILTER_DIGITS = 9
#: The largest side a variant name can hold (six digits).
LARGEST = 999_999
#: The formats whose quality thumbor sets (QUALITY, quality()).
LOSSY = frozenset({"jpg", "webp", "avif"})


@dataclass(frozen=True, slots=True)
class Settings:
    """The thumbor settings a migrating operator keeps (docs/thumbor.md)."""

    quality: int = 80
    auto_webp: bool = False
    auto_avif: bool = False


@dataclass(frozen=True, slots=True)
class Source:
    """What is known of the source before decoding (its info.json)."""

    width: int
    height: int
    content_type: str
    frames: int = 1


@dataclass(frozen=True, slots=True)
class Plan:
    """A thumbor URL's answer: the variant name to serve (to canonicalise
    with the server's rules), whether it depends on ``Accept``, and the
    operations thumbor's /meta/ lists."""

    name: str
    vary_accept: bool
    width: int
    height: int
    #: The size after the crops and the resize, before the filters: what
    #: /meta/ calls the target.
    target: tuple[int, int] = (0, 0)
    operations: list[dict[str, Any]] = field(default_factory=list)
    focal_points: list[dict[str, Any]] = field(default_factory=list)


def plan(url: ThumborUrl, source: Source, settings: Settings, accept: str = "") -> Plan:
    """The variant that answers ``url`` for ``source``; `InvalidRequest` for
    what thumbor itself fails on (``origx0``, an ``orig`` with
    no_upscale()), with a message saying so."""
    if url.debug:
        raise InvalidRequest("thumbor's debug/ is not served here: remove it")
    filters = _Filters(url.filters)
    options: list[str] = []
    operations: list[dict[str, Any]] = []
    sw, sh = source.width, source.height
    want_w, want_h = url.width, url.height
    if filters.has("no_upscale"):
        if "orig" in (want_w, want_h):
            raise InvalidRequest(
                "no_upscale() with an orig size is an error in thumbor"
            )
        want_w = min(want_w, sw) if isinstance(want_w, int) else want_w
        want_h = min(want_h, sh) if isinstance(want_h, int) else want_h
    box = (0, 0, sw, sh)
    if url.crop is not None and url.trim is None:
        left, top, right, bottom = url.crop
        left, right = min(left, sw), min(right, sw)
        top, bottom = min(top, sh), min(bottom, sh)
        if left < right and top < bottom:
            box = (left, top, right, bottom)
            operations.append(_crop_op(box))
    cw, ch = box[2] - box[0], box[3] - box[1]
    tw, th = _target(want_w, want_h, cw, ch)
    focal_points = _focal_points(url, filters, box)
    if url.trim is not None:
        size, extra = _trimmed(url, want_w, want_h)
        options += ["trim", *extra]
        out_w, out_h = target = tw, th
    else:
        if url.fit is not None:
            (out_w, out_h), request = _fit_in(
                url.fit, (tw, th), (cw, ch), want_w, want_h
            )
            if (out_w, out_h) != (cw, ch):
                operations.append({"type": "resize", "width": out_w, "height": out_h})
        else:
            if url.smart:
                options.append("smart")
            elif (tw, th) != (cw, ch):
                cropped, box = box, _filled(box, tw, th, focal_points)
                if (box[2] - box[0], box[3] - box[1]) != (cw, ch):
                    # In the manual crop's pixels, as thumbor lists it.
                    x, y = cropped[:2]
                    operations.append(
                        _crop_op((box[0] - x, box[1] - y, box[2] - x, box[3] - y))
                    )
            out_w, out_h = max(1, int(tw)), max(1, int(th))
            if (out_w, out_h) != (box[2] - box[0], box[3] - box[1]):
                operations.append(
                    {"type": "resize", "width": float(out_w), "height": float(out_h)}
                )
            request = (
                out_w if want_w == "orig" else int(want_w),
                out_h if want_h == "orig" else int(want_h),
            )
        target = (out_w, out_h)
        (out_w, out_h), canvas, colour = _finished((out_w, out_h), request, filters)
        size = f"{out_w}x{out_h}"
        if canvas is not None:
            size = f"{canvas[0]}x{canvas[1]}"
            options.append("pad" + colour)
            if _fit_inside((box[2] - box[0], box[3] - box[1]), canvas) != (
                out_w,
                out_h,
            ):
                options.append("noup")
            out_w, out_h = canvas
    if url.flop:
        operations.append({"type": "flip_horizontally"})
    if url.flip:
        operations.append({"type": "flip_vertically"})
    turns, mirrors = _orientation(url.flop, url.flip, filters.rotations())
    kept = (box[2] - box[0], box[3] - box[1])
    padded = any(o.startswith("pad") for o in options)
    unresized = (out_w, out_h) == (kept[::-1] if turns % 180 else kept)
    if url.trim is None and not padded and unresized:
        # The kept part at its own size, which --maximum_width does not
        # bound (thumbor's MAX_WIDTH is unlimited by default); nothing to
        # crop smartly.
        size = "full_size"
        options = [o for o in options if o != "smart"]
    if box != (0, 0, sw, sh):
        options.append(f"crop{box[0]}_{box[1]}_{box[2]}_{box[3]}")
    if turns:
        options.append(f"r{turns}")
    options += mirrors
    options += filters.adjustments()
    extension, vary = _format(filters, source, settings, accept)
    options += filters.finishing(extension)
    quality = filters.quality(settings.quality)
    if extension in LOSSY:
        options.append(f"q{quality}")
    if max(out_w, out_h) > LARGEST:
        raise InvalidRequest(
            f"thumbor's rules make this {out_w}x{out_h}: past the largest "
            "this server makes (--maximum_width)"
        )
    return Plan(
        name="-".join([size, *options]) + f".{extension}",
        vary_accept=vary,
        width=out_w,
        height=out_h,
        target=target,
        operations=operations,
        focal_points=focal_points,
    )


def meta(url: ThumborUrl, source: Source, result: Plan) -> dict[str, Any]:
    """thumbor's /meta/ answer for ``url``: its source (whose size thumbor
    reads after the operations: the result's), the operations, the target."""
    # The size after the last crop or resize; without one, the source's,
    # which thumbor reads after the filters (the result's).
    resized = any(o["type"] in ("crop", "resize") for o in result.operations)
    width, height = result.target if resized else (result.width, result.height)
    target = {"width": width, "height": height}
    return {
        "thumbor": {
            "source": {
                "url": quote(url.image),
                "width": result.width,
                "height": result.height,
                "frameCount": source.frames,
            },
            "operations": result.operations,
            "target": target,
            "focal_points": result.focal_points,
        }
    }


# -- geometry -----------------------------------------------------------------


def _half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _target(want_w: int | str, want_h: int | str, cw: int, ch: int) -> tuple[int, int]:
    """thumbor's target size of a ``cw`` x ``ch`` image: ``orig`` is the
    image's side, a 0 side keeps the proportion (rounded half to even, as
    Python's round), both 0 the image's size."""
    if (want_w, want_h) in (("orig", 0), (0, "orig")):
        raise InvalidRequest(
            "origx0 and 0xorig are errors in thumbor: give a number for the other side"
        )
    w = cw if want_w == "orig" else int(want_w)
    h = ch if want_h == "orig" else int(want_h)
    if not w and not h:
        return cw, ch
    if not h:
        return w, max(1, round(w * ch / cw))
    if not w:
        return max(1, round(h * cw / ch)), h
    return w, h


def _fit_in(
    fit: str,
    target: tuple[int, int],
    image: tuple[int, int],
    want_w: Size,
    want_h: Size,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The size a fit gives, and thumbor's request size after it, which
    fill() and upscale() read: what was asked (orig: the image's side), at
    least what was made, updated only when the fit resized."""
    made, turned = _fitted(fit, *target, *image)
    asked = [
        image[0] if want_w == "orig" else int(want_w),
        image[1] if want_h == "orig" else int(want_h),
    ]
    if turned:
        asked.reverse()
    if made == image:
        return made, (asked[0], asked[1])
    return made, (max(asked[0], made[0]), max(asked[1], made[1]))


def _fitted(
    fit: str, tw: int, th: int, cw: int, ch: int
) -> tuple[tuple[int, int], bool]:
    """The size ``fit-in`` (never larger than the image), ``full-fit-in``
    (covering the box) or their ``adaptive-`` forms (the box turned to the
    image's orientation) give, each computed side rounded half up; and
    whether the box was turned."""
    # Turned when the picture and the box lie opposite ways (a square lies
    # neither way).
    turned = fit.startswith("adaptive-") and (
        (cw < ch and tw > th) or (cw > ch and tw < th)
    )
    if turned:
        tw, th = th, tw
    full = "full-" in fit
    if not full and tw >= cw and th >= ch:
        return (cw, ch), turned
    sign = -1 if full else 1
    if sign * (cw / tw) >= sign * (ch / th):
        return (tw, max(1, _half_up(ch * tw / cw + 1e-5))), turned
    return (max(1, _half_up(cw * th / ch + 1e-5)), th), turned


def _finished(
    size: tuple[int, int], request: tuple[int, int], filters: _Filters
) -> tuple[tuple[int, int], tuple[int, int] | None, str]:
    """The filters that change the size, in the URL's order, as thumbor
    applies them after the resize: proportion(), upscale() (to fit the
    request's size, when smaller on both sides), fill() (a canvas of the
    request's size) and rotate(). The picture's size, the canvas's (or
    None) and the canvas's colour (rrggbb, or nothing for the default)."""
    w, h = size
    canvas: tuple[int, int] | None = None
    colour = ""
    for f in filters.in_order():
        current = canvas or (w, h)
        if f.name == "proportion" and (p := _proportion(f)) is not None:
            scaled = int(current[0] * p), int(current[1] * p)
            if min(scaled) >= 1:
                w, h = (int(w * p), int(h * p)) if canvas else scaled
                canvas = scaled if canvas else None
        elif f.name == "upscale":
            tw, th = request
            if tw and th and current[0] < tw and current[1] < th:
                if current[0] / tw >= current[1] / th:
                    grown = tw, int(current[1] * tw / current[0])
                else:
                    grown = int(current[0] * th / current[1]), th
                factor = grown[0] / current[0]
                w, h = (int(w * factor), int(h * factor)) if canvas else grown
                canvas = grown if canvas else None
        elif f.name == "fill" and f.args:
            target = request[0] or current[0], request[1] or current[1]
            if target != (w, h):
                canvas, colour = target, _colour(f.args[0])
        elif f.name == "rotate" and f.args and _quarter_turn(f.args[0]):
            w, h = h, w
            canvas = (canvas[1], canvas[0]) if canvas else None
    return (w, h), canvas, colour


def _fit_inside(box: tuple[int, int], canvas: tuple[int, int]) -> tuple[int, int]:
    """The size this server's pad gives ``box`` on ``canvas`` (as near as
    a check needs: whether thumbor's picture is that, or smaller)."""
    scale = min(canvas[0] / box[0], canvas[1] / box[1])
    return max(1, round(box[0] * scale)), max(1, round(box[1] * scale))


def _int(text: str) -> int | None:
    """A filter's whole number (thumbor's Number: a sign, then digits), of
    at most `MAX_FILTER_DIGITS` digits 0-9."""
    text = text.strip()
    digits = text[1:] if text.startswith("-") else text
    return int(text) if ascii_digits(digits, MAX_FILTER_DIGITS) else None


_DECIMAL = re.compile(r"-?(?:[0-9]{1,9}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})\Z")


def _float(text: str) -> float | None:
    """A filter's decimal number as thumbor writes one (``1.5``, ``.5``,
    ``-2``; no exponent)."""
    text = text.strip()
    return float(text) if _DECIMAL.match(text) else None


def _proportion(f: Filter) -> float | None:
    value = _float(f.args[0]) if f.args else None
    return value if value is not None and 0 < value <= 1 else None


def _quarter_turn(degrees: str) -> bool:
    """Whether rotate(degrees) turns a quarter (thumbor turns only by
    multiples of 90)."""
    turn = _int(degrees)
    return turn is not None and turn % 90 == 0 and turn % 180 == 90


def _filled(
    box: tuple[int, int, int, int],
    tw: int,
    th: int,
    focal_points: Sequence[dict[str, Any]],
) -> tuple[int, int, int, int]:
    """The part of ``box`` a plain ``tw`` x ``th`` keeps: the target's aspect,
    as central to the focal points' centre of mass as the box allows."""
    cw, ch = box[2] - box[0], box[3] - box[1]
    if round(cw / ch, 2) == round(tw / th, 2):
        return box
    weight = sum(p["z"] for p in focal_points)
    cx = sum(p["x"] * p["z"] for p in focal_points) // weight
    cy = sum(p["y"] * p["z"] for p in focal_points) // weight
    if tw / cw > th / ch:
        crop_w, crop_h = cw, max(1, round(cw * th / tw))
    else:
        crop_w, crop_h = max(1, math.ceil(tw * ch / th)), ch
    left = round(min(max(cx - crop_w / 2, 0), cw - crop_w))
    top = round(min(max(cy - crop_h / 2, 0), ch - crop_h))
    right, bottom = min(left + crop_w, cw), min(top + crop_h, ch)
    return box[0] + left, box[1] + top, box[0] + right, box[1] + bottom


_ALIGN_X = {"left": 0.0, "center": 0.5, "right": 1.0}
_ALIGN_Y = {"top": 0.0, "middle": 0.5, "bottom": 1.0}


def _focal_points(
    url: ThumborUrl, filters: _Filters, box: tuple[int, int, int, int]
) -> list[dict[str, Any]]:
    """focal() points inside the box, moved into it; else the alignment. A
    box is read as thumbor reads it, drawn either way round: its middle,
    weighted by its signed area."""
    points: list[dict[str, Any]] = []
    for left, top, right, bottom in filters.focal_boxes():
        width, height = right - left, bottom - top
        x, y = left + width // 2, top + height // 2
        if box[0] <= x < box[2] and box[1] <= y < box[3]:
            points.append({
                "x": x - box[0], "y": y - box[1], "z": float(width * height),
                "height": height, "width": width, "origin": "Explicit",
            })  # fmt: skip
    if points and sum(p["z"] for p in points):
        return points
    cw, ch = box[2] - box[0], box[3] - box[1]
    return [{
        "x": int(cw * _ALIGN_X[url.halign]), "y": int(ch * _ALIGN_Y[url.valign]),
        "z": 1.0, "height": 1, "width": 1, "origin": "alignment",
    }]  # fmt: skip


def _trimmed(
    url: ThumborUrl, want_w: int | str, want_h: int | str
) -> tuple[str, list[str]]:
    """With trim the size after it is not known before decoding: the
    variant's own sizes do the rest (fit, cover at the alignment's edge)."""
    w = 0 if want_w == "orig" else int(want_w)
    h = 0 if want_h == "orig" else int(want_h)
    extra: list[str] = []
    if w and h:
        size = f"{w}x{h}"
        if url.fit is not None:
            extra.append("fit")
        else:
            gravity = {"top": "n", "bottom": "s"}.get(url.valign, "") + {
                "left": "w",
                "right": "e",
            }.get(url.halign, "")
            if gravity:
                extra.append(f"g{gravity}")
    elif w:
        size = f"w{w}"
    elif h:
        size = f"h{h}"
    else:
        size = "full_size"
    if url.fit is not None and size != "full_size":
        extra.append("noup")
    return size, extra


def _grid_turned(grid: list[list[int]], clockwise: int) -> list[list[int]]:
    for _ in range(clockwise // 90 % 4):
        grid = [list(row) for row in zip(*grid[::-1], strict=True)]
    return grid


def _orientation(
    flop: bool, flip: bool, rotations: Sequence[int]
) -> tuple[int, list[str]]:
    """thumbor mirrors after the resize and turns counter-clockwise after
    that; this server turns clockwise, then mirrors: the same result,
    found by applying both to a small grid."""
    grid = [[1, 2, 3], [4, 5, 6]]
    wanted = [row[::-1] for row in grid] if flop else grid
    wanted = wanted[::-1] if flip else wanted
    wanted = _grid_turned(wanted, -sum(rotations) % 360)
    for turns in (0, 90, 180, 270):
        for mirrors in ((), ("flip",), ("flop",), ("flip", "flop")):
            mine = _grid_turned(grid, turns)
            if "flip" in mirrors:
                mine = mine[::-1]
            if "flop" in mirrors:
                mine = [row[::-1] for row in mine]
            if mine == wanted:
                return turns, list(mirrors)
    raise AssertionError("eight results, sixteen spellings: one always matches")


def _crop_op(box: tuple[int, int, int, int]) -> dict[str, Any]:
    return {
        "type": "crop",
        "left": box[0],
        "top": box[1],
        "right": box[2],
        "bottom": box[3],
    }


# -- filters ------------------------------------------------------------------


def _colour(text: str) -> str:
    """A thumbor colour (a name, hex without #) as ``rrggbb``; transparent
    (and what this server does not draw: auto, blur) as nothing for a pad,
    which is then white, or transparent where the format keeps alpha."""
    text = text.strip().lower()
    if text in ("transparent", "auto", "blur"):
        return ""
    for spelling in (text, f"#{text}"):  # a name first, as thumbor tries
        try:
            rgb = ImageColor.getrgb(spelling)
        except ValueError:
            continue
        return "".join(f"{v:02x}" for v in rgb[:3])
    raise InvalidRequest(f"{text[:40]!r} is not a colour thumbor knows")


class _Filters:
    """The filters of a URL, read as thumbor reads them: a filter whose
    arguments do not parse is ignored, as an unknown one is."""

    def __init__(self, filters: Sequence[Filter]) -> None:
        self._filters = list(filters)

    def in_order(self) -> list[Filter]:
        return list(self._filters)

    def has(self, name: str) -> bool:
        return any(f.name == name for f in self._filters)

    def last(self, name: str) -> Filter | None:
        found = [f for f in self._filters if f.name == name]
        return found[-1] if found else None

    def _before(self, first: str, then: str) -> bool:
        """Whether the last ``first`` comes before the last ``then``."""
        names = [f.name for f in self._filters]
        return max(i for i, n in enumerate(names) if n == first) < max(
            i for i, n in enumerate(names) if n == then
        )

    def _ints(self, name: str, count: int = 1) -> list[int] | None:
        found = self.last(name)
        if found is None or len(found.args) < count:
            return None
        numbers = [_int(a) for a in found.args[:count]]
        return None if None in numbers else [n or 0 for n in numbers]

    def quality(self, default: int) -> int:
        given = self._ints("quality")
        return default if given is None else min(100, max(1, given[0]))

    def rotations(self) -> list[int]:
        turns = []
        for f in self._filters:
            if f.name == "rotate" and f.args:
                degrees = _int(f.args[0])
                if degrees is not None and degrees % 90 == 0:
                    turns.append(degrees % 360)
        return turns

    def focal_boxes(self) -> list[tuple[int, int, int, int]]:
        boxes = []
        for f in self._filters:
            if f.name != "focal" or not f.args:
                continue
            corner, _, other = f.args[0].partition(":")
            edges = [_int(v) for v in (*corner.split("x"), *other.split("x"))]
            if len(edges) != 4 or None in edges:
                continue
            left, top, right, bottom = (e or 0 for e in edges)
            if right != left and bottom != top:
                boxes.append((left, top, right, bottom))
        return boxes

    def adjustments(self) -> list[str]:
        """brightness, contrast, saturation, blur, sharpen, grayscale."""
        options = []
        brightness, contrast = self._ints("brightness"), self._ints("contrast")
        if brightness and contrast and self._before("contrast", "brightness"):
            # Contrast first, then brightness: the same as brightness over
            # the contrast's factor first (this server's order).
            factor = ((100 + max(-100, min(100, contrast[0]))) / 100) ** 2
            brightness = [round(brightness[0] / factor)] if factor else None
        for name, given in (("brightness", brightness), ("contrast", contrast)):
            if given and given[0]:
                amount = min(100, abs(given[0]))
                options.append(f"{name}{'m' if given[0] < 0 else ''}{amount}")
        saturation = self.last("saturation")
        if saturation is not None and saturation.args:
            times = _float(saturation.args[0])
            amount = 0 if times is None else round((min(times, 3.0) - 1) * 100)
            if amount:
                amount = max(-100, min(100, amount))
                options.append(f"saturation{'m' if amount < 0 else ''}{abs(amount)}")
        blur = self.last("blur")
        if blur is not None and blur.args:
            radius = _int(blur.args[0]) or 0
            sigma: float | None = float(radius)
            if len(blur.args) > 1:
                sigma = _float(blur.args[1])
            if radius > 0 and sigma is not None and sigma > 0:
                options.append(f"blur{max(1, min(100, round(sigma)))}")
        sharpen = self.last("sharpen")
        if sharpen is not None and len(sharpen.args) == 3:
            options.append("sharp")
        if self.has("grayscale"):
            options.append("gray")
        return options

    def finishing(self, extension: str) -> list[str]:
        """round_corner, background_color, max_bytes."""
        options = []
        corner = self.last("round_corner")
        if corner is not None and len(corner.args) >= 4:
            numbers = [_int(corner.args[0].split("|")[0])]
            numbers += [_int(v) for v in corner.args[1:4]]
            radius = 0 if None in numbers else min(numbers[0] or 0, 999_999)
            rgb = [n or 0 for n in numbers[1:]]
            transparent = corner.args[4:5] in (("1",), ("true",), ("True",))
            # Drawn before the proportion() filters after it: they shrink it.
            after = self._filters[
                len(self._filters) - self._filters[::-1].index(corner) :
            ]
            for f in after:
                if f.name == "proportion" and (p := _proportion(f)) is not None:
                    radius = int(radius * p)
            if radius > 0:
                options.append(f"round{radius}")
                if not transparent and all(0 <= v <= 255 for v in rgb):
                    options.append("bg" + "".join(f"{v:02x}" for v in rgb))
        background = self.last("background_color")
        if (
            background is not None
            and background.args
            and not any(o.startswith("bg") for o in options)
        ):
            colour = _colour(background.args[0])
            if colour:
                options.append(f"bg{colour}")
        budget = self._ints("max_bytes")
        if budget and budget[0] > 0 and extension in ("jpg", "webp"):
            options.append(f"maxbytes{min(budget[0], 99_999_999)}")
        return options


def _format(
    filters: _Filters, source: Source, settings: Settings, accept: str
) -> tuple[str, bool]:
    """The output's extension, and whether it depends on ``Accept``."""
    animated = source.frames > 1
    if animated and source.content_type == "image/gif":
        return "gif", False  # thumbor keeps an animated GIF a GIF
    chosen = filters.last("format")
    if chosen is not None and chosen.args:
        extension = FORMATS.get(chosen.args[0].lower())
        if extension is not None:
            return extension, False
    vary = settings.auto_webp or settings.auto_avif
    if not animated:
        if settings.auto_webp and "image/webp" in accept:
            return "webp", vary
        if settings.auto_avif and "image/avif" in accept:
            return "avif", vary
    return SOURCE_FORMATS.get(source.content_type, "jpg"), vary
