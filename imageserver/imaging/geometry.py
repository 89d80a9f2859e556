"""Where each output pixel comes from: boxes and sizes in integers, no Pillow.

A `Plan` is computed from a parsed `Variant` and the original's displayed
size (EXIF orientation applied), never from what a decoder happened to
produce, so every decoder and every draft scale gives the same output size.
What depends on the pixels (the box ``trim`` keeps, the point ``smart``
finds) is found first and handed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from imageserver.errors import InvalidRequest
from imageserver.naming import CROP_FRACTION, GRAVITIES, Fit, Variant

Box = tuple[int, int, int, int]
Size = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Plan:
    """How an output is made from a ``width`` x ``height`` source.

    1. take ``region`` of the source (all of it, its crop box, or what
       ``trim`` keeps of that);
    2. turn it ``rotate`` degrees clockwise, then mirror it: ``flip``
       top-bottom, ``flop`` left-right;
    3. take ``box`` of that (in its pixels) and scale it to ``size``;
    4. with a ``canvas``, place the result at ``offset`` on a canvas of that
       size.

    Boxes are integers inside what they are taken from, by construction.
    """

    region: Box
    box: Box
    size: Size
    rotate: int = 0
    flip: bool = False
    flop: bool = False
    canvas: Size | None = None
    offset: tuple[int, int] = (0, 0)

    @property
    def output_size(self) -> Size:
        return self.canvas or self.size

    @property
    def crops(self) -> bool:
        """Whether ``box`` leaves part of the turned region out."""
        width, height = self.region[2] - self.region[0], self.region[3] - self.region[1]
        if self.turned:
            width, height = height, width
        return self.box != (0, 0, width, height)

    @property
    def turned(self) -> bool:
        """Whether the rotation swaps width and height."""
        return self.rotate in (90, 270)

    def decode_size(self, width: int, height: int) -> Size:
        """The smallest whole-source size that still has ``box`` at ``size`` or more.

        A decoder that can shrink while it decodes (JPEG's draft) may go down
        to this and no further.
        """
        left, top, right, bottom = self.box
        box_w, box_h = right - left, bottom - top
        out_w, out_h = self.size
        if self.turned:  # the box's width runs along the source's height
            box_w, box_h, out_w, out_h = box_h, box_w, out_h, out_w
        return _ceil_div(width * out_w, box_w), _ceil_div(height * out_h, box_h)


def plan(
    variant: Variant,
    width: int,
    height: int,
    content: Box | None = None,
    focus: tuple[float, float] | None = None,
) -> Plan:
    """The plan of ``variant`` made from a ``width`` x ``height`` source.

    ``content`` is the region ``trim`` keeps (the whole source when None);
    ``focus`` the point ``smart`` chose, as fractions of the turned region's
    width and height (the centre when None).
    """
    if width < 1 or height < 1:
        raise ValueError(f"a source of {width}x{height} has no pixels")
    region = content or crop_region(variant, width, height)
    src_w, src_h = region[2] - region[0], region[3] - region[1]
    if variant.rotate in (90, 270):
        src_w, src_h = src_h, src_w
    whole = (0, 0, src_w, src_h)
    turned = Plan(
        region, whole, (src_w, src_h), variant.rotate, variant.flip, variant.flop
    )
    fit = variant.fit
    if fit is Fit.FULL:
        return turned
    if fit is Fit.WIDTH:
        out_w = min(variant.width, src_w) if variant.noup else variant.width
        return replace(turned, size=(out_w, _scaled(src_h, out_w, src_w)))
    if fit is Fit.HEIGHT:
        out_h = min(variant.height, src_h) if variant.noup else variant.height
        return replace(turned, size=(_scaled(src_w, out_h, src_h), out_h))
    if fit is Fit.FILL:
        box = _cover_box(src_w, src_h, variant, focus)
        size = (variant.width, variant.height)
        crop = (box[2] - box[0], box[3] - box[1])
        if variant.noup and (size[0] > crop[0] or size[1] > crop[1]):
            size = crop  # the box keeps its ratio and is not enlarged
        return replace(turned, box=box, size=size)
    size = _inside(src_w, src_h, variant.width, variant.height, variant.noup)
    if fit is Fit.FIT:
        return replace(turned, size=size)
    canvas = (variant.width, variant.height)
    offset = ((canvas[0] - size[0]) // 2, (canvas[1] - size[1]) // 2)
    return replace(turned, size=size, canvas=canvas, offset=offset)


def crop_region(variant: Variant, width: int, height: int) -> Box:
    """The part of a ``width`` x ``height`` source the variant keeps before
    anything else: its crop box (fractions taken to pixels, edges rounded
    outward), or all of it. `InvalidRequest` for a box past the source."""
    if variant.crop is None:
        return (0, 0, width, height)
    left, top, right, bottom = variant.crop
    if variant.crop_fraction:
        return (
            left * width // CROP_FRACTION,
            top * height // CROP_FRACTION,
            max(
                left * width // CROP_FRACTION + 1,
                _ceil_div(right * width, CROP_FRACTION),
            ),
            max(
                top * height // CROP_FRACTION + 1,
                _ceil_div(bottom * height, CROP_FRACTION),
            ),
        )
    if right > width or bottom > height:
        raise InvalidRequest(
            f"{variant.name[:100]!r}: the crop box {left}_{top}_{right}_{bottom} "
            "reaches past the "
            f"{width}x{height} original; give one inside it, or cropf in "
            "ten-thousandths of it"
        )
    return variant.crop


def output_box(plan: Plan, box: Box) -> tuple[Box, Size] | None:
    """Where ``box`` of the source (in its pixels) lands in the output made
    by ``plan``, its edges rounded outward and clipped to the picture, and
    the size the whole box has there, parts cropped away included (what a
    redaction's strength is measured by: a crop through a box must not
    weaken it); None when none of it is there."""
    inside = _overlap(box, plan.region)
    if inside is None:
        return None
    placed = _in_output(plan, inside)
    out_w, out_h = plan.size
    clipped = (
        max(0, placed[0]),
        max(0, placed[1]),
        min(out_w, placed[2]),
        min(out_h, placed[3]),
    )
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return None
    whole = _in_output(plan, box)
    size = (whole[2] - whole[0], whole[3] - whole[1])
    dx, dy = plan.offset if plan.canvas is not None else (0, 0)
    return (clipped[0] + dx, clipped[1] + dy, clipped[2] + dx, clipped[3] + dy), size


def in_turned_region(variant: Variant, region: Box, box: Box) -> Box | None:
    """What of ``box`` (of the source, in its pixels) is inside ``region``,
    in the pixels of that region turned and mirrored as ``variant`` says;
    None when none of it is."""
    inside = _overlap(box, region)
    if inside is None:
        return None
    width, height = region[2] - region[0], region[3] - region[1]
    turn = Plan(region, (0, 0, width, height), (width, height), variant.rotate,
                variant.flip, variant.flop)  # fmt: skip
    return _turned_box(turn, inside)


def _overlap(box: Box, region: Box) -> Box | None:
    """What of ``box`` is inside ``region``; None when nothing is."""
    inside = (
        max(box[0], region[0]),
        max(box[1], region[1]),
        min(box[2], region[2]),
        min(box[3], region[3]),
    )
    if inside[2] <= inside[0] or inside[3] <= inside[1]:
        return None
    return inside


def _turned_box(plan: Plan, box: Box) -> Box:
    """``box`` of the source in the pixels of ``plan``'s region turned and
    mirrored as it says."""
    region = plan.region
    width, height = region[2] - region[0], region[3] - region[1]
    corners = [_turned(x - region[0], y - region[1], width, height, plan)
               for x in (box[0], box[2]) for y in (box[1], box[3])]  # fmt: skip
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    return (min(xs), min(ys), max(xs), max(ys))


def _in_output(plan: Plan, box: Box) -> Box:
    """``box`` of the source turned and scaled as ``plan`` says, edges
    rounded outward, not clipped."""
    left, top, right, bottom = _turned_box(plan, box)
    crop = plan.box
    out_w, out_h = plan.size
    scale_x = out_w / (crop[2] - crop[0])
    scale_y = out_h / (crop[3] - crop[1])
    # A resize blends each output pixel from pixels around it (LANCZOS: 3
    # output pixels away when shrinking, 3 source pixels when enlarging):
    # the box grows by that much, so nothing of what it covers is left in
    # the pixels next to it.
    spread = 0
    if (out_w, out_h) != (crop[2] - crop[0], crop[3] - crop[1]):
        spread = math.ceil(3 * max(1.0, scale_x, scale_y))
    return (
        math.floor((left - crop[0]) * scale_x) - spread,
        math.floor((top - crop[1]) * scale_y) - spread,
        math.ceil((right - crop[0]) * scale_x) + spread,
        math.ceil((bottom - crop[1]) * scale_y) + spread,
    )


def _turned(x: int, y: int, width: int, height: int, plan: Plan) -> tuple[int, int]:
    """A point of a ``width`` x ``height`` region, turned clockwise by
    ``plan.rotate`` and then mirrored as ``plan`` says (edges, not pixel
    centres: a box's corners map to the turned box's corners)."""
    if plan.rotate == 90:
        x, y, width, height = height - y, x, height, width
    elif plan.rotate == 180:
        x, y = width - x, height - y
    elif plan.rotate == 270:
        x, y, width, height = y, width - x, height, width
    if plan.flip:
        y = height - y
    if plan.flop:
        x = width - x
    return x, y


def output_size(variant: Variant, width: int, height: int) -> Size:
    """The pixel size of ``variant`` made from a ``width`` x ``height`` source
    (with ``trim``, an upper bound: the content may be smaller)."""
    return plan(variant, width, height).output_size


def _inside(src_w: int, src_h: int, box_w: int, box_h: int, noup: bool) -> Size:
    """The source scaled to fit inside the box, its ratio kept."""
    if src_w * box_h >= src_h * box_w:  # the source is wider: its width decides
        size = (box_w, min(box_h, _scaled(src_h, box_w, src_w)))
    else:
        size = (min(box_w, _scaled(src_w, box_h, src_h)), box_h)
    if noup and (size[0] > src_w or size[1] > src_h):
        return (src_w, src_h)
    return size


def _cover_box(
    width: int, height: int, variant: Variant, focus: tuple[float, float] | None
) -> Box:
    """The box of the source with the output's aspect ratio, as large as the
    source allows (cover: scale until the box is filled, crop the rest),
    placed by the variant's gravity, focal point or ``focus``.
    """
    out_w, out_h = variant.width, variant.height
    if width * out_h > height * out_w:  # the source is wider: keep its height
        crop_w, crop_h = min(width, max(1, _scaled(out_w, height, out_h))), height
    else:  # taller, or the same ratio: keep its width
        crop_w, crop_h = width, min(height, max(1, _scaled(out_h, width, out_w)))
    free_w, free_h = width - crop_w, height - crop_h
    if variant.gravity is not None:
        ax, ay = GRAVITIES[variant.gravity]
        left, top = round(free_w * ax), round(free_h * ay)
    else:
        if variant.focus is not None:
            focus = (variant.focus[0] / 100, variant.focus[1] / 100)
        if focus is None:
            left, top = free_w // 2, free_h // 2
        else:
            # As central as the crop allows: centred on the point, then moved
            # back inside the source.
            left = _clamp(round(focus[0] * width - crop_w / 2), 0, free_w)
            top = _clamp(round(focus[1] * height - crop_h / 2), 0, free_h)
    return (left, top, left + crop_w, top + crop_h)


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _scaled(value: int, numerator: int, denominator: int) -> int:
    """``value * numerator / denominator`` rounded half up, at least 1, exactly."""
    return max(1, (2 * value * numerator + denominator) // (2 * denominator))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
