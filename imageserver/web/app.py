"""The main port: the image API. Routes translate HTTP to `Images` calls, no more."""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from klein import Klein, Response
from twisted.web.http import datetimeToString, stringToDatetime
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter, PathConverter

from imageserver.bulk.batches import Batches
from imageserver.config import Config
from imageserver.errors import ImageServerError, InvalidRequest, NotFound
from imageserver.images import Images, Resolved
from imageserver.naming import (
    AUTO,
    DPR_HINTS,
    FOLDER_PATTERN,
    HASH_PATH_PATTERN,
    HINTS,
    INFO,
    NAMESPACE_PATTERN,
    ORIGINAL,
    WIDTH_HINTS,
    Hinted,
    ImageId,
    hinted,
    is_generated,
    is_immutable,
)
from imageserver.negotiation import ClientHints, client_hints
from imageserver.origin_paths import OriginPaths
from imageserver.storage import (
    IMMUTABLE,
    PRESET_LIFETIME,
    REVALIDATE,
    StoredObject,
)
from imageserver.thumbor_paths import ThumborPaths
from imageserver.web import ranges
from imageserver.web.openapi import spec_json
from imageserver.web.responses import (
    Headers,
    json_response,
    routing_error,
    server_error,
)

_IMAGE = "/<image:image>"
_ORIGIN_PATH = "/<namespace>/<origin_path:path>"
#: An image folder's path, and maybe one name in it.
_FOLDER_PATH = re.compile(rb"/" + FOLDER_PATTERN.encode() + rb"(?:/[^/]+)?\Z")
#: The routes that stay open with --secret: (method, path) of the health
#: check for load balancers and of the API's description.
UNSIGNED_ROUTES = frozenset({(b"GET", b"/status_check"), (b"GET", b"/openapi.json")})
#: A path whose first segment is no namespace (a signature has = and
#: capitals), or unsafe, and something after it: thumbor's, under --thumbor.
_NAMESPACE_HEAD = re.compile(rb"/" + NAMESPACE_PATTERN.encode() + rb"/")


def is_thumbor_path(path: bytes) -> bool:
    """Whether ``path`` is a thumbor URL's, when thumbor's are answered: its
    first segment is ``unsafe``, or no namespace (thumbor reads any first
    segment as a signature, to be checked); never an image folder's, which
    the image routes answer (and --secret guards) in any namespace."""
    head, slash, rest = path[1:].partition(b"/")
    if not path.startswith(b"/") or not slash or not rest:
        return False
    if _FOLDER_PATH.match(path) is not None:
        return False
    return head == b"unsafe" or _NAMESPACE_HEAD.match(path) is None


@dataclass(frozen=True)
class Lifetimes:
    """How long browsers and CDNs may keep each kind of answer (their
    Cache-Control), from the --cache_control_* options."""

    #: Variants by their canonical names, originals.
    variants: str = IMMUTABLE
    #: Client files and info.json: replaceable under their name.
    files: str = REVALIDATE
    #: Presets, .auto names, watermarks by their name.
    presets: str = PRESET_LIFETIME

    @classmethod
    def configured(cls, config: Config) -> Lifetimes:
        return cls(
            variants=config.cache_control_variants,
            files=config.cache_control_files,
            presets=config.cache_control_presets,
        )

    def of(self, served: Resolved) -> str:
        if served.max_age is not None:
            return f"public, max-age={served.max_age}"
        if served.preset or served.negotiated or served.hints:
            return self.presets
        return self.variants if is_immutable(served.name) else self.files


class ImageFolderConverter(BaseConverter):
    """``/<image:image>/...`` in a route: an image folder, given as an ImageId."""

    regex = FOLDER_PATTERN
    part_isolating = False

    def to_python(self, value: str) -> ImageId:
        return ImageId.from_folder(value)

    def to_url(self, value: ImageId) -> str:
        return value.folder


class OriginPathConverter(PathConverter):
    """``<origin_path:...>``: the rest of a path, unless it is an image folder
    (and maybe a name in it): those URLs are the image routes', in origin
    namespaces too, so a hash folder's URL means one thing everywhere."""

    # Empty segments too ("a//b"): the path grammar refuses them with a 400
    # that says so, rather than no route's 404.
    regex = rf"(?!{HASH_PATH_PATTERN}(?:/[^/]*)?$).+?"


