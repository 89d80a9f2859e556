"""``Accept`` headers, read the way ``.auto`` needs them: pure, no HTTP objects."""

from __future__ import annotations

import re

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
