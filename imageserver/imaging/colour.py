"""sRGB's transfer function, for what computes in linear light: the
placeholders' mean colour and the metric quality levels are judged by."""

from __future__ import annotations

from typing import Any

import numpy


def to_linear(values: Any) -> Any:
    """sRGB values, 0-1 (an array, in its own float type), in linear light."""
    return numpy.where(
        values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4
    ).astype(values.dtype)


#: sRGB's 256 byte values in linear light (float64).
LINEAR = to_linear(numpy.arange(256, dtype=numpy.float64) / 255)