class ImageServerApp:
    app = Klein()
    app.url_map.converters["image"] = ImageFolderConverter
    app.url_map.converters["origin_path"] = OriginPathConverter
    # "a//b" is not "a/b": a path that does not match is a 404, never a
    # redirect (werkzeug's would point %2F names back at themselves).
    app.url_map.merge_slashes = False

    def __init__(
        self,
        images: Images,
        batches: Batches,
        origin_paths: OriginPaths | None = None,
        thumbor: ThumborPaths | None = None,
        lifetimes: Lifetimes = Lifetimes(),
        client_hints: bool = False,
        similar: bool = False,
    ) -> None:
        self._images = images
        self._client_hints = client_hints
        self._similar = similar
        self._lifetimes = lifetimes
        self._batches = batches
        self._origin_paths = origin_paths
        self._thumbor = thumbor

    @app.route("/status_check", methods=["GET"])
    def status_check(self, request: IRequest) -> Response:
        return json_response(200, {"message": "OK"})

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> Response:
        return json_response(200, spec_json())

    @app.route("/<namespace>", methods=["POST"])
    async def upload(self, request: IRequest, namespace: str) -> Response:
        source = _query(request, "source")
        similar = _query(request, "similar")
        if similar is not None and not self._similar:
            # Its answer names stored images: where /similar is not served,
            # an uploader must not learn them either.
            raise InvalidRequest(
                "similar= names the images like an upload: it is taken where "
                "/similar is served (--write_tokens, --secret or --open_similar)"
            )
        info = await self._images.upload(
            namespace,
            body=request.content,
            source=source,
            outputs=_query(request, "outputs"),
            faces=_flag(request, "faces"),
            similar=similar,
        )
        return json_response(200, info)

    @app.route("/<namespace>/similar", methods=["GET"])
    async def similar(self, request: IRequest, namespace: str) -> Response:
        if not self._similar:
            raise NotFound(
                "/similar lists a namespace's images: it is served with "
                "--write_tokens (then it needs a token) or --secret (a signed "
                "URL), or to anyone with --open_similar"
            )
        found = await self._images.similar(
            namespace, _query(request, "to"), _query(request, "distance")
        )
        # A listing of now: no cache keeps it (purges change it).
        return json_response(200, found, {"Cache-Control": "no-store"})

    @app.route("/<namespace>/batch", methods=["POST"])
    async def create_batch(self, request: IRequest, namespace: str) -> Response:
        job_id = await self._batches.create(
            namespace, request.content, _query(request, "outputs")
        )
        return json_response(202, {"job_id": job_id})

    @app.route("/<namespace>/batch/<job_id>", methods=["GET"])
    async def batch(self, request: IRequest, namespace: str, job_id: str) -> Response:
        finished, report = await self._batches.status(namespace, job_id)
        return json_response(200 if finished else 202, report)

    @app.route(_IMAGE + "/process", methods=["POST"])
    async def process(self, request: IRequest, image: ImageId) -> Response:
        await self._images.process(
            image, _query(request, "outputs"), _flag(request, "faces")
        )
        return Response(200, {"Content-Length": "0"}, b"")

    @app.route(_IMAGE + "/<name>", methods=["GET"])
    async def get(self, request: IRequest, image: ImageId, name: str) -> Response:
        served = await self._images.resolve(
            image, name, request.getHeader("Accept"), self._hints(request)
        )
        stored = await self._images.get(image, served.name)
        quality = await self._images.chosen_quality(image, served.name)
        return _serve(
            request,
            stored,
            image,
            served,
            name,
            self._lifetimes.of(served),
            quality=quality,
        )

    @app.route(_IMAGE, methods=["DELETE"])
    async def purge(self, request: IRequest, image: ImageId) -> Response:
        await self._images.purge(image)
        return Response(204, {}, b"")

    @app.route(_IMAGE + "/<name>", methods=["DELETE"], endpoint="delete")
    async def delete(self, request: IRequest, image: ImageId, name: str) -> Response:
        await self._images.delete(image, name)
        return Response(204, {}, b"")

    @app.route(_IMAGE + "/<name>", methods=["POST"], endpoint="put_file")
    async def put_file(self, request: IRequest, image: ImageId, name: str) -> Response:
        await self._images.put_file(image, name, request.content)
        return Response(200, {"Content-Length": "0"}, b"")

    # An origin's paths: anything under an origin namespace that is not one
    # of the routes above (a hash folder's URL stays the hash folder's).
    @app.route(_ORIGIN_PATH, methods=["GET"], endpoint="origin_get")
    async def origin_get(
        self, request: IRequest, namespace: str, path: str
    ) -> Response:
        if self._thumbor is not None and is_thumbor_path(request.path):
            return await self._thumbor_get(request)
        paths = self._origin(namespace)
        path, _, name = path.rpartition("/")
        # Before the origin is asked: /shop/a/b.jpg is the object, not its
        # variant "b.jpg" of an object "a".
        if not path or not self._images.names_an_output(namespace, name):
            whole = "/".join(part for part in (path, name) if part).strip("/")
            example = ""
            if (
                whole
                and "//" not in whole
                and not (
                    self._images.names_an_output(namespace, whole.rpartition("/")[2])
                )
            ):
                example = f", e.g. /{namespace}/{whole}/w200.jpg"
            raise NotFound(
                "name a variant, info.json or original of the origin's object "
                f"after its path{example}"
            )
        accept, hints = request.getHeader("Accept"), self._hints(request)
        image = await paths.image(namespace, path)
        try:
            served = await self._images.resolve(image, name, accept, hints)
            stored = await self._images.get(image, served.name)
        except NotFound:
            if await self._images.stored(image):
                raise
            # Purged by its hash since the path was recorded: fetched again.
            image = await paths.image(namespace, path, gone=image)
            served = await self._images.resolve(image, name, accept, hints)
            stored = await self._images.get(image, served.name)
        quality = await self._images.chosen_quality(image, served.name)
        return _serve(
            request,
            stored,
            image,
            served,
            name,
            paths.cache_control(),
            by_path=True,
            quality=quality,
        )

    @app.route(_ORIGIN_PATH, methods=["DELETE"], endpoint="origin_forget")
    async def origin_forget(
        self, request: IRequest, namespace: str, path: str
    ) -> Response:
        if self._thumbor is not None and is_thumbor_path(request.path):
            raise NotFound(
                "a thumbor URL is not deleted: DELETE its origin path, or the "
                "image folder its answer's Content-Location names"
            )
        image = await self._origin(namespace).forget(namespace, path)
        if image is not None:
            # Purged already (by its hash, or another path's DELETE): gone.
            with contextlib.suppress(NotFound):
                await self._images.purge(image)
        return Response(204, {}, b"")

    async def _thumbor_get(self, request: IRequest) -> Response:
        """A thumbor URL (docs/thumbor.md): the variant it maps to, or /meta/."""
        assert self._thumbor is not None and self._origin_paths is not None
        path = request.uri.partition(b"?")[0].decode("latin-1")
        answer = await self._thumbor.answer(path, request.getHeader("Accept"))
        # What a thumbor URL means may change as its origin's object does.
        lifetime = self._origin_paths.cache_control()
        if answer.meta is not None:
            return json_response(200, answer.meta, {"Cache-Control": lifetime})
        assert answer.resolved is not None and answer.stored is not None
        quality = await self._images.chosen_quality(answer.image, answer.resolved.name)
        return _serve(
            request,
            answer.stored,
            answer.image,
            answer.resolved,
            answer.resolved.name,
            lifetime,
            by_path=True,
            quality=quality,
            vary=answer.vary_accept,
        )

    @app.route("/healthcheck", methods=["GET"])
    def healthcheck(self, request: IRequest) -> Response:
        """thumbor's health check, where its URLs are answered."""
        if self._thumbor is None:
            raise NotFound("no such route")
        return Response(200, {"Content-Type": "text/plain"}, b"WORKING")

    def _hints(self, request: IRequest) -> ClientHints | None:
        """The request's client hints, where the server reads them."""
        if not self._client_hints:
            return None
        return client_hints(request.getHeader)

    def _origin(self, namespace: str) -> OriginPaths:
        if self._origin_paths is None or not self._origin_paths.serves(namespace):
            raise NotFound("no such image path")
        return self._origin_paths

    app.handle_errors(HTTPException)(routing_error)
    app.handle_errors(Exception)(server_error)


