"""Where each output pixel comes from: boxes and sizes in integers, no Pillow.

A `Plan` is computed from a parsed `Variant` and the original's displayed
size (EXIF orientation applied), never from what a decoder happened to
produce, so every decoder and every draft scale gives the same output size.
"""

from __future__ import annotations

from dataclasses import dataclass

from imageserver.naming import Fit, Variant

Box = tuple[int, int, int, int]
Size = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Plan:
    """Take ``box`` of the source (in its pixels) and scale it to ``size``.

    ``box`` lies inside the source by construction: integers with
    ``0 <= left < right <= width`` and ``0 <= top < bottom <= height``.
    """

    box: Box
    size: Size

    def decode_size(self, width: int, height: int) -> Size:
        """The smallest whole-image size that still has ``box`` at ``size`` or more.

        A decoder that can shrink while it decodes (JPEG's draft) may go down
        to this and no further.
        """
        left, top, right, bottom = self.box
        return (
            _ceil_div(width * self.size[0], right - left),
            _ceil_div(height * self.size[1], bottom - top),
        )


def plan(variant: Variant, width: int, height: int) -> Plan:
    """The plan of ``variant`` made from a ``width`` x ``height`` source."""
    if width < 1 or height < 1:
        raise ValueError(f"a source of {width}x{height} has no pixels")
    whole = (0, 0, width, height)
    if variant.fit is Fit.FULL:
        return Plan(whole, (width, height))
    if variant.fit is Fit.WIDTH:
        return Plan(whole, (variant.width, _scaled(height, variant.width, width)))
    return Plan(
        _cover_box(width, height, variant.width, variant.height),
        (
            variant.width,
            variant.height,
        ),
    )


def output_size(variant: Variant, width: int, height: int) -> Size:
    """The pixel size of ``variant`` made from a ``width`` x ``height`` source."""
    return plan(variant, width, height).size


def _cover_box(width: int, height: int, out_w: int, out_h: int) -> Box:
    """The centred box of the source with the output's aspect ratio, as large
    as the source allows (cover: scale until the box is filled, crop the rest).
    """
    if width * out_h > height * out_w:  # the source is wider: keep its height
        crop_w, crop_h = min(width, max(1, _scaled(out_w, height, out_h))), height
    else:  # taller, or the same ratio: keep its width
        crop_w, crop_h = width, min(height, max(1, _scaled(out_h, width, out_w)))
    left = (width - crop_w) // 2
    top = (height - crop_h) // 2
    return (left, top, left + crop_w, top + crop_h)


def _scaled(value: int, numerator: int, denominator: int) -> int:
    """``value * numerator / denominator`` rounded half up, at least 1, exactly."""
    return max(1, (2 * value * numerator + denominator) // (2 * denominator))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
