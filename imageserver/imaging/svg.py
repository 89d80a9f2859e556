"""SVG originals made safe: parsed without fetching anything, stripped to what
draws, and measured before a renderer sees them.

resvg reads any file an ``<image href>`` names (an absolute path resolves
wherever its resources directory is), and browsers run an SVG's scripts when
it is opened as a document. So nothing from the original reaches either
unchecked: the document is parsed by libxml2 with internal entities only (no
DTD loaded, no network, its own limits on entity amplification), and rebuilt
from an allowlist of elements and attributes. References stay only where they
point inside the document (``#id``) or are a raster image in a ``data:`` URL
whose header declares a bounded size. CSS keeps no ``url()`` but fragment
references and no ``@import``.

The rebuilt tree is also measured: elements once every ``<use>`` is expanded,
nesting, filter primitives. These are what a renderer's cost grows with, past
the canvas it draws (docs/security.md). Plain functions, no Twisted.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

from lxml import etree  # type: ignore[import-untyped]

from imageserver import headers
from imageserver.errors import ImageTooLarge, UnsupportedImage

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
XML_NS = "http://www.w3.org/XML/1998/namespace"

#: Elements kept (everything resvg draws, and what structures it); anything
#: else goes with its subtree: scripts, foreignObject (HTML), animation
#: elements, metadata, editors' own namespaces.
ELEMENTS = frozenset(
    {
        "svg",
        "g",
        "defs",
        "symbol",
        "use",
        "switch",
        "a",
        "path",
        "rect",
        "circle",
        "ellipse",
        "line",
        "polyline",
        "polygon",
        "text",
        "tspan",
        "textPath",
        "image",
        "linearGradient",
        "radialGradient",
        "stop",
        "pattern",
        "clipPath",
        "mask",
        "marker",
        "filter",
        "style",
        "title",
        "desc",
        "feBlend",
        "feColorMatrix",
        "feComponentTransfer",
        "feComposite",
        "feConvolveMatrix",
        "feDiffuseLighting",
        "feDisplacementMap",
        "feDistantLight",
        "feDropShadow",
        "feFlood",
        "feFuncA",
        "feFuncB",
        "feFuncG",
        "feFuncR",
        "feGaussianBlur",
        "feImage",
        "feMerge",
        "feMergeNode",
        "feMorphology",
        "feOffset",
        "fePointLight",
        "feSpecularLighting",
        "feSpotLight",
        "feTile",
        "feTurbulence",
    }
)
#: Filter primitives: each is a pass over the filter region's pixels.
FILTER_PRIMITIVES = frozenset(e for e in ELEMENTS if e.startswith("fe") and e not in {
    "feFuncA", "feFuncB", "feFuncG", "feFuncR", "feMergeNode", "feDistantLight",
    "fePointLight", "feSpotLight"})  # fmt: skip
#: Elements kept with their text, which is not drawn (an SVG's accessible
#: name and description).
_SILENT = frozenset({"title", "desc"})
#: Raster images an ``<image>`` may embed, by their ``data:`` media type.
EMBEDDED = {
    "image/png": headers.png,
    "image/jpeg": headers.jpeg,
    "image/gif": headers.gif,
    "image/webp": headers.webp,
}
_HREFS = frozenset({"href", f"{{{XLINK_NS}}}href"})
#: Elements whose text is kept: drawn, a style sheet, or a name.
_DRAWN_TEXT = frozenset({"text", "tspan", "textPath"})
_WITH_TEXT = _DRAWN_TEXT | _SILENT | {"style"}
_DATA_URL = re.compile(r"data:(?P<type>[a-z/]+);base64,(?P<data>[A-Za-z0-9+/=\s]*)\Z")
#: A ``url(...)`` in CSS or a presentation attribute that is not a fragment.
_FOREIGN_URL = re.compile(r"url\(\s*(?!['\"]?\s*#)[^)]*\)", re.IGNORECASE)
_IMPORT = re.compile(r"@import[^;]*;?", re.IGNORECASE)
_FUNCTION = re.compile(r"([A-Za-z_-][A-Za-z0-9_-]*)\s*\(")
#: CSS functions kept: colours, transforms, arithmetic, fragment references.
CSS_FUNCTIONS = frozenset(
    [
        "url",
        "rgb",
        "rgba",
        "hsl",
        "hsla",
        "hwb",
        "lab",
        "lch",
        "oklab",
        "oklch",
        "color",
        "calc",
        "min",
        "max",
        "clamp",
        "var",
        "translate",
        "translatex",
        "translatey",
        "rotate",
        "scale",
        "scalex",
        "scaley",
        "matrix",
        "skew",
        "skewx",
        "skewy",
        "cubic-bezier",
        "steps",
    ]
)
#: Attributes dropped whatever their value: what loads, submits or acts in
#: a browser's HTML (an SVG inlined in a page), and focus tricks.
DROPPED_ATTRIBUTES = frozenset(
    [
        "action",
        "formaction",
        "srcdoc",
        "src",
        "data",
        "background",
        "dynsrc",
        "lowsrc",
        "ping",
        "poster",
        "contenteditable",
        "autofocus",
        "tabindex",
        "popover",
        "popovertarget",
        "popovertargetaction",
    ]
)
_XML_KEPT = frozenset({f"{{{XML_NS}}}space", f"{{{XML_NS}}}lang"})
#: A value that is a URL a browser would run or load by its scheme.
_SCHEME = re.compile(r"\s*(?:javascript|vbscript|data)\s*:", re.IGNORECASE)
#: Attributes one element may have (copying each costs the element's count:
#: 20,000 on one element took 3.8 s).
MAX_ATTRIBUTES = 500


@dataclass(frozen=True, slots=True)
class SvgLimits:
    """What one SVG may hold (docs/security.md)."""

    #: Elements once every ``<use>`` is expanded (--max_svg_elements).
    elements: int = 20_000
    #: Elements inside one another (--max_svg_depth).
    depth: int = 64
    #: Filter primitives in the document (--max_svg_filters).
    filters: int = 32
    #: Pixels of all embedded raster images together.
    pixels: int = 50_000_000


@dataclass(frozen=True, slots=True)
class CleanSvg:
    """A sanitised SVG, and its size as declared (CSS pixels). Its root has
    a viewBox (the declared size's, where it had none), so a size set on it
    scales the drawing."""

    root: etree._Element
    width: float
    height: float

    @property
    def data(self) -> bytes:
        """The document at its declared size."""
        return self.at(self.width, self.height)

    def at(self, width: float, height: float) -> bytes:
        """The document drawn ``width`` x ``height`` (a renderer's own size
        rules, resvg's among them, never decide it)."""
        self.root.set("width", f"{width:g}")
        self.root.set("height", f"{height:g}")
        return bytes(etree.tostring(self.root, encoding="utf-8", xml_declaration=True))


def clean(data: bytes, limits: SvgLimits) -> CleanSvg:
    """``data`` rebuilt from what is allowed, measured against ``limits``;
    UnsupportedImage for what is not an SVG, ImageTooLarge past a limit."""
    parser = etree.XMLParser(
        resolve_entities="internal",
        load_dtd=False,
        no_network=True,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as e:
        raise UnsupportedImage(f"the SVG could not be parsed: {e}") from None
    if root.tag != f"{{{SVG_NS}}}svg":
        raise UnsupportedImage(
            f"the document's root is not an svg element in the SVG namespace ({SVG_NS})"
        )
    kept = _rebuilt(root, limits)
    _check_uses(kept, limits)
    width, height = _size(kept)
    if not all(map(math.isfinite, (width, height))) or max(width, height) > MAX_SIDE:
        raise ImageTooLarge(f"the SVG declares a size past {MAX_SIDE} pixels a side")
    if _view_box(kept.get("viewBox")) is None:
        # Its user units are CSS pixels: the same drawing at any size.
        kept.set("viewBox", f"0 0 {width:g} {height:g}")
    return CleanSvg(kept, width, height)


def _local(tag: object) -> str | None:
    """An element's name in the SVG namespace; None for any other."""
    if not isinstance(tag, str) or not tag.startswith(f"{{{SVG_NS}}}"):
        return None
    return tag[len(SVG_NS) + 2 :]


def _rebuilt(root: etree._Element, limits: SvgLimits) -> etree._Element:
    """A copy of ``root`` with only allowed elements and attributes."""
    count = filters = pixels = 0

    def copy(
        node: etree._Element, depth: int, parent: etree._Element | None
    ) -> etree._Element:
        nonlocal count, filters, pixels
        name = _local(node.tag)
        assert name is not None
        count += 1
        if count > limits.elements:
            raise ImageTooLarge(
                f"the SVG has more than {limits.elements} elements (--max_svg_elements)"
            )
        if depth > limits.depth:
            raise ImageTooLarge(
                f"the SVG nests elements more than {limits.depth} deep "
                "(--max_svg_depth)"
            )
        if name in FILTER_PRIMITIVES:
            filters += 1
            if filters > limits.filters:
                raise ImageTooLarge(
                    f"the SVG has more than {limits.filters} filter primitives "
                    "(--max_svg_filters)"
                )
        made = (
            etree.Element(node.tag, nsmap={None: SVG_NS, "xlink": XLINK_NS})
            if parent is None
            else etree.SubElement(parent, node.tag)
        )
        if len(node.attrib) > MAX_ATTRIBUTES:
            raise ImageTooLarge(
                f"an element of the SVG has more than {MAX_ATTRIBUTES} attributes"
            )
        for key, value in node.attrib.items():
            kept = _attribute(name, str(key), str(value))
            if kept is not None:
                if str(key) in _HREFS and kept.startswith("data:"):
                    pixels += _embedded_pixels(kept, limits)
                    if pixels > limits.pixels:
                        raise ImageTooLarge(
                            "the SVG's embedded images have more than "
                            f"{limits.pixels} pixels"
                        )
                made.set(str(key), kept)
        text = node.text or ""
        if name == "style":
            text = "" if "\\" in text else _css(text)
        made.text = text if name in _WITH_TEXT else None
        for child in node:
            child_name = _local(child.tag)
            if child_name is not None and child_name in ELEMENTS:
                copy(child, depth + 1, made)
            if child.tail and name in _DRAWN_TEXT:
                if len(made):
                    made[-1].tail = child.tail
                else:
                    made.text = (made.text or "") + child.tail
        return made

    return copy(root, 1, None)


def _attribute(element: str, key: str, value: str) -> str | None:
    """What an attribute keeps of its value; None to drop it."""
    if key.startswith("{"):
        if key in _HREFS:
            return _href(element, value)
        if key in _XML_KEPT:
            return value
        return None  # editors' own namespaces, xml:base
    if key in _HREFS:
        return _href(element, value)
    if key.lower().startswith("on") or key.lower() in DROPPED_ATTRIBUTES:
        return None  # event handlers, what loads or acts in a browser
    if _SCHEME.match(value) or "\\" in value:
        return None  # a script's URL; CSS escapes could spell anything
    if key == "style" or "(" in value:
        return _css(value)
    return value


def _href(element: str, value: str) -> str | None:
    """A reference kept: inside the document, or an embedded raster image."""
    stripped = value.strip()
    if stripped.startswith("#"):
        return stripped
    if element == "image":
        m = _DATA_URL.match(stripped)
        if m is not None and m["type"] in EMBEDDED:
            return stripped
    return None


def _embedded_pixels(url: str, limits: SvgLimits) -> int:
    """Pixels an embedded image declares; UnsupportedImage where its header
    cannot be read."""
    m = _DATA_URL.match(url)
    assert m is not None
    try:
        head = base64.b64decode("".join(m["data"].split())[: 4096 * 4 // 3 * 4])
    except ValueError:
        raise UnsupportedImage("an embedded image of the SVG is not base64") from None
    size = EMBEDDED[m["type"]](head)
    if size is None:
        raise UnsupportedImage(
            f"an embedded {m['type']} of the SVG has no readable size"
        )
    return size[0] * size[1]


def _css(text: str) -> str:
    """CSS (without escapes: see `_attribute`) with no reference outside
    the document: imports go, a ``url()`` that is no fragment is ``none``,
    and every function but those of `CSS_FUNCTIONS` is ``none(...)``
    (``image-set("...")``, ``src("...")`` fetch without ``url``), which
    browsers ignore."""
    text = _FOREIGN_URL.sub("none", _IMPORT.sub("", text))
    out, at = [], 0
    for m in _FUNCTION.finditer(text):
        if m.start() < at or m[1].lower() in CSS_FUNCTIONS:
            continue
        out.append(text[at : m.start()] + "none")
        at = _call_end(text, m.end())
    return "".join(out) + text[at:]


def _call_end(text: str, at: int) -> int:
    """Where the call whose arguments start at ``at`` ends (its closing
    parenthesis, nesting and quotes followed); the text's end if never."""
    depth, quote = 1, ""
    for index in range(at, len(text)):
        char = text[index]
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index + 1
    return len(text)


def _ids(root: etree._Element) -> dict[str, etree._Element]:
    return {str(e.get("id")): e for e in root.iter() if e.get("id") is not None}


def _uses(node: etree._Element) -> Iterator[str]:
    for key in _HREFS:
        value = node.get(key)
        if value is not None and value.startswith("#"):
            yield value[1:]


def _check_uses(root: etree._Element, limits: SvgLimits) -> None:
    """The elements drawn once every ``<use>`` is expanded (a ``use`` of a
    group of ``use``s of ... grows exponentially), counted without
    expanding; a reference cycle counts as past the limit."""
    ids = _ids(root)
    # Keyed by the elements themselves: lxml makes a new proxy object for an
    # element no one holds, so an id() could name two elements in turn.
    sizes: dict[etree._Element, int] = {}
    visiting: set[etree._Element] = set()

    def size(node: etree._Element) -> int:
        key = node
        if key in sizes:
            return sizes[key]
        if key in visiting:
            raise ImageTooLarge("the SVG's use elements refer to themselves")
        visiting.add(key)
        total = 1
        for child in node:
            total += size(child)
            if total > limits.elements:
                break
        if (
            _local(node.tag) in {"use", "feImage"}
            or node.get("href")
            or node.get(f"{{{XLINK_NS}}}href")
        ):
            for ref in _uses(node):
                target = ids.get(ref)
                if target is not None:
                    total += size(target)
        visiting.discard(key)
        if total > limits.elements:
            raise ImageTooLarge(
                f"the SVG has more than {limits.elements} elements once its "
                "use elements are expanded (--max_svg_elements)"
            )
        sizes[key] = total
        return total

    try:
        size(root)
    except RecursionError:
        raise ImageTooLarge("the SVG's use elements refer too deeply") from None


_LENGTH = re.compile(
    r"\s*\+?([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"
    r"(px|pt|pc|mm|cm|in|q|em|rem|ex|ch)?\s*\Z",
    re.IGNORECASE,
)
#: CSS pixels of each unit (em and ex at the default font size, 16 pixels,
#: as browsers read a root's size).
_UNITS = {None: 1.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "mm": 96 / 25.4,
          "cm": 96 / 2.54, "in": 96.0, "q": 96 / 101.6, "em": 16.0,
          "rem": 16.0, "ex": 8.0, "ch": 8.0}  # fmt: skip
#: The largest side an SVG may declare (any larger is past every pixel
#: limit, and some are past a float).
MAX_SIDE = 10**9
#: The size browsers give an SVG that declares none (and no viewBox).
DEFAULT_SIZE = (300.0, 150.0)


def _size(root: etree._Element) -> tuple[float, float]:
    """The SVG's size in CSS pixels, as browsers read it: ``width`` and
    ``height`` in absolute units, else from the ``viewBox`` (its ratio for a
    missing side), else 300x150."""
    width = _length(root.get("width"))
    height = _length(root.get("height"))
    box = _view_box(root.get("viewBox"))
    if width is None and height is None:
        return (box[0], box[1]) if box is not None else DEFAULT_SIZE
    if width is None:
        assert height is not None
        width = height * box[0] / box[1] if box is not None else DEFAULT_SIZE[0]
    if height is None:
        height = width * box[1] / box[0] if box is not None else DEFAULT_SIZE[1]
    return width, height


def _length(value: str | None) -> float | None:
    if value is None:
        return None
    m = _LENGTH.match(value)
    if m is None:
        return None  # a percentage or a unit of font size: as if absent
    number = float(m[1]) * _UNITS[m[2] and m[2].lower()]
    return number if number > 0 and math.isfinite(number) else None


def _view_box(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    parts = value.replace(",", " ").split()
    try:
        width, height = float(parts[2]), float(parts[3])
    except (IndexError, ValueError):
        return None
    finite = math.isfinite(width) and math.isfinite(height)
    return (width, height) if finite and width > 0 and height > 0 else None


def resized(
    cleaned: bytes,
    declared: tuple[float, float],
    source: tuple[int, int],
    box: tuple[int, int, int, int],
    size: tuple[int, int],
    canvas: tuple[int, int] | None = None,
    offset: tuple[int, int] = (0, 0),
    fill: tuple[int, int, int, int] | None = None,
) -> bytes:
    """An svg variant: the ``cleaned`` SVG (declared ``declared`` in CSS
    pixels, planned as a ``source`` of whole pixels) showing ``box`` of it
    at ``size``, on a ``canvas`` at ``offset`` filled with ``fill`` where
    given. The document is nested whole: its own viewBox and aspect rules
    keep drawing it as they did."""
    scale_x, scale_y = declared[0] / source[0], declared[1] / source[1]
    left, top, right, bottom = box
    view = (
        f"{left * scale_x:g} {top * scale_y:g} "
        f"{(right - left) * scale_x:g} {(bottom - top) * scale_y:g}"
    )
    width, height = canvas or size
    inner = cleaned.split(b"?>", 1)[1] if cleaned.startswith(b"<?xml") else cleaned
    background = b""
    if canvas is not None and fill is not None and fill[3]:
        r, g, b, a = fill
        background = (
            f'<rect width="{width}" height="{height}" fill="#{r:02x}{g:02x}{b:02x}"'
            + (f' fill-opacity="{a / 255:.4g}"' if a < 255 else "")
            + "/>"
        ).encode()
    return (
        b"<?xml version='1.0' encoding='utf-8'?>\n"
        + f'<svg xmlns="{SVG_NS}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'.encode()
        + background
        + f'<svg x="{offset[0]}" y="{offset[1]}" width="{size[0]}" '
        f'height="{size[1]}" viewBox="{view}" preserveAspectRatio="none">'.encode()
        + inner.strip()
        + b"</svg></svg>\n"
    )