def allowed_methods(path: bytes) -> frozenset[bytes]:
    """The methods the routes take at ``path`` (percent-encoded, as sent;
    HEAD with GET), for OPTIONS; empty when no route takes it."""
    adapter = ImageServerApp.app.url_map.bind("localhost")
    try:
        methods = adapter.allowed_methods(unquote_to_bytes(path).decode("utf-8"))
    except UnicodeDecodeError:
        return frozenset()
    return frozenset(method.encode("ascii") for method in methods)


#: What a server that reads client hints (--client_hints) asks browsers for.
ACCEPT_CH = ", ".join((DPR_HINTS[0], WIDTH_HINTS[0]))


def answer_headers(
    path: bytes, client_hints: bool = False
) -> tuple[tuple[bytes, bytes], ...]:
    """Headers every answer to ``path`` carries, whoever gives it: every answer
    to a .auto name (redirects, refusals and errors too) is chosen for the
    request's Accept header, and to a ``-ch`` name for its client hints, and
    no cache may give it to another; with ``client_hints``, every answer
    asks for them (``Accept-CH``)."""
    name = unquote_to_bytes(path.rpartition(b"/")[2]).decode("utf-8", "replace")
    varies = ["Accept"] if name.endswith("." + AUTO) else []
    # Every request crosses here: only a name with the option is read.
    if f"-{HINTS}" in name:
        try:
            asks = hinted(name)
        except ImageServerError:
            asks = Hinted(name, DPR_HINTS + WIDTH_HINTS)  # refused: whatever it asks
        if asks is not None:
            varies += asks.headers
    lines = [(b"Vary", ", ".join(varies).encode())] if varies else []
    if client_hints:
        lines.append((b"Accept-CH", ACCEPT_CH.encode()))
    return tuple(lines)


