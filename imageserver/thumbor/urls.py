"""thumbor's URL grammar and its signatures, as thumbor 7.8 reads them.

A thumbor URL is ``/{unsafe|signature}/`` and then optional parts, each
ending in ``/``, in one order, and the image: what comes after the last part
that matches. A part out of order or misspelt matches nothing and so starts
the image (thumbor answers such a URL with the loader's 404, and so do we).
The parts are matched on the path as it arrived, percent-encoded, and
decoded after: the signature covers the encoded text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from imageserver.errors import InvalidRequest

#: The most digits of a number in a thumbor URL's geometry (larger sizes are
#: past any --maximum_width anyway; the bound keeps int() cheap).
MAX_DIGITS = 6

_N = r"[0-9]+"
_PARTS = re.compile(
    r"(?:(?P<debug>debug)/)?"
    r"(?:(?P<meta>meta)/)?"
    rf"(?:(?P<trim>trim(?::(?:top-left|bottom-right))?(?::{_N})?)/)?"
    rf"(?:(?P<left>{_N})x(?P<top>{_N}):(?P<right>{_N})x(?P<bottom>{_N})/)?"
    r"(?:(?P<adaptive>adaptive-)?(?P<full>full-)?(?P<fit>fit-in)/)?"
    rf"(?:(?P<hflip>-)?(?P<width>{_N}|orig)?x(?P<vflip>-)?(?P<height>{_N}|orig)?/)?"
    r"(?:(?P<halign>left|right|center)/)?"
    r"(?:(?P<valign>top|bottom|middle)/)?"
    r"(?:(?P<smart>smart)/)?"
    r"(?:filters:(?P<filters>.+?\))/)?"
    r"(?P<image>.+)\Z",
    re.ASCII | re.DOTALL,
)
_FILTER = re.compile(r"(?P<name>[a-z_]+)\((?P<args>.*)\)\Z", re.ASCII | re.DOTALL)

Size = int | Literal["orig"]


@dataclass(frozen=True, slots=True)
class Filter:
    """One ``name(args)`` of ``filters:``, its arguments as written (decoded,
    stripped; a quoted string without its quotes)."""

    name: str
    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ThumborUrl:
    """What a thumbor URL asks for, parsed but not yet checked for meaning."""

    #: The signature as given, or None for ``unsafe``.
    signature: str | None
    #: The text the signature covers: the path after ``/{signature}/``.
    signed: str
    image: str
    meta: bool = False
    debug: bool = False
    #: (``top-left`` or ``bottom-right``, tolerance), or None.
    trim: tuple[str, int] | None = None
    #: left, top, right, bottom, as written (clamped and checked later).
    crop: tuple[int, int, int, int] | None = None
    #: None, or one of fit-in, full-fit-in, adaptive-fit-in,
    #: adaptive-full-fit-in.
    fit: str | None = None
    width: Size = 0
    height: Size = 0
    #: A minus before the width (mirror left-right) or the height (top-bottom).
    flop: bool = False
    flip: bool = False
    halign: str = "center"
    valign: str = "middle"
    smart: bool = False
    filters: tuple[Filter, ...] = ()


def parse(path: str) -> ThumborUrl:
    """The parts of ``path``, the request's path as it arrived (percent-
    encoded, without the query), with or without its leading ``/``.

    `InvalidRequest` (400, as thumbor answers) for a path without an
    ``unsafe`` or signature segment and an image after it.
    """
    path = path[1:] if path.startswith("/") else path
    first, slash, rest = path.partition("/")
    if not slash or not first or not rest:
        raise InvalidRequest(
            "a thumbor URL is /unsafe/ or /SIGNATURE/, the options, then the "
            "image: /unsafe/300x200/path/to/image.jpg"
        )
    parts = _PARTS.match(rest)
    assert parts is not None  # the image alone matches any text
    signature = None if first == "unsafe" else unquote(first)
    return ThumborUrl(
        signature=signature,
        signed=rest,
        image=unquote(parts["image"]),
        meta=parts["meta"] is not None,
        debug=parts["debug"] is not None,
        trim=_trim(parts["trim"]),
        crop=_crop(parts),
        fit=_fit(parts),
        width=_size(parts["width"]),
        height=_size(parts["height"]),
        flop=parts["hflip"] is not None,
        flip=parts["vflip"] is not None,
        halign=parts["halign"] or "center",
        valign=parts["valign"] or "middle",
        smart=parts["smart"] is not None,
        filters=_filters(parts["filters"]),
    )


def signature_of(signed: str, key: bytes) -> str:
    """thumbor's (and libthumbor's) signature of ``signed`` under ``key``:
    HMAC-SHA1, URL-safe base64 with its ``=``."""
    digest = hmac.new(key, signed.encode("utf-8"), hashlib.sha1).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")


def check_signature(url: ThumborUrl, keys: Sequence[bytes], allow_unsafe: bool) -> None:
    """`InvalidRequest` (thumbor's 400) unless ``url`` is signed by one of
    ``keys`` (several while a key is rotated), or is ``unsafe`` where that is
    allowed."""
    if url.signature is None:
        if not allow_unsafe:
            raise InvalidRequest(
                "unsigned thumbor URLs (/unsafe/) are not served here: sign "
                "the URL with the server's key (--thumbor_security_key)"
            )
        return
    given = url.signature.encode("utf-8", "replace")
    if not any(
        hmac.compare_digest(given, signature_of(url.signed, key).encode())
        for key in keys
    ):
        raise InvalidRequest(
            "the thumbor URL's signature does not match: sign the path after "
            "it, as written, with HMAC-SHA1 and the server's key (libthumbor's "
            "CryptoURL does)"
        )


def _number(text: str, what: str) -> int:
    if len(text) > MAX_DIGITS:
        raise InvalidRequest(f"a thumbor URL's {what} has at most {MAX_DIGITS} digits")
    return int(text)


def _size(text: str | None) -> Size:
    if text is None:
        return 0
    if text == "orig":
        return "orig"
    return _number(text, "width and height")


def _trim(text: str | None) -> tuple[str, int] | None:
    if text is None:
        return None
    fields = text.split(":")
    # As thumbor reads it: the second field is the position, the third the
    # tolerance (`trim:10` names a position, which counts as bottom-right).
    position = fields[1] if len(fields) > 1 else "top-left"
    if position != "top-left":
        position = "bottom-right"
    tolerance = _number(fields[2], "trim tolerance") if len(fields) > 2 else 0
    return position, tolerance


def _crop(parts: re.Match[str]) -> tuple[int, int, int, int] | None:
    if parts["left"] is None:
        return None
    left, top, right, bottom = (
        _number(parts[side], "crop") for side in ("left", "top", "right", "bottom")
    )
    return left, top, right, bottom


def _fit(parts: re.Match[str]) -> str | None:
    if parts["fit"] is None:
        return None
    return f"{parts['adaptive'] or ''}{parts['full'] or ''}fit-in"


def _filters(text: str | None) -> tuple[Filter, ...]:
    if text is None:
        return ()
    found = []
    pieces = text.split("):")
    for i, piece in enumerate(pieces):
        if i < len(pieces) - 1:
            piece += ")"
        call = _FILTER.match(unquote(piece))
        if call is None:
            continue  # thumbor ignores what it cannot read as a filter
        found.append(Filter(call["name"], _arguments(call["args"])))
    return tuple(found)


def _arguments(text: str) -> tuple[str, ...]:
    """Comma-separated, each stripped; a single-quoted one may hold commas."""
    if not text.strip():
        return ()
    args, current, quoted = [], "", False
    for character in text:
        if character == "'":
            quoted = not quoted
        elif character == "," and not quoted:
            args.append(current.strip())
            current = ""
            continue
        current += character
    args.append(current.strip())
    return tuple(a[1:-1] if len(a) > 1 and a[0] == a[-1] == "'" else a for a in args)
