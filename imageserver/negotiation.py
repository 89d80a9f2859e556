"""``Accept`` headers and client hints, read the way ``.auto`` and ``-ch``
names need them: pure, no HTTP objects."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from imageserver.naming import DPR_HINTS, WIDTH_HINTS

#: A q value (RFC 9110 section 12.4.2), read a little more loosely: ASCII
#: digits, a few decimals. Anything else counts as q=0.
_QVALUE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{0,6})?")


def accepted_types(accept: str | None) -> frozenset[str]:
    """The media types an ``Accept`` header names outright, with a q above 0.

    Wildcards (``image/*``, ``*/*``) are left out: ``.auto`` sends a newer
    format only to a client that says it takes that format by name.
    """
    named = set()
    for item in (accept or "").split(","):
        media, *parameters = (part.strip() for part in item.split(";"))
        media = media.lower()
        if not media or "*" in media:
            continue
        quality = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                # float() also reads other scripts' digits, "nan" and "inf".
                number = value.strip()
                quality = float(number) if _QVALUE.fullmatch(number) else 0.0
        if quality > 0:
            named.add(media)
    return frozenset(named)


#: A DPR hint: a positive decimal number (RFC 8942's sf-decimal, loosely).
_DPR = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,6})?")
#: A width hint: physical pixels, ASCII digits.
_WIDTH = re.compile(r"[0-9]{1,6}")


@dataclass(frozen=True)
class ClientHints:
    """What a client said of its screen: its device pixel ratio and the
    width (in physical pixels) the image takes in its layout; None where it
    said nothing, or nothing readable."""

    dpr: float | None = None
    width: int | None = None


def client_hints(header: Callable[[str], str | None]) -> ClientHints:
    """The hints among a request's headers (``header`` reads one by name):
    ``Sec-CH-DPR`` and ``Sec-CH-Width``, else the legacy ``DPR`` and
    ``Width``. A value that is no number, or 0, counts as not sent."""

    def first(names: tuple[str, ...], shape: re.Pattern[str]) -> str | None:
        for name in names:
            value = (header(name) or "").strip()
            if shape.fullmatch(value) and float(value) > 0:
                return value
        return None

    dpr = first(DPR_HINTS, _DPR)
    width = first(WIDTH_HINTS, _WIDTH)
    return ClientHints(
        float(dpr) if dpr is not None else None,
        int(width) if width is not None else None,
    )