def route_name(
    request: IRequest, origins: frozenset[str] = frozenset(), thumbor: bool = False
) -> str:
    """The route a request took, for metrics and logs: one of a fixed few.
    ``origins``: the namespaces served from an origin; ``thumbor``: whether
    thumbor's URLs are answered."""
    parts = request.path.split(b"/")[1:]
    if request.method == b"OPTIONS":
        return "options"
    if parts in ([b"status_check"], [b"openapi.json"]):
        return parts[0].decode().replace(".", "_")
    if thumbor and (is_thumbor_path(request.path) or parts == [b"healthcheck"]):
        return "thumbor"
    if len(parts) == 1 and parts[0] and request.method == b"POST":
        return "upload"
    if len(parts) in (2, 3) and parts[1] == b"batch":
        return "batch"
    if len(parts) == 2 and parts[1] == b"similar":
        return "similar"
    folder = _FOLDER_PATH.match(request.path)
    if folder is None:
        # Under an origin's namespace and no image folder: one of its paths.
        if parts[0].decode("ascii", "replace") not in origins or not all(parts):
            return "other"
        if len(parts) >= 3 and request.method in (b"GET", b"HEAD"):
            return "origin"
        if len(parts) >= 2 and request.method == b"DELETE":
            return "origin_forget"
        return "other"
    if request.method == b"DELETE" and len(parts) in (5, 6):
        return "purge" if len(parts) == 5 else "delete"
    if len(parts) != 6:
        return "other"
    name = parts[5].decode("ascii", "replace")
    if name == "process" and request.method == b"POST":
        return "process"
    if request.method == b"POST":
        return "store_file"
    if name in (INFO, ORIGINAL):
        return name.replace(".", "_")
    return "variant" if is_generated(name) else "file"


def _query(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode())
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"the {name} parameter is not UTF-8") from None


