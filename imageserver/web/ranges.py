"""Byte ranges (RFC 9110 section 14): part of a stored object, for a video
player that seeks or a download that resumes."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: One range: ``first-last``, ``first-`` or ``-suffix`` (ASCII digits alone).
_RANGE = re.compile(r"\s*(?:([0-9]{1,40})-([0-9]{0,40})|-([0-9]{1,40}))\s*")


@dataclass(frozen=True)
class Unsatisfiable:
    """No range asked for overlaps the object: a 416."""


@dataclass(frozen=True)
class Part:
    """The bytes ``first`` to ``last`` (inclusive) of an object of ``length``."""

    first: int
    last: int
    length: int

    @property
    def content_range(self) -> str:
        return f"bytes {self.first}-{self.last}/{self.length}"


def still_current(if_range: str | None, etag: str) -> bool:
    """Whether an ``If-Range`` names the object as it is, so that the range
    may be sent (RFC 9110 section 13.1.5): a strong, equal entity tag;
    without one, yes. A date never does: a client file replaced, or a
    ``-ch`` name's other size, may have the same second as Last-Modified,
    and a part of one spliced onto the other is wrong bytes."""
    if if_range is None:
        return True
    return if_range.strip() == etag


def requested(value: str | None, length: int) -> Part | Unsatisfiable | None:
    """What a ``Range`` header asks of an object of ``length`` bytes: one
    part (a 206), nothing any part could give (a 416), or None: the whole
    object (a 200), for no header, another unit, a malformed header, or
    several ranges (which the RFC lets a server answer whole: a page's
    player asks for one; several small ones are a way to make an answer
    cost more than the object), unless they all fall into one part.
    """
    if value is None or length == 0:
        return None  # an empty object has no part to give: it is given whole
    unit, equals, specs = value.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    parts: list[tuple[int, int]] = []
    for spec in specs.split(","):
        if not spec.strip():
            continue  # RFC 9110 5.6.1: empty list elements are ignored
        match = _RANGE.fullmatch(spec)
        if match is None:
            return None
        first, last, suffix = match.groups()
        if suffix is not None:
            if int(suffix) == 0:
                continue  # asks for no byte
            parts.append((max(length - int(suffix), 0), length - 1))
            continue
        start = int(first)
        end = length - 1 if not last else min(int(last), length - 1)
        if last and int(last) < start:
            return None  # a backwards range: the header is invalid
        if start < length:
            parts.append((start, end))
    if not specs.strip(", \t"):
        return None  # no range at all: malformed
    if not parts:
        return Unsatisfiable()
    parts.sort()
    first, last = parts[0]
    for start, end in parts[1:]:
        if start > last + 1:
            return None  # apart: answered whole
        last = max(last, end)
    return Part(first, last, length)