def _flag(request: IRequest, name: str) -> bool:
    """A yes-or-no parameter: ``1`` or ``0`` (absent: no)."""
    value = _query(request, name)
    if value not in (None, "0", "1"):
        raise InvalidRequest(f"the {name} parameter is 1 or 0, not {value[:20]!r}")
    return value == "1"


def _serve(
    request: IRequest,
    stored: StoredObject,
    image: ImageId,
    served: Resolved,
    requested: str,
    lifetime: str,
    by_path: bool = False,
    quality: tuple[int, float | None] | None = None,
    vary: bool = False,
) -> Response:
    """``stored``, found as ``served`` says for the ``requested`` name, to
    be kept as ``lifetime`` (a Cache-Control) says.

    ``by_path``: asked for by an origin's path, which may come to stand for
    other bytes: located at its hash folder's URL, which is kept for ever.
    ``quality``: what a byte budget or a level chose, and its score.
    ``vary``: what is served depends on Accept.
    """
    # Date is the time of the answer, not of the request's arrival (a first
    # render can take seconds), and Last-Modified is never later than it.
    now = int(time.time())
    client_file = not is_generated(served.name)
    last_modified = datetimeToString(min(int(stored.modified), now)).decode()
    headers: Headers = {
        "Date": datetimeToString(now).decode(),
        "ETag": stored.etag,
        "Last-Modified": last_modified,
        "Cache-Control": lifetime,
        "X-Content-Type-Options": "nosniff",
    }
    varies = [*(["Accept"] if served.negotiated or vary else []), *served.hints]
    if varies:
        # What is served depends on these; this is its own URL.
        headers["Vary"] = ", ".join(varies)
    if quality is not None:
        # The quality a byte budget (maxbytes) or a level (qgood) chose, and
        # the SSIMULACRA2 score it keeps where known.
        headers["X-Image-Quality"] = str(quality[0])
        if quality[1] is not None:
            headers["X-Image-Score"] = f"{quality[1]:.2f}"
    if served.name != requested or by_path:
        # A preset, a .auto choice or a density spelling: the stored name,
        # where it is served by that name (else, by a path: the name asked
        # for, at the hash folder).
        located = served.name if served.direct else requested
        if located != requested or by_path:
            headers["Content-Location"] = f"/{image.folder}/{located}"
    if client_file:
        # A stored file is the client's bytes: never let a browser run them
        # as a page of this origin.
        headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    elif stored.content_type == SVG_TYPE:
        # An SVG original (as uploaded) or an svg variant, opened as a page:
        # no script runs, nothing is fetched; its own styles and embedded
        # images still draw.
        headers["Content-Security-Policy"] = SVG_POLICY
    if _not_modified(request, stored):
        return Response(304, headers, b"")
    headers["Accept-Ranges"] = "bytes"
    length = len(stored.data)
    part = None
    if ranges.still_current(request.getHeader("If-Range"), stored.etag):
        part = ranges.requested(request.getHeader("Range"), length)
    if isinstance(part, ranges.Unsatisfiable):
        headers["Content-Range"] = f"bytes */{length}"
        headers["Cache-Control"] = "no-store"  # an answer to this Range alone
        return json_response(
            416,
            {"error": f"no range asked for is within the {length} bytes"},
            headers,
        )
    headers["Content-Type"] = stored.content_type
    if part is not None:
        headers["Content-Range"] = part.content_range
        headers["Content-Length"] = str(part.last - part.first + 1)
        return Response(206, headers, stored.data[part.first : part.last + 1])
    headers["Content-Length"] = str(length)
    return Response(200, headers, stored.data)


SVG_TYPE = "image/svg+xml"
SVG_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"


def _not_modified(request: IRequest, stored: StoredObject) -> bool:
    """RFC 9110 section 13.2.2: If-None-Match decides; else If-Modified-Since."""
    if_none_match = request.getHeader("If-None-Match")
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or stored.etag in tags
    if_modified_since = request.getHeader("If-Modified-Since")
    if if_modified_since is None:
        return False
    try:
        since = stringToDatetime(if_modified_since.encode("latin-1"))
    except (ValueError, IndexError, KeyError, UnicodeEncodeError):
        return False
    return int(stored.modified) <= since
